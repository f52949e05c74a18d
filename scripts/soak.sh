#!/usr/bin/env bash
# Soak test: the release agent under the heavy workload of
# tests/reliability_soak.rs (file writes, short processes, TCP connections)
# for N minutes, RSS and CPU sampled every 10 s into a CSV. Fails if RSS
# trends upward after warm-up. The test suite runs a one-minute version.
#
#   scripts/soak.sh [MINUTES] [CSV]      # defaults: 60, <target dir>/soak-<time>.csv
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
minutes="${1:-60}"
# Where cargo puts the binaries (CARGO_TARGET_DIR, when set).
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
csv="${2:-$target/soak-$(date -u +%Y%m%dT%H%M%SZ).csv}"
mkdir -p "$(dirname "$csv")"
cargo build --release --bin edr-agent
EDR_AGENT_BIN="$target/release/edr-agent" \
EDR_SOAK_SECS="$((minutes * 60))" \
EDR_SOAK_SAMPLE_SECS=10 \
EDR_SOAK_CSV="$csv" \
    cargo test --test reliability_soak -- --nocapture
echo "samples: $csv"
