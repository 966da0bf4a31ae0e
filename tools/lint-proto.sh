#!/usr/bin/env bash
# Lints proto/ with buf's default (STANDARD) rules, using buf from the npm registry
# (@bufbuild/buf, cached under ~/.cache/promptledger-buf). Needs npm; without it, says so and
# exits 0 (the Rust build does not need buf).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  echo "lint-proto: npm not found, buf lint skipped" >&2
  exit 0
fi
dir="$HOME/.cache/promptledger-buf"
if [ ! -x "$dir/node_modules/.bin/buf" ]; then
  mkdir -p "$dir"
  (cd "$dir" && npm install --silent --no-audit --no-fund @bufbuild/buf@1.75.0 >/dev/null)
fi
"$dir/node_modules/.bin/buf" lint
echo "buf lint: clean"
