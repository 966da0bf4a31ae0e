#!/usr/bin/env bash
# gRPC benchmark (docs/PERFORMANCE.md): a bare tonic echo service (the baseline), GetPrompt and
# signed CommitVersion, all on loopback with 64 concurrent streams, in one run.
#   SECONDS_PER_CASE (default 5, per round), ROUNDS (default 3), STREAMS (default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/promptledger-target}"
cargo build --locked --release --bin promptledger
"$CARGO_TARGET_DIR/release/promptledger" bench grpc \
  --seconds "${SECONDS_PER_CASE:-5}" --rounds "${ROUNDS:-3}" --streams "${STREAMS:-64}"
