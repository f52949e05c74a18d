#!/usr/bin/env bash
# Type-checks the macOS code (cfg(target_os = "macos")) from Linux: clippy
# for x86_64-apple-darwin on the engine, the CLI and the app. Nothing is
# linked or run, so the C parts (zstd) only need object files to exist:
# a stand-in compiler and archiver make empty ones.
#
#   scripts/check-macos.sh        # needs: rustup target add x86_64-apple-darwin
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
stub="$(mktemp -d)"
trap 'rm -rf "$stub"' EXIT
cat > "$stub/cc" <<'SH'
#!/bin/sh
while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then shift; : > "$1"; fi; shift; done
SH
cat > "$stub/ar" <<'SH'
#!/bin/sh
: > "$2"
SH
chmod +x "$stub/cc" "$stub/ar"
export CC_x86_64_apple_darwin="$stub/cc" AR_x86_64_apple_darwin="$stub/ar"
cargo clippy --target x86_64-apple-darwin -p edr-agent -p edr-api -p edr-tray --lib --bins -- -D warnings
cargo clippy --target x86_64-apple-darwin -p edr-agent-app -- -D warnings
