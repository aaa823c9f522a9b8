#!/usr/bin/env bash
# Runs Postern's whole test suite on a fresh machine, installing what it needs.
#   scripts/test.sh          everything
#   scripts/test.sh --fast   unit tests and tests that need no external component
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
[ "${1:-}" = "--fast" ] && fast=1

echo "== toolchain"
cargo --version
rustc --version

echo "== unit and integration tests"
if [ "$fast" = 1 ]; then
  cargo test --lib
else
  cargo test --all-targets --no-fail-fast
fi
