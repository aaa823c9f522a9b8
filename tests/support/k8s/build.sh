#!/usr/bin/env bash
# Builds the real Kubernetes control plane and CLIs the tests run as local
# processes: kube-apiserver, kubectl (k8s.io/kubernetes), etcd
# (go.etcd.io/etcd/server/v3), all pinned by this module's go.mod, and helm
# (helm.sh/helm/v4, its own module, pinned below).
#
# Binaries go to a cache outside the repository, keyed by the versions, so a
# warm run builds nothing. Prints the directory holding the binaries on the
# last line of stdout.
#
#   POSTERN_TOOLS_CACHE   cache root (default: ~/.cache/postern-tools)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

helm_version=v4.3.1
k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' go.mod)
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' go.mod)
go_version=$(go env GOVERSION)
key="k8s-${k8s_version}_etcd-${etcd_version}_helm-${helm_version}_${go_version}"
cache="${POSTERN_TOOLS_CACHE:-$HOME/.cache/postern-tools}/$key"
mkdir -p "$cache"

want=(kube-apiserver kubectl etcd helm)
missing=()
for b in "${want[@]}"; do
  [ -x "$cache/$b" ] || missing+=("$b")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "k8s tools: cached in $cache (nothing to build)" >&2
  echo "$cache"
  exit 0
fi

# Static, stripped binaries; no cgo needed for any of them.
export CGO_ENABLED=0
flags=(-trimpath -ldflags "-s -w")
start=$(date +%s)
for b in "${missing[@]}"; do
  t0=$(date +%s)
  echo "k8s tools: building $b ..." >&2
  case "$b" in
    kube-apiserver) go build "${flags[@]}" -o "$cache/.$b.tmp" k8s.io/kubernetes/cmd/kube-apiserver ;;
    kubectl) go build "${flags[@]}" -o "$cache/.$b.tmp" k8s.io/kubernetes/cmd/kubectl ;;
    etcd) go build "${flags[@]}" -o "$cache/.$b.tmp" ./cmd/etcd ;;
    helm) GOFLAGS=-mod=mod GOBIN="$cache/.helm-bin" go install "${flags[@]}" "helm.sh/helm/v4/cmd/helm@${helm_version}" \
            && mv "$cache/.helm-bin/helm" "$cache/.$b.tmp" && rmdir "$cache/.helm-bin" ;;
  esac
  mv "$cache/.$b.tmp" "$cache/$b"
  echo "k8s tools: built $b in $(( $(date +%s) - t0 ))s" >&2
done
echo "k8s tools: first build took $(( $(date +%s) - start ))s ($key)" >&2
echo "$cache"
