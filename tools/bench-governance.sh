#!/usr/bin/env bash
# Governance benchmark (docs/PERFORMANCE.md): Casbin enforce latency (uncached, cached), then
# signed CommitVersion (the baseline), promotions checked against the policy only, and
# promotions through every production gate, on loopback with 64 concurrent streams, in one run.
#   SECONDS_PER_CASE (default 10), STREAMS (default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/promptledger-target}"
cargo build --locked --release --bin promptledger
"$CARGO_TARGET_DIR/release/promptledger" bench governance \
  --seconds "${SECONDS_PER_CASE:-10}" --streams "${STREAMS:-64}"
