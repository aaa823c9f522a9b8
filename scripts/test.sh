#!/usr/bin/env bash
# Runs Postern's whole test suite on a fresh machine, installing what it needs.
#   scripts/test.sh          everything
#   scripts/test.sh --fast   unit tests and the integration tests that need no
#                            Kubernetes control plane (no Go build) and no
#                            browser
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
[ "${1:-}" = "--fast" ] && fast=1

echo "== toolchain"
cargo --version
go version

if [ "$fast" = 1 ]; then
  targets=(--lib)
  for f in tests/*.rs; do
    name=$(basename "$f" .rs)
    case "$name" in k8s_* | cross_origin | helm_chart | container_image) ;; *) targets+=(--test "$name") ;; esac
  done
  echo "== fast tests (no control plane)"
  cargo test "${targets[@]}"
  exit 0
fi

echo "== browser, IdP and example dependencies (Debian chromium, npm packages)"
scripts/install-test-deps.sh

echo "== Kubernetes control plane and CLIs (built from Go modules, cached)"
tests/support/k8s/build.sh

echo "== all tests"
cargo test --all-targets --no-fail-fast
