#!/usr/bin/env bash
# Ledger-core benchmarks (docs/PERFORMANCE.md): durable appends/s, full verification speed,
# proof generation, reopen time and bytes on disk, on a release build.
#   ENTRIES (default 1000000), PAYLOAD (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/promptledger-target}"
cargo build --locked --release --bin promptledger
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$CARGO_TARGET_DIR/release/promptledger" bench ledger --data-dir "$dir/ledger" \
  --entries "${ENTRIES:-1000000}" --payload "${PAYLOAD:-1024}"
