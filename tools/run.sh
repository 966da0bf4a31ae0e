#!/usr/bin/env bash
# Runs the PromptLedger service on its embedded default: RocksDB in a local folder, no NATS,
# gRPC on 127.0.0.1:50051. Installs what is missing and builds (release) first. On first start
# the server creates the ledger and says where the first admin's key is. Ctrl-C stops it
# gracefully (in-flight commits finish).
#   DATA_DIR (default ./promptledger-data); any `promptledger serve` flags are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/promptledger-target}"
DATA_DIR="${DATA_DIR:-promptledger-data}"
cargo build --locked --release --bin promptledger
bin="$CARGO_TARGET_DIR/release/promptledger"
exec "$bin" serve --data-dir "$DATA_DIR" "$@"
