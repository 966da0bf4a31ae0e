#!/usr/bin/env bash
# Runs PromptLedger on its embedded default: RocksDB in a local folder, no NATS.
# Installs what is missing, builds (release), creates the ledger on first start, verifies it.
#   DATA_DIR (default ./promptledger-data)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/promptledger-target}"
DATA_DIR="${DATA_DIR:-promptledger-data}"
cargo build --locked --release --bin promptledger
bin="$CARGO_TARGET_DIR/release/promptledger"
if [ ! -e "$DATA_DIR/db/CURRENT" ]; then
  "$bin" init --data-dir "$DATA_DIR"
fi
"$bin" verify --data-dir "$DATA_DIR"
