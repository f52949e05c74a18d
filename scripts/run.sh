#!/usr/bin/env bash
# Builds and runs the agent with the embedded default configuration,
# installing what is missing first. Extra arguments go to `edr-agent run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bin edr-agent
exec target/release/edr-agent run "$@"
