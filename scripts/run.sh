#!/usr/bin/env bash
# Builds (release) and runs the desktop app with the default config file
# (created with every key commented on first start), installing what is
# missing first. Arguments go to the app (`--minimized`: tray only).
#
#   scripts/run.sh --headless [ARGS]   the `edr-agent` CLI agent instead,
#                                      with the embedded default config;
#                                      ARGS go to `edr-agent run`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Where cargo puts the binaries (CARGO_TARGET_DIR, when set).
target="${CARGO_TARGET_DIR:-target}"

if [ "${1:-}" = "--headless" ]; then
  shift
  # No GUI packages for the agent alone.
  scripts/setup.sh --headless
  cargo build --release --bin edr-agent
  exec "$target"/release/edr-agent run "$@"
fi

scripts/setup.sh
cargo build --release -p edr-agent-app
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  echo "run: no display (DISPLAY and WAYLAND_DISPLAY are unset): the desktop app needs one." >&2
  echo "run: use 'scripts/run.sh --headless' for the agent alone." >&2
  exit 2
fi
exec "$target"/release/edr-agent-app "$@"
