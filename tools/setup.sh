#!/usr/bin/env bash
# Installs what building and testing PromptLedger needs and a fresh Debian machine with only a
# Rust toolchain lacks. Idempotent: installs only what is missing.
#   libclang-dev  - bindgen for the rocksdb crate's C++ build
#   nats-server   - the NATS JetStream tests start their own server from PATH
#   openssl       - the TLS test makes a throwaway certificate
#   python3 grpcio grpcio-tools cryptography - the Python example client's test
set -euo pipefail

missing=()
# bindgen needs libclang itself (libclang.so / libclang-N.so), not just libclang-cpp, which the
# base image ships; the -dev package brings the right one.
if ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q "install ok installed"; then
  missing+=(libclang-dev)
fi
PATH="$PATH:/usr/sbin" command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Python example client's test: grpcio, grpcio-tools (stubs from proto/), cryptography.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import grpc, grpc_tools, cryptography' 2>/dev/null; then
  echo "setup: installing grpcio grpcio-tools cryptography for python3" >&2
  python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools cryptography
fi
command -v python3 >/dev/null 2>&1 || { echo "setup: python3 is required for the Python client test" >&2; exit 1; }

command -v cargo >/dev/null 2>&1 || { echo "setup: a Rust toolchain (cargo) is required" >&2; exit 1; }
