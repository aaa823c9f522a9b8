#!/usr/bin/env bash
# The cross-origin guide, running: Postern in front of an SPA on
# app.cors.localhost and a JSON API on api.cors.localhost, with the bundled
# OpenID Connect provider for sign-in. One command on a fresh machine (Rust,
# Node.js 20+ and openssl needed):
#
#   examples/cross-origin/run.sh               demo.yaml: every approach on one page
#   examples/cross-origin/run.sh config.yaml   the guide's config as is (the problem)
#   (or single-domain.yaml, header.yaml, shared-cookie.yaml)
#
# Builds Postern (cargo build --release), installs the npm packages, makes
# a throwaway CA and certificate in examples/cross-origin/.demo/, starts the
# IdP (127.0.0.1:8100), the app (8101), the API (8102; what it answered is
# listed at 127.0.0.1:8103/requests) and Postern (127.0.0.1:8443), prints
# where to go, and stays up until Ctrl-C.
set -euo pipefail
# shellcheck source=scripts/lib/npm.sh
source "$(dirname "$0")/../../scripts/lib/npm.sh"

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
config_name=${1:-demo.yaml}
config="$here/$config_name"
demo="$here/.demo"
parent=cors.localhost
port=8443
idp_port=8100
app_port=8101
api_port=8102
admin_port=8103

[ -f "$config" ] || { echo "no such config: $config" >&2; exit 2; }
for tool in cargo node npm openssl curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed; please install it" >&2; exit 1; }
done

pids=()
cleanup() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "stopping..."
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Nothing may already listen on our ports (an earlier run, another demo).
for p in $port $idp_port $app_port $api_port $admin_port; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p on 127.0.0.1 is in use; stop whatever holds it (an earlier run.sh?) and try again" >&2
    exit 1
  fi
done

echo "== building Postern (cargo build --release)"
(cd "$root" && cargo build --release --bin postern)
target_dir=${CARGO_TARGET_DIR:-$root/target}
postern="$target_dir/release/postern"

echo "== npm packages"
for dir in "$root/tests/support/oidc" "$here"; do
  npm_ci_if_stale "$dir"
done

echo "== certificate for *.$parent ($demo)"
"$here/make-certs.sh" "$demo" "$parent"

echo "== checking $config_name"
"$postern" check --config "$config"

cat > "$demo/idp.json" <<EOF
{
  "clients": [{
    "client_id": "cross-origin-demo",
    "client_secret": "cross-origin-demo-secret",
    "redirect_uris": ["https://authenticate.$parent:$port/oauth2/callback"],
    "post_logout_redirect_uris": ["https://authenticate.$parent:$port/.postern/signed_out"]
  }]
}
EOF

# Starts "$@" in the background, logging to $demo/<name>.log, and waits
# (bounded) until its stdout says it is listening.
start() {
  local name=$1 ready=$2
  shift 2
  "$@" >"$demo/$name.out" 2>"$demo/$name.log" &
  pids+=($!)
  local pid=$!
  for _ in $(seq 1 150); do
    if grep -q "$ready" "$demo/$name.out" "$demo/$name.log" 2>/dev/null; then
      echo "$name: up (log: $demo/$name.log)"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; its log:" >&2
      cat "$demo/$name.log" "$demo/$name.out" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "$name did not start within 30 s; its log:" >&2
  cat "$demo/$name.log" >&2
  exit 1
}

echo "== starting"
start idp '"issuer"' env PORT=$idp_port IDP_CONFIG="$demo/idp.json" node "$root/tests/support/oidc/server.mjs"
start app '"app"' env PORT=$app_port node "$here/app-server.mjs"
start api '"api"' env PORT=$api_port ADMIN_PORT=$admin_port POSTERN_CA="$demo/ca.pem" \
  POSTERN_JWKS_URLS="https://authenticate.$parent:$port/.well-known/postern/jwks.json" node "$here/api-server.mjs"
start postern 'proxy listening' "$postern" --log-format json serve --config "$config"

# Postern answers (through TLS, with the demo CA) before we say so.
for _ in $(seq 1 50); do
  if curl -fsS --cacert "$demo/ca.pem" --resolve "authenticate.$parent:$port:127.0.0.1" \
    "https://authenticate.$parent:$port/.well-known/postern/jwks.json" >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done

cat <<EOF

Postern is serving the cross-origin guide ($config_name).

  Open   https://app.$parent:$port/
  Sign in as  alice / password   (also bob, carol; same password)

Names under .localhost need no DNS in Chrome/Chromium. The certificate is
signed by a throwaway CA made for this demo. Either, for a quick look:
  chromium --user-data-dir=\$(mktemp -d) --ignore-certificate-errors https://app.$parent:$port/
or trust the CA: import $demo/ca.pem in Chrome's settings
(Privacy and security > Security > Manage certificates > Authorities).

Then press the buttons; "Run all" runs every approach. The same SPA on
https://other.$parent:$port/ is an origin api2.'s cors policy does not allow.
What the API answered: http://127.0.0.1:$admin_port/requests
Logs: $demo/*.log

Ctrl-C stops everything.
EOF

# Stay up until Ctrl-C, or until one of the servers dies.
while true; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "a server exited (pid $pid); see $demo/*.log" >&2
      exit 1
    fi
  done
  sleep 1
done
