#!/usr/bin/env bash
# Postern as a Kubernetes ingress controller, with no cluster: a real
# control plane (etcd + kube-apiserver, the ones tests/support builds) runs
# as local processes on loopback; the Route CRD and the Helm chart
# (charts/postern) are installed into it, the cross-origin guide is applied
# as annotated Ingresses (manifests/cross-origin/ingresses.yaml) plus one
# Route (hello-route.yaml), and Postern runs here as the controller, with the
# chart's ServiceAccount, the bundled OpenID provider (alice / password) and
# the guide's SPA and API. One command on a fresh machine (Rust, Go, Node.js
# 20+ and openssl needed):
#
#   examples/kubernetes/run.sh
#
# The first run builds kube-apiserver, etcd, kubectl and helm from their Go
# modules (tests/support/k8s/build.sh; cached in ~/.cache/postern-tools, so
# only once) and Postern (cargo build --release). Then it prints the URL and
# the kubectl line to look at the cluster, and stays up until Ctrl-C, which
# stops everything it started.
#
# There are no nodes: nothing runs the chart's Deployment (its pod stays
# unscheduled). Postern runs as a local process instead, as that pod would:
# the same `serve --kubernetes`, the chart's ServiceAccount (a token from the
# TokenRequest API, so exactly the chart's RBAC), POD_NAMESPACE for its
# leader Lease. Its settings are the guide's demo.yaml without the routes;
# the routes come from the cluster.
#
# Ports (127.0.0.1), each can be changed through the environment:
#   DEMO_PORT 8443 (Postern, HTTPS)    DEMO_IDP_PORT 8100   DEMO_APP_PORT 8101
#   DEMO_API_PORT 8102  DEMO_ADMIN_PORT 8103 (what the API answered)
#   DEMO_APISERVER_PORT 8110  DEMO_ETCD_PORT 8111  DEMO_ETCD_PEER_PORT 8112
# DEMO_DIR (default examples/kubernetes/.demo): the certificates (kept
# across runs, so a CA the browser trusts stays the same) and the cluster
# (made anew each run). POSTERN_BIN: a postern binary to run instead of
# building the release one (tests/k8s_demo.rs passes its debug build).
set -euo pipefail
# shellcheck source=scripts/lib/npm.sh
source "$(dirname "$0")/../../scripts/lib/npm.sh"

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
xo="$root/examples/cross-origin"
demo=${DEMO_DIR:-$here/.demo}
parent=cors.localhost
port=${DEMO_PORT:-8443}
idp_port=${DEMO_IDP_PORT:-8100}
app_port=${DEMO_APP_PORT:-8101}
api_port=${DEMO_API_PORT:-8102}
admin_port=${DEMO_ADMIN_PORT:-8103}
apiserver_port=${DEMO_APISERVER_PORT:-8110}
etcd_port=${DEMO_ETCD_PORT:-8111}
etcd_peer_port=${DEMO_ETCD_PEER_PORT:-8112}
namespace=cross-origin
release=postern
release_namespace=postern

for tool in cargo go node npm openssl curl base64; do
  command -v "$tool" >/dev/null || { echo "$tool is needed; please install it" >&2; exit 1; }
done

# Everything started goes in here; Ctrl-C (or any failure) stops it all,
# newest first (Postern before the API server it watches), SIGTERM then,
# after 10 s, SIGKILL.
pids=()
cleanup() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "stopping..."
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      kill "${pids[$i]}" 2>/dev/null || true
    done
    for _ in $(seq 1 100); do
      local alive=0
      for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then alive=1; fi
      done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    echo "stopped"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for p in $port $idp_port $app_port $api_port $admin_port $apiserver_port $etcd_port $etcd_peer_port; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p on 127.0.0.1 is in use; stop whatever holds it (an earlier run.sh?) and try again" >&2
    exit 1
  fi
done

echo "== Kubernetes control plane and CLIs (tests/support/k8s/build.sh)"
echo "   The first run builds kube-apiserver, etcd, kubectl and helm from their Go"
echo "   modules, once (cached in ${POSTERN_TOOLS_CACHE:-~/.cache/postern-tools}); that takes a while."
tools=$(bash "$root/tests/support/k8s/build.sh" | tail -n 1)
kubectl_bin="$tools/kubectl"
helm_bin="$tools/helm"

if [ -n "${POSTERN_BIN:-}" ]; then
  postern=$POSTERN_BIN
  echo "== Postern: $postern (POSTERN_BIN)"
else
  echo "== building Postern (cargo build --release)"
  (cd "$root" && cargo build --release --bin postern)
  postern="${CARGO_TARGET_DIR:-$root/target}/release/postern"
fi

echo "== npm packages"
for dir in "$root/tests/support/oidc" "$xo"; do
  npm_ci_if_stale "$dir"
done

echo "== certificate for *.$parent ($demo/certs)"
"$xo/make-certs.sh" "$demo/certs" "$parent"

# The cluster is new every run: its PKI, etcd's data, the kubeconfigs.
cluster="$demo/cluster"
rm -rf "$cluster"
mkdir -p "$cluster/pki"
kubeconfig="$cluster/kubeconfig"

echo "== control plane PKI ($cluster/pki)"
# A CA, the API server's serving certificate (127.0.0.1, localhost), an
# admin client certificate (group system:masters) and the ServiceAccount
# token signing key: what tests/support/control_plane.rs makes with rcgen.
(
  cd "$cluster/pki"
  umask 077
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -days 30 -keyout ca-key.pem -out ca.pem \
    -subj "/CN=postern-demo-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  sign() { # name subject extensions
    openssl req "${ec[@]}" -keyout "$1-key.pem" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
      -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  sign apiserver "/CN=kube-apiserver" "$(printf '%s\n' 'extendedKeyUsage=serverAuth' \
    'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes')"
  sign admin "/O=system:masters/CN=postern-demo-admin" "extendedKeyUsage=clientAuth"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa-key.pem 2>/dev/null
  openssl pkey -in sa-key.pem -pubout -out sa-pub.pem 2>/dev/null
  rm -f ca.srl
)
pki="$cluster/pki"
b64() { base64 -w0 < "$1"; }
cat > "$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: demo
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority-data: $(b64 "$pki/ca.pem")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$pki/admin.pem")
    client-key-data: $(b64 "$pki/admin-key.pem")
contexts:
- name: demo
  context:
    cluster: demo
    user: admin
current-context: demo
EOF
chmod 600 "$kubeconfig"
kubectl() { "$kubectl_bin" --kubeconfig "$kubeconfig" --request-timeout=30s "$@"; }

# Starts "$@" in the background, logging to $cluster/<name>.log.
run_bg() {
  local name=$1
  shift
  "$@" >"$cluster/$name.out" 2>"$cluster/$name.log" &
  pids+=($!)
}
# wait_for NAME PID TRIES CHECK...: waits (TRIES x 0.25 s at most) until
# CHECK succeeds, or fails when process PID (logging to $cluster/NAME.log;
# LOG=other for another log) exits.
wait_for() {
  local name=$1 pid=$2 tries=$3 log=${LOG:-$1}
  shift 3
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then
      echo "$name: up"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; the end of its log ($log):" >&2
      tail -n 30 "$cluster/$log.log" "$cluster/$log.out" >&2
      exit 1
    fi
    sleep 0.25
  done
  echo "$name is not up after $((tries / 4)) s; the end of its log ($log):" >&2
  tail -n 30 "$cluster/$log.log" >&2
  exit 1
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

echo "== etcd (127.0.0.1:$etcd_port) and kube-apiserver (https://127.0.0.1:$apiserver_port)"
run_bg etcd "$tools/etcd" --name=default --data-dir="$cluster/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster="default=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync=true --log-level=warn
wait_for etcd "${pids[-1]}" 120 listening "$etcd_port"
run_bg kube-apiserver "$tools/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$apiserver_port" \
  --tls-cert-file="$pki/apiserver.pem" --tls-private-key-file="$pki/apiserver-key.pem" \
  --client-ca-file="$pki/ca.pem" \
  --service-account-key-file="$pki/sa-pub.pem" --service-account-signing-key-file="$pki/sa-key.pem" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range=10.96.0.0/16 --authorization-mode=RBAC \
  --cert-dir="$cluster/apiserver-certs" --v=1
wait_for kube-apiserver "${pids[-1]}" 480 kubectl get --raw=/readyz --request-timeout=2s

echo "== the Route CRD (crds/routes.postern.dev.yaml)"
kubectl apply --server-side -f "$root/crds/routes.postern.dev.yaml"
kubectl wait --for=condition=Established crd/routes.postern.dev --timeout=30s

echo "== the chart (helm install $release charts/postern -n $release_namespace)"
# The API server's bootstrap makes the default namespace; the chart's
# objects go in their own.
"$helm_bin" --kubeconfig "$kubeconfig" install "$release" "$root/charts/postern" \
  --namespace "$release_namespace" --create-namespace
kubectl get all,serviceaccount,configmap,secret,ingressclass -n "$release_namespace" -l "app.kubernetes.io/instance=$release"

echo "== the cross-origin guide as annotated Ingresses (namespace $namespace)"
kubectl create namespace "$namespace"
# The origins in the CORS headers and policy carry the port.
sed "s#https://app.$parent:8443#https://app.$parent:$port#g" "$root/manifests/cross-origin/ingresses.yaml" \
  | kubectl apply -n "$namespace" -f -
# The Services of the manifest stand for pods; here the app and the API are
# processes on this machine's loopback. EndpointSlices refuse loopback
# addresses, so the demo turns each Service into an ExternalName for
# localhost on the port the server listens on (Postern sends an
# ExternalName Service's requests to externalName:port). Applied over the
# manifest's, so the Ingresses stay exactly as written.
kubectl apply -n "$namespace" -f - <<EOF
apiVersion: v1
kind: Service
metadata:
  name: app
spec:
  type: ExternalName
  externalName: localhost
  ports:
    - name: http
      port: $app_port
---
apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  type: ExternalName
  externalName: localhost
  ports:
    - name: http
      port: $api_port
EOF
echo "== a Route (examples/kubernetes/hello-route.yaml)"
kubectl apply -n "$namespace" -f "$here/hello-route.yaml"

echo "== Postern's credentials: the chart's ServiceAccount"
sa=$(kubectl get serviceaccount -n "$release_namespace" -l "app.kubernetes.io/instance=$release" \
  -o jsonpath='{.items[0].metadata.name}')
token=$(kubectl create token "$sa" -n "$release_namespace" --duration=24h)
postern_kubeconfig="$cluster/postern.kubeconfig"
cat > "$postern_kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: demo
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority-data: $(b64 "$pki/ca.pem")
users:
- name: $sa
  user:
    token: $token
contexts:
- name: demo
  context:
    cluster: demo
    user: $sa
    namespace: $release_namespace
current-context: demo
EOF
chmod 600 "$postern_kubeconfig"
echo "Postern runs as system:serviceaccount:$release_namespace:$sa"

# The guide's demo.yaml settings (everything before `routes:`), for this
# run's ports and certificate; the routes come from the cluster.
config="$cluster/config.yaml"
{
  echo "# examples/cross-origin/demo.yaml without its routes (made by examples/kubernetes/run.sh)"
  sed '/^routes:/,$d' "$xo/demo.yaml" \
    | sed -e "s#http://127.0.0.1:8100#http://127.0.0.1:$idp_port#" -e "s#:8443#:$port#g" -e "s#\.demo/#$demo/certs/#g"
} > "$config"
"$postern" check --config "$config"

cat > "$cluster/idp.json" <<EOF
{
  "clients": [{
    "client_id": "cross-origin-demo",
    "client_secret": "cross-origin-demo-secret",
    "redirect_uris": ["https://authenticate.$parent:$port/oauth2/callback"],
    "post_logout_redirect_uris": ["https://authenticate.$parent:$port/.postern/signed_out"]
  }]
}
EOF

echo "== the IdP, the app, the API and Postern"
grep_out() { grep -q "$2" "$cluster/$1.out" "$cluster/$1.log"; }
run_bg idp env PORT="$idp_port" IDP_CONFIG="$cluster/idp.json" node "$root/tests/support/oidc/server.mjs"
wait_for idp "${pids[-1]}" 120 grep_out idp '"issuer"'
run_bg app env PORT="$app_port" node "$xo/app-server.mjs"
wait_for app "${pids[-1]}" 120 grep_out app '"app"'
run_bg api env PORT="$api_port" ADMIN_PORT="$admin_port" POSTERN_CA="$demo/certs/ca.pem" \
  POSTERN_JWKS_URLS="https://authenticate.$parent:$port/.well-known/postern/jwks.json" node "$xo/api-server.mjs"
wait_for api "${pids[-1]}" 120 grep_out api '"api"'
run_bg postern env POD_NAMESPACE="$release_namespace" "$postern" --log-format json serve --config "$config" \
  --kubernetes --kubeconfig "$postern_kubeconfig" --shutdown-grace 2s
wait_for postern "${pids[-1]}" 120 grep_out postern '"cluster synced"'
# The guide's app answers through Postern (a sign-in redirect) before we say so.
routed() {
  local code
  code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$demo/certs/ca.pem" -H 'Accept: text/html' \
    --resolve "app.$parent:$port:127.0.0.1" "https://app.$parent:$port/")
  [ "$code" = 302 ]
}
LOG=postern wait_for "the guide's app through Postern" "${pids[-1]}" 120 routed

export_line="export KUBECONFIG=$kubeconfig PATH=$tools:\$PATH"
cat <<EOF

Postern is the ingress controller of a Kubernetes control plane on this
machine (kube-apiserver https://127.0.0.1:$apiserver_port, etcd; no nodes), serving
the cross-origin guide from annotated Ingresses and one Route.

  Open   https://app.$parent:$port/
  Sign in as  alice / password   (also bob, carol; same password)

Look at the cluster (kubectl and helm are in $tools):
  $kubectl_bin --kubeconfig $kubeconfig get routes -A
  $kubectl_bin --kubeconfig $kubeconfig describe ingress -n $namespace
or, for a shell:
  $export_line
  kubectl get ingresses,routes -n $namespace
  helm list -n $release_namespace

A Route Postern answers itself (examples/kubernetes/hello-route.yaml):
  curl --cacert $demo/certs/ca.pem --resolve hello.$parent:$port:127.0.0.1 https://hello.$parent:$port/

Names under .localhost need no DNS in Chrome/Chromium. The certificate is
signed by a throwaway CA made for this demo. Either, for a quick look:
  chromium --user-data-dir=\$(mktemp -d) --ignore-certificate-errors https://app.$parent:$port/
or trust the CA: import $demo/certs/ca.pem in Chrome's settings.
Edit an Ingress (kubectl edit ingress -n $namespace api2) and Postern
applies it at once; its Events say what it made of it.
Logs: $cluster/*.log

Ctrl-C stops everything.
EOF

# Stay up until Ctrl-C, or until one of the processes dies.
while true; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "a process exited (pid $pid); see $cluster/*.log" >&2
      exit 1
    fi
  done
  sleep 1
done
