#!/usr/bin/env bash
# Builds oauth2-proxy (github.com/oauth2-proxy/oauth2-proxy/v7, pinned below)
# from its Go module, for benches/signed_in_vs_oauth2_proxy.sh: the stack
# Postern replaces is nginx `auth_request` + oauth2-proxy.
#
# Like tests/support/k8s/build.sh: the binary goes to a cache outside the
# repository, keyed by the versions, so a warm run builds nothing; `go
# install module@version` checks the module against the Go checksum
# database. Built as upstream's Makefile does (CGO_ENABLED=0, the version
# stamped into pkg/version.VERSION), plus -trimpath and stripped symbols.
# Prints the path of the binary on the last line of stdout.
#
#   POSTERN_TOOLS_CACHE   cache root (default: ~/.cache/postern-tools)
set -euo pipefail

version=v7.15.6
module=github.com/oauth2-proxy/oauth2-proxy/v7
go_version=$(go env GOVERSION)
# Bump when the build recipe changes, so a cached binary is rebuilt.
recipe=1
key="oauth2-proxy-${version}_${go_version}_r${recipe}"
cache="${POSTERN_TOOLS_CACHE:-$HOME/.cache/postern-tools}/$key"
bin="$cache/oauth2-proxy"
mkdir -p "$cache"

if [ -x "$bin" ]; then
  echo "oauth2-proxy: cached in $cache (nothing to build)" >&2
  echo "$bin"
  exit 0
fi

t0=$(date +%s)
echo "oauth2-proxy: building $module@$version ..." >&2
# Outside any module (the repository has none at its root, but a caller's
# GOFLAGS or go.work must not leak in).
cd "$cache"
rm -rf "$cache/.bin"
CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod GOBIN="$cache/.bin" \
  go install -trimpath -ldflags "-s -w -X $module/pkg/version.VERSION=$version" "$module@$version"
mv "$cache/.bin/oauth2-proxy" "$bin"
rmdir "$cache/.bin"
echo "oauth2-proxy: built in $(( $(date +%s) - t0 ))s ($key)" >&2
echo "$bin"
