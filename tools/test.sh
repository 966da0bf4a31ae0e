#!/usr/bin/env bash
# The full test suite: installs what is missing, then runs every test (unit, integration,
# vectors, crash and tamper tests). This is the command README.md names and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian installs nats-server in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin"
tools/setup.sh
# A build directory outside the clone, so a fresh clone reuses an earlier build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/promptledger-target}"
export PROMPTLEDGER_CRASH_CYCLES="${PROMPTLEDGER_CRASH_CYCLES:-20}"
tools/lint-proto.sh
cargo test --locked --all-targets "$@"
