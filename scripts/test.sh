#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the engine,
# the CLI and the desktop app (end to end, in the real WebKit engine under
# Xvfb). Installs what is missing first. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

# A cold build gains nothing from incremental caches but their size (4.8 GB
# in one long-used target dir of this workspace); a developer who wants them
# sets the variable.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A full disk kills the linker with SIGBUS and JetStream refuses streams, both
# with messages that do not say "disk": print what there is, before and after.
disk() {
  df -h . "${TMPDIR:-/tmp}" ${CARGO_TARGET_DIR:+"$(dirname "$CARGO_TARGET_DIR")"} 2>/dev/null |
    sed "s/^/[disk $1] /" || true
}
disk before

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The app's tests need a display and a session bus of their own: a private
# X server and D-Bus session, so they neither see nor disturb a desktop.
status=0
env -u DBUS_SESSION_BUS_ADDRESS -u DISPLAY NO_AT_BRIDGE=1 \
  dbus-run-session -- xvfb-run -a cargo test --workspace --no-fail-fast || status=$?
disk after
exit "$status"
