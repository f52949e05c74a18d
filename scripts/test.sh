#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the engine,
# the CLI and the desktop app (end to end, in the real WebKit engine under
# Xvfb). Installs what is missing first. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The app's tests need a display and a session bus of their own: a private
# X server and D-Bus session, so they neither see nor disturb a desktop.
env -u DBUS_SESSION_BUS_ADDRESS -u DISPLAY NO_AT_BRIDGE=1 \
  dbus-run-session -- xvfb-run -a cargo test --workspace --no-fail-fast
