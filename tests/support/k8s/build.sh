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
# Bump when the build recipe changes, so cached binaries are rebuilt.
recipe=2
key="k8s-${k8s_version}_etcd-${etcd_version}_helm-${helm_version}_${go_version}_r${recipe}"
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

# Static, stripped binaries; no cgo needed for any of them. The version
# variables are stamped as the upstream release builds do: without them the
# API server reports v0.0.0-master and version checks (helm's kubeVersion,
# kubectl's skew warning) misfire.
export CGO_ENABLED=0
minor=$(echo "$k8s_version" | cut -d. -f2)
k8s_stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_stamp+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
k8s_flags=(-trimpath -ldflags "-s -w$k8s_stamp")
helm_flags=(-trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version")
flags=(-trimpath -ldflags "-s -w")
start=$(date +%s)
for b in "${missing[@]}"; do
  t0=$(date +%s)
  echo "k8s tools: building $b ..." >&2
  case "$b" in
    kube-apiserver) go build "${k8s_flags[@]}" -o "$cache/.$b.tmp" k8s.io/kubernetes/cmd/kube-apiserver ;;
    kubectl) go build "${k8s_flags[@]}" -o "$cache/.$b.tmp" k8s.io/kubernetes/cmd/kubectl ;;
    etcd) go build "${flags[@]}" -o "$cache/.$b.tmp" ./cmd/etcd ;;
    helm) GOFLAGS=-mod=mod GOBIN="$cache/.helm-bin" go install "${helm_flags[@]}" "helm.sh/helm/v4/cmd/helm@${helm_version}" \
            && mv "$cache/.helm-bin/helm" "$cache/.$b.tmp" && rmdir "$cache/.helm-bin" ;;
  esac
  mv "$cache/.$b.tmp" "$cache/$b"
  echo "k8s tools: built $b in $(( $(date +%s) - t0 ))s" >&2
done
echo "k8s tools: first build took $(( $(date +%s) - start ))s ($key)" >&2
echo "$cache"
