#!/usr/bin/env bash
# NATS publishing benchmark (docs/PERFORMANCE.md): writes/s with publishing off (baseline), with
# NATS absent and with NATS up; backlog publish rate; catch-up time after an outage under load.
# Starts its own nats-server (from PATH; setup.sh installs it).
#   SECONDS_PER_PHASE (default 10), OUTAGE_SECS (default 30), STREAMS (default 32)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin" # Debian puts nats-server there
tools/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/promptledger-target}"
cargo build --locked --release --bin promptledger
"$CARGO_TARGET_DIR/release/promptledger" bench nats \
  --seconds "${SECONDS_PER_PHASE:-10}" --outage-secs "${OUTAGE_SECS:-30}" --streams "${STREAMS:-32}"
