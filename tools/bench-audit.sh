#!/usr/bin/env bash
# Audit benchmark (docs/PERFORMANCE.md): writes ENTRIES (default 1,000,000) signed registry
# entries through the writer, then times ListEvents with filters over loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/promptledger-target}"
cargo build --locked --release --bin promptledger
"$CARGO_TARGET_DIR/release/promptledger" bench audit --entries "${ENTRIES:-1000000}"
