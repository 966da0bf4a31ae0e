#!/usr/bin/env bash
# Installs what building and testing PromptLedger needs and a fresh Debian machine with only a
# Rust toolchain lacks. Idempotent: installs only what is missing.
#   libclang-dev  - bindgen for the rocksdb crate's C++ build
#   nats-server   - the NATS JetStream tests start their own server from PATH
set -euo pipefail

missing=()
if ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so' && ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: a Rust toolchain (cargo) is required" >&2; exit 1; }
