#!/usr/bin/env bash
# Regenerates manifests/install.yaml: the Namespace postern-system, the Route
# CRD and the chart rendered with its defaults, for `kubectl apply -f`.
# tests/helm_chart.rs fails when the file differs from what this prints.
#
#   scripts/render-install.sh            rewrite manifests/install.yaml
#   scripts/render-install.sh --stdout   print it instead
#
# The one departure from the defaults: the secrets come from a Secret the
# user creates (secrets.existingSecret=postern-secrets). A rendered file
# cannot generate them once per cluster as `helm install` does, and keys
# committed in this file would be the same for everyone who applies it.
set -euo pipefail
cd "$(dirname "$0")/.."

helm="$(tests/support/k8s/build.sh | tail -1)/helm"

render() {
  cat <<'HEADER'
# Postern, the ingress controller, for `kubectl apply -f` (the Helm chart
# charts/postern rendered with its defaults by scripts/render-install.sh; do
# not edit). With Helm, install the chart instead: see charts/postern/README.md.
#
# It reads its cookie secret and signing key from a Secret you create once:
#
#   kubectl apply -f manifests/install.yaml
#   kubectl -n postern-system create secret generic postern-secrets \
#     --from-literal=cookie_secret="$(head -c32 /dev/urandom | base64)" \
#     --from-literal=signing_key="$(openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)"
#
# (add --from-literal=idp_client_secret=... with an identity provider, whose
# settings go in the ConfigMap postern). The pods start once the Secret exists.
---
apiVersion: v1
kind: Namespace
metadata:
  name: postern-system
  labels:
    app.kubernetes.io/name: postern
    app.kubernetes.io/part-of: postern
HEADER
  cat charts/postern/crds/routes.postern.dev.yaml
  "$helm" template postern charts/postern --namespace postern-system \
    --set secrets.existingSecret=postern-secrets
}

if [ "${1:-}" = "--stdout" ]; then
  render
else
  render > manifests/install.yaml
  echo "wrote manifests/install.yaml" >&2
fi
