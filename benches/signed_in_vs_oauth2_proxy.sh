#!/usr/bin/env bash
# The signed-in path: Postern vs the stack it replaces (nginx auth_request +
# oauth2-proxy) vs plain nginx TLS, on loopback, with wrk.
#
# Stacks (every one is wrk -> TLS proxy -> the same upstream)
#   A postern        Postern over TLS; route `https://bench.localhost` with
#                    a policy allowing an email list ([alice@example.com]),
#                    `pass_identity_headers: true` (a signed ES256 identity
#                    assertion, X-Postern-Jwt-Assertion, to the upstream).
#                    The request carries the `_postern` session cookie.
#   B oauth2-proxy   nginx over TLS, `auth_request /oauth2/auth` to
#                    oauth2-proxy (pinned version, built from its Go module
#                    by tests/support/oauth2-proxy/build.sh), OIDC client of
#                    the same IdP, cookie session store,
#                    --authenticated-emails-file with alice@example.com and
#                    no --email-domain (so only that list), --set-xauthrequest
#                    and --set-authorization-header; nginx copies
#                    X-Auth-Request-User/-Email and `Authorization: Bearer
#                    <ID token>` to the upstream (auth_request_set +
#                    proxy_set_header), as oauth2-proxy's nginx guide does.
#                    The request carries the `_oauth2_proxy` session cookie.
#   C nginx-plain    nginx over TLS proxying with no authentication: the
#                    reference for the goal "Postern signed in >= 0.9x plain
#                    nginx TLS".
#   The upstream is one nginx answering "ok" (HTTP/1.1 keep-alive), as in
#   benches/proxy_vs_nginx.sh; /__identity echoes the identity headers and
#   X-Forwarded-*, /__status is its stub_status (request counter).
#
# Sessions come from real sign-ins: each stack's session is made by curl
# going through the bundled OpenID provider (tests/support/oidc/server.mjs,
# panva/oidc-provider) login form as alice/password, the same user for A
# and B, each stack being its own OIDC client of that IdP. Before timing, one
# curl per stack with exactly the headers wrk sends fetches /__identity and
# the identity the upstream received is checked (A: the assertion's ES256
# signature against Postern's JWKS and its email; B: X-Auth-Request-Email
# and the ID token's RS256 signature against the IdP's JWKS and its email;
# C: no identity), and bob (bob@example.org, not on either list) must be
# refused by A and B. The IdP's ID/access tokens live 24 h, so no session
# refresh happens during the runs.
#
# Equivalent between A and B
#   TLS 1.2/1.3 on the same self-signed P-256 certificate (rustls vs
#   OpenSSL), HTTP/1.1 keep-alive on both sides, a session cookie the proxy
#   decrypts and checks on every request (Postern: ChaCha20-Poly1305;
#   oauth2-proxy: AES-CFB + HMAC-SHA256), an email allow list, the identity
#   to the upstream with the same X-Forwarded-For/-Proto/-Host, no access
#   logs (nginx access_log off, oauth2-proxy --request-logging=false,
#   Postern at log level warn), proxies pinned to the same CPU.
# Not equivalent
#   * The identity: Postern mints its own short-lived assertion (ES256,
#     audience the route, 5 min, cached per session) for the upstream to
#     verify with Postern's JWKS; oauth2-proxy forwards the IdP's ID token
#     (RS256, audience oauth2-proxy's client id, the IdP's lifetime) plus
#     unsigned X-Auth-Request-* headers, and signs nothing per request.
#   * B is two processes and an extra loopback HTTP hop per request
#     (nginx -> oauth2-proxy /oauth2/auth, keep-alive); A is one process.
#   * Postern strips its cookie and token headers before the upstream;
#     nginx forwards the Cookie header (with _oauth2_proxy) unchanged, as
#     oauth2-proxy's guides configure it.
#   * Postern also keeps per-route Prometheus metrics; nginx does not.
#   * The cookie sizes differ (wrk sends what each sign-in set): Postern's
#     holds the identity only, oauth2-proxy's cookie store holds the tokens.
#
# Pinning (as benches/proxy_vs_nginx.sh): everything of the stack under test
# (Postern; nginx with worker_processes 1 plus oauth2-proxy, whose Go
# runtime sizes GOMAXPROCS from the affinity mask; plain nginx) runs on CPU
# ${PROXY_CPU:-0}; wrk, the upstream nginx and the IdP on CPU ${LOAD_CPU:-1}.
# The CPUs each process may use are read back from /proc and printed.
#
# Usage
#   benches/signed_in_vs_oauth2_proxy.sh
#   ROUNDS=1 DURATION=3s benches/signed_in_vs_oauth2_proxy.sh    # a quick check
#   POSTERN_BIN=target/pgo/postern benches/signed_in_vs_oauth2_proxy.sh
# Installs what is missing: nginx and wrk from apt, tests/support/oidc's npm
# packages (npm ci), oauth2-proxy (built from its Go module and cached under
# ~/.cache/postern-tools, OAUTH2_PROXY_BIN to bring your own). Postern:
# POSTERN_BIN, else `cargo build --release --bin postern` (waits for cargo's
# lock if someone else builds in the same target dir).
#
# Environment knobs (defaults in brackets)
#   DURATION [10s]  wrk run per stack and round;  ROUNDS [3]  rounds, the
#                   stacks interleaved (the first stack rotates per round)
#   WARMUP [2s]     wrk warm-up before each measured run, discarded
#   THREADS [2]     wrk -t;  CONNECTIONS [64]  wrk -c
#   PROXY_CPU [0], LOAD_CPU [1], PIN [1]   CPU pinning (see above)
#   KEEP_TMP [0]    keep the temp dir (configs, logs, raw wrk output)
#                   (a failed sign-in or identity check always keeps it)
#   BUILD [1]       0: use an existing target/release/postern without cargo
#
# Output: machine, versions, background load, CPUs of each process, the
# identity checks, then per stack the median and min-max of req/s and p99,
# median p50, requests, non-2xx responses and socket errors (wrk), whether
# every request reached the upstream (its stub_status counter), the stack's
# own CPU time per request; then the ratios A/B and A/C.
# Exit status: 0 ok, 1 setup or check failure, 2 a timed run had errors.
#
# Everything listens on 127.0.0.1 only (checked with ss before the runs);
# every process started here is stopped on exit (also on failure or Ctrl-C);
# every wait is bounded.
set -euo pipefail

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PIN="${PIN:-1}"
KEEP_TMP="${KEEP_TMP:-0}"
# A failed sign-in or identity check keeps the temp dir (logs, cookie jars).
KEEP_TMP_ON_ERROR=1
# find_postern: without POSTERN_BIN, always `cargo build --release` (a no-op
# when up to date), so the binary measured is the source's.
BUILD="${BUILD:-1}"
BENCH_TAG="signed-in-bench"
BENCH_HOST="bench.localhost"
AUTH_HOST="auth.bench.localhost"
USER_EMAIL="alice@example.com"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
OIDC_DIR="$REPO_ROOT/tests/support/oidc"
# shellcheck source=scripts/lib/bench.sh
source "$REPO_ROOT/scripts/lib/bench.sh"

DURATION_S="$(duration_secs "$DURATION")"
WARMUP_S="$(duration_secs "$WARMUP")"
((DURATION_S > 0)) || die "DURATION must be > 0"
positive_int THREADS "$THREADS"
positive_int ROUNDS "$ROUNDS"
positive_int CONNECTIONS "$CONNECTIONS"
((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be >= THREADS"

# ---------------------------------------------------------- dependencies ---
install_deps nginx:nginx-light wrk:wrk curl:curl node:nodejs npm:npm
require_tools wrk openssl curl ss timeout awk sort pgrep node npm
nginx_init
for m in auth_request stub_status; do
    [[ "$NGINX_V" == *"--with-http_${m}_module"* ]] ||
        die "$NGINX lacks the ${m} module (Debian's nginx-light and nginx have it)"
done

# tests/support/oidc's packages (oidc-provider), as the tests install them.
timeout 600 bash -c "source '$REPO_ROOT/scripts/lib/npm.sh'; npm_ci_if_stale '$OIDC_DIR'" >&2 ||
    die "npm ci in $OIDC_DIR failed"

# oauth2-proxy: built from its Go module, cached (a warm run builds nothing).
if [[ -n "${OAUTH2_PROXY_BIN:-}" ]]; then
    O2P="$OAUTH2_PROXY_BIN"
else
    command -v go >/dev/null 2>&1 || die "go not found: needed to build oauth2-proxy (or set OAUTH2_PROXY_BIN)"
    O2P="$(timeout 1800 "$REPO_ROOT/tests/support/oauth2-proxy/build.sh" | tail -n1)" ||
        die "building oauth2-proxy failed (tests/support/oauth2-proxy/build.sh)"
fi
[[ -x "$O2P" ]] || die "oauth2-proxy binary not executable: $O2P"

setup_pinning "wrk + upstream + IdP"
find_postern

# --------------------------------------------------------------- temp dir ---
CERT_EXTRA_NAMES="$AUTH_HOST" make_tmp_and_cert
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/signing-key.pem" \
    >>"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "openssl genpkey failed"; }
chmod 600 "$TMP/signing-key.pem"
echo "$USER_EMAIL" >"$TMP/authenticated-emails.txt"
write_wrk_loopback_lua

free_port UP_PORT
free_port IDP_PORT
free_port PST_PORT
free_port NGB_PORT
free_port O2P_PORT
free_port NGC_PORT
ISSUER="http://127.0.0.1:$IDP_PORT"
PST_URL="https://$BENCH_HOST:$PST_PORT"
NGB_URL="https://$BENCH_HOST:$NGB_PORT"
NGC_URL="https://$BENCH_HOST:$NGC_PORT"
random_secret() { head -c32 /dev/urandom | base64 | tr -d '\n'; }
PST_CLIENT_SECRET="$(random_secret)"
O2P_CLIENT_SECRET="$(random_secret)"

# -------------------------------------------------------------------- IdP ---
# Two clients of the same provider; tokens live a day (no refresh mid-run).
cat >"$TMP/idp.json" <<EOF
{
  "clients": [
    {"client_id": "postern", "client_secret": "$PST_CLIENT_SECRET",
     "redirect_uris": ["https://$AUTH_HOST:$PST_PORT/oauth2/callback"],
     "post_logout_redirect_uris": ["https://$AUTH_HOST:$PST_PORT/.postern/signed_out"]},
    {"client_id": "oauth2-proxy", "client_secret": "$O2P_CLIENT_SECRET",
     "redirect_uris": ["$NGB_URL/oauth2/callback"], "post_logout_redirect_uris": []}
  ],
  "id_token_ttl": 86400, "access_token_ttl": 86400, "refresh_token_ttl": 86400
}
EOF

# ------------------------------------------------------------ nginx confs ---
nginx_http_common() { # $1 = name
    cat <<EOF
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 3600s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
$(nginx_temp_paths "$TMP/$1")
EOF
}
# What Postern always sends upstream (nginx variables, not shell ones).
# shellcheck disable=SC2016
XFWD='proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;'
UPSTREAM_KEEPALIVE='proxy_http_version 1.1;
            proxy_set_header Connection "";'

# The upstream (scripts/lib/bench.sh), plus its request counter and an echo
# of the identity it received.
write_upstream_conf "$UP_PORT" 8192 "$(cat <<'EOF'
        location = /__status { stub_status; }
        location = /__identity {
            return 200 "assertion=$http_x_postern_jwt_assertion
pomerium_assertion=$http_x_pomerium_jwt_assertion
user=$http_x_auth_request_user
email=$http_x_auth_request_email
authorization=$http_authorization
cookie=$http_cookie
forwarded=for:$http_x_forwarded_for proto:$http_x_forwarded_proto host:$http_x_forwarded_host
";
        }
EOF
)"

# Stack C: plain TLS proxy.
{
    nginx_main_common nginx-plain 8192 16384
    cat <<EOF
http {
$(nginx_http_common nginx-plain)
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGC_PORT ssl default_server;
        ssl_reject_handshake on;
    }
    server {
        listen 127.0.0.1:$NGC_PORT ssl;   # no http2
        server_name $BENCH_HOST;
        ssl_certificate     $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        location / {
            proxy_pass http://backend;
            $UPSTREAM_KEEPALIVE
            $XFWD
        }
    }
}
EOF
} >"$TMP/nginx-plain.conf"

# Stack B: nginx auth_request + oauth2-proxy, after oauth2-proxy's nginx guide
# (docs: "Configuring for use with the Nginx auth_request directive").
{
    nginx_main_common nginx-auth 8192 16384
    cat <<EOF
http {
$(nginx_http_common nginx-auth)
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    upstream oauth2_proxy {
        server 127.0.0.1:$O2P_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGB_PORT ssl default_server;
        ssl_reject_handshake on;
    }
    server {
        listen 127.0.0.1:$NGB_PORT ssl;   # no http2
        server_name $BENCH_HOST;
        ssl_certificate     $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;

        # Sign-in, callback, sign-out.
        location /oauth2/ {
            proxy_pass http://oauth2_proxy;
            $UPSTREAM_KEEPALIVE
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Auth-Request-Redirect \$request_uri;
            $XFWD
        }
        # The per-request check (a subrequest, no body).
        location = /oauth2/auth {
            internal;
            proxy_pass http://oauth2_proxy;
            $UPSTREAM_KEEPALIVE
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-Uri \$request_uri;
            $XFWD
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
        location @sign_in {
            return 302 /oauth2/start?rd=\$request_uri;
        }
        location / {
            auth_request /oauth2/auth;
            error_page 401 = @sign_in;

            # The identity, to the upstream.
            auth_request_set \$user  \$upstream_http_x_auth_request_user;
            auth_request_set \$email \$upstream_http_x_auth_request_email;
            auth_request_set \$id_token \$upstream_http_authorization;
            proxy_set_header X-Auth-Request-User  \$user;
            proxy_set_header X-Auth-Request-Email \$email;
            proxy_set_header Authorization \$id_token;
            # A refreshed session cookie, to the client (none here: no refresh).
            auth_request_set \$auth_cookie \$upstream_http_set_cookie;
            add_header Set-Cookie \$auth_cookie;

            proxy_pass http://backend;
            $UPSTREAM_KEEPALIVE
            $XFWD
        }
    }
}
EOF
} >"$TMP/nginx-auth.conf"

# Stack A: Postern.
cat >"$TMP/postern.yaml" <<EOF
address: 127.0.0.1:$PST_PORT
certificate_file: $TMP/cert.pem
certificate_key_file: $TMP/key.pem
authenticate_service_url: https://$AUTH_HOST:$PST_PORT
idp_provider: oidc
idp_provider_url: $ISSUER
idp_client_id: postern
idp_client_secret: $PST_CLIENT_SECRET
cookie_secret: $(random_secret)
signing_key_file: $TMP/signing-key.pem
routes:
  - from: https://$BENCH_HOST
    to: http://127.0.0.1:$UP_PORT
    pass_identity_headers: true
    policy:
      - allow:
          or:
            - email:
                in: [$USER_EMAIL]
EOF

# oauth2-proxy's flags (stack B).
O2P_ARGS=(
    --http-address="127.0.0.1:$O2P_PORT"
    --provider=oidc
    --oidc-issuer-url="$ISSUER"
    --client-id=oauth2-proxy
    --client-secret="$O2P_CLIENT_SECRET"
    --code-challenge-method=S256
    --scope="openid email profile"
    --redirect-url="$NGB_URL/oauth2/callback"
    --cookie-secret="$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    --cookie-secure=true
    --authenticated-emails-file="$TMP/authenticated-emails.txt"
    --upstream=static://202
    --reverse-proxy=true
    --trusted-proxy-ip=127.0.0.1/32
    --set-xauthrequest=true
    --set-authorization-header=true
    --skip-provider-button=true
    --request-logging=false
    --silence-ping-logging=true
)

# ---------------------------------------------------------- process start ---
# curl to a stack: BENCH_HOST and AUTH_HOST resolve to 127.0.0.1, bounded.
# $1 = port, rest = curl arguments.
curl_to() {
    local port="$1"
    shift
    curl -sk --max-time 20 --resolve "$BENCH_HOST:$port:127.0.0.1" \
        --resolve "$AUTH_HOST:$port:127.0.0.1" "$@"
}

log "temp dir $TMP; upstream :$UP_PORT; IdP :$IDP_PORT; postern :$PST_PORT; nginx+oauth2-proxy :$NGB_PORT (+:$O2P_PORT); nginx :$NGC_PORT"

start_bg idp "${LOAD_PIN[@]}" env IDP_CONFIG="$TMP/idp.json" PORT="$IDP_PORT" node "$OIDC_DIR/server.mjs"
IDP_PID="${PIDS[-1]}"
wait_status idp "$IDP_PID" "$IDP_PORT" 200 "$ISSUER/test/health" "$TMP/idp.out"

start_nginx upstream load
UP_PID="${PIDS[-1]}"
wait_ready upstream "$UP_PID" http "$UP_PORT" "$TMP/upstream.error.log"

start_postern postern
PST_PID="${PIDS[-1]}"
# No session: an API client gets 401 (a browser would be sent to sign in).
wait_status postern "$PST_PID" "$PST_PORT" 401 "$PST_URL/" "$TMP/postern.out"

start_bg oauth2-proxy "${PROXY_PIN[@]}" "$O2P" "${O2P_ARGS[@]}"
O2P_PID="${PIDS[-1]}"
wait_status oauth2-proxy "$O2P_PID" "$O2P_PORT" 200 "http://127.0.0.1:$O2P_PORT/ping" "$TMP/oauth2-proxy.out"
start_nginx nginx-auth proxy
NGB_PID="${PIDS[-1]}"
# No session: auth_request gets 401 and nginx redirects to /oauth2/start.
wait_status nginx-auth "$NGB_PID" "$NGB_PORT" 302 "$NGB_URL/" "$TMP/nginx-auth.error.log"

start_nginx nginx-plain proxy
NGC_PID="${PIDS[-1]}"
wait_ready nginx-plain "$NGC_PID" https "$NGC_PORT" "$TMP/nginx-plain.error.log"

# Nothing of ours may listen beyond loopback (processes and their children).
mapfile -t all_pids < <(for p in "${PIDS[@]}"; do echo "$p"; pgrep -P "$p" || true; done)
for pid in "${all_pids[@]}"; do
    while read -r addr; do
        [[ "$addr" == 127.0.0.1:* ]] || die "pid $pid listens on $addr, not loopback"
    done < <(ss -Htlnp 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) {print $4}')
done
LISTENERS="$(ss -Htln 2>/dev/null | awk '{print $4}' |
    grep -cE ":($UP_PORT|$IDP_PORT|$PST_PORT|$NGB_PORT|$O2P_PORT|$NGC_PORT)$" || true)"

# ---------------------------------------------------------------- sign-in ---
# A real sign-in with curl: start at the stack's URL as a browser would
# (Accept: text/html), follow the redirects to the IdP's login form, post
# user/password, follow the redirects back (callback, session cookie).
# $1 = label, $2 = port, $3 = cookie jar, $4 = user. Prints the final
# "status url" and leaves the final body in $3.body.
sign_in() {
    local label="$1" port="$2" jar="$3" user="$4" out url action
    out="$(curl_to "$port" -L --max-redirs 20 -c "$jar" -b "$jar" -H 'Accept: text/html' \
        -o "$jar.form" -w '%{http_code} %{url_effective}' "https://$BENCH_HOST:$port/")" ||
        die "$label: sign-in as $user: curl failed before the login form"
    url="${out#* }"
    [[ "$out" == "200 $ISSUER/interaction/"* ]] ||
        die "$label: sign-in as $user did not reach the IdP's login form (got: $out)"
    action="$(sed -n 's/.*<form id="login" method="post" action="\([^"]*\)".*/\1/p' "$jar.form")"
    [[ "$action" == /interaction/*/login ]] || die "$label: no login form at $url"
    curl_to "$port" -L --max-redirs 20 -c "$jar" -b "$jar" -H 'Accept: text/html' \
        --data-urlencode "login=$user" --data-urlencode password=password \
        -o "$jar.body" -w '%{http_code} %{url_effective}' "$ISSUER$action" ||
        die "$label: sign-in as $user: curl failed after the login form"
}
# The Cookie header value for BENCH_HOST from a jar: the cookies whose name
# matches the regex $2.
jar_cookies() {
    awk -F'\t' -v h="$BENCH_HOST" -v re="$2" 'NF >= 7 {
        d = $1; sub(/^#HttpOnly_/, "", d)
        if (d == h && $6 ~ re) { printf "%s%s=%s", (n++ ? "; " : ""), $6, $7 }
    }' "$1"
}
O2P_COOKIE_RE='^_oauth2_proxy(_[0-9]+)?$'

log "signing in as alice through the IdP (postern, oauth2-proxy)"
out="$(sign_in postern "$PST_PORT" "$TMP/jar-postern" alice)"
[[ "$out" == "200 $PST_URL/" && "$(cat "$TMP/jar-postern.body")" == ok ]] ||
    die "postern: sign-in as alice did not end at the upstream (got: $out, body: $(head -c 300 "$TMP/jar-postern.body"))"
out="$(sign_in oauth2-proxy "$NGB_PORT" "$TMP/jar-oauth2-proxy" alice)"
[[ "$out" == "200 $NGB_URL/" && "$(cat "$TMP/jar-oauth2-proxy.body")" == ok ]] ||
    die "oauth2-proxy: sign-in as alice did not end at the upstream (got: $out, body: $(head -c 300 "$TMP/jar-oauth2-proxy.body"))"
PST_COOKIE="$(jar_cookies "$TMP/jar-postern" '^_postern$')"
O2P_COOKIE="$(jar_cookies "$TMP/jar-oauth2-proxy" "$O2P_COOKIE_RE")"
[[ -n "$PST_COOKIE" ]] || die "postern: no _postern cookie for $BENCH_HOST after sign-in"
[[ -n "$O2P_COOKIE" ]] || die "oauth2-proxy: no _oauth2_proxy cookie for $BENCH_HOST after sign-in"

# bob (bob@example.org) is on neither allow list: both must refuse him.
log "signing in as bob (not allowed) through the IdP"
out="$(sign_in postern "$PST_PORT" "$TMP/jar-postern-bob" bob)"
[[ "$out" == "403 $PST_URL/" ]] || die "postern let bob through or failed otherwise (got: $out)"
BOB_PST_COOKIE="$(jar_cookies "$TMP/jar-postern-bob" '^_postern$')"
[[ -n "$BOB_PST_COOKIE" ]] || die "postern: no session cookie for bob (the refusal must come from the policy)"
# bob's session itself is refused, not just the sign-in's last step.
code="$(curl_to "$PST_PORT" -o /dev/null -w '%{http_code}' -H "Host: $BENCH_HOST" \
    -H "Cookie: $BOB_PST_COOKIE" "$PST_URL/__identity")"
[[ "$code" == 403 ]] || die "postern answered $code, not 403, to bob's session"
BOB_PST="signed in, then 403 at $PST_URL/ (and 403 for his session cookie on /__identity)"
out="$(sign_in oauth2-proxy "$NGB_PORT" "$TMP/jar-oauth2-proxy-bob" bob)"
[[ "$out" == "403 $NGB_URL/oauth2/callback"* ]] || die "oauth2-proxy let bob through or failed otherwise (got: $out)"
[[ -z "$(jar_cookies "$TMP/jar-oauth2-proxy-bob" "$O2P_COOKIE_RE")" ]] ||
    die "oauth2-proxy set a session cookie for bob"
BOB_O2P="403 at $NGB_URL/oauth2/callback, no session cookie set"

# ------------------------------------------------------- identity checks ---
# The requests wrk sends: Host, and the session cookie for A and B.
declare -A URL=([postern]="$PST_URL/" [oauth2-proxy]="$NGB_URL/" [nginx-plain]="$NGC_URL/")
declare -A PORT=([postern]="$PST_PORT" [oauth2-proxy]="$NGB_PORT" [nginx-plain]="$NGC_PORT")
declare -A COOKIE=([postern]="$PST_COOKIE" [oauth2-proxy]="$O2P_COOKIE" [nginx-plain]="")
STACKS=(postern oauth2-proxy nginx-plain)
declare -A LABEL=([postern]="A postern" [oauth2-proxy]="B nginx+oauth2-proxy" [nginx-plain]="C nginx plain")
wrk_headers() { # $1 = stack -> header arguments (also for curl), one per line
    printf '%s\n' -H "Host: $BENCH_HOST"
    [[ -z "${COOKIE[$1]}" ]] || printf '%s\n' -H "Cookie: ${COOKIE[$1]}"
}
for s in "${STACKS[@]}"; do
    mapfile -t hdrs < <(wrk_headers "$s")
    code="$(curl_to "${PORT[$s]}" "${hdrs[@]}" -o "$TMP/identity-$s.txt" -w '%{http_code}' \
        "${URL[$s]}__identity" || true)"
    [[ "$code" == 200 ]] ||
        die "$s: /__identity with the session answered '$code', not 200: $(head -c 300 "$TMP/identity-$s.txt" 2>/dev/null)"
    # The same request without the session must not get through.
    [[ "$s" == nginx-plain ]] && continue
    code="$(curl_to "${PORT[$s]}" -H "Host: $BENCH_HOST" -o /dev/null -w '%{http_code}' "${URL[$s]}__identity" || true)"
    [[ "$code" == 401 || "$code" == 302 ]] || die "$s: /__identity without a session answered '$code', not 401/302"
done
curl -s --max-time 5 -o "$TMP/idp-jwks.json" "$ISSUER/jwks" || die "could not fetch the IdP's JWKS"
curl_to "$PST_PORT" -o "$TMP/postern-jwks.json" "$PST_URL/.well-known/postern/jwks.json" ||
    die "could not fetch Postern's JWKS"

# Verifies what the upstream received. Arguments: stack, its /__identity
# answer, JWKS file, email, issuer, audience. Prints "identity|forwarded";
# exits non-zero on any mismatch.
cat >"$TMP/check-identity.mjs" <<'JS'
import crypto from 'node:crypto';
import fs from 'node:fs';
const [stack, file, jwksFile, email, iss, aud] = process.argv.slice(2);
const got = Object.fromEntries(fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)
  .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
const fail = (m) => { console.error(`${stack}: ${m}\n${JSON.stringify(got, null, 1)}`); process.exit(1); };
function verify(jwt, alg) {
  const [h, p, s] = jwt.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  if (header.alg !== alg) fail(`alg ${header.alg}, not ${alg}`);
  const jwk = JSON.parse(fs.readFileSync(jwksFile, 'utf8')).keys.find((k) => k.kid === header.kid);
  if (!jwk) fail(`no key ${header.kid} in ${jwksFile}`);
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const data = Buffer.from(`${h}.${p}`);
  const sig = Buffer.from(s, 'base64url');
  const ok = alg === 'ES256'
    ? crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig)
    : crypto.verify('sha256', data, key, sig);
  if (!ok) fail(`bad ${alg} signature`);
  // A tampered token must fail (the check really checks).
  const bad = Buffer.from(sig); bad[bad.length - 1] ^= 1;
  const badOk = alg === 'ES256'
    ? crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, bad)
    : crypto.verify('sha256', data, key, bad);
  if (badOk) fail('a tampered signature verified');
  const c = JSON.parse(Buffer.from(p, 'base64url'));
  if (c.email !== email) fail(`token email ${c.email}, not ${email}`);
  if (c.iss !== iss) fail(`token iss ${c.iss}, not ${iss}`);
  const auds = Array.isArray(c.aud) ? c.aud : [c.aud];
  if (!auds.includes(aud)) fail(`token aud ${c.aud}, not ${aud}`);
  const now = Date.now() / 1000;
  if (!(c.exp > now)) fail('token expired');
  return `${alg} signature ok (kid ${header.kid.slice(0, 8)}...), iss=${c.iss} aud=${c.aud} sub=${c.sub} email=${c.email}, exp in ${Math.round(c.exp - now)} s`;
}
let line;
if (stack === 'postern') {
  if (!got.assertion) fail('no X-Postern-Jwt-Assertion');
  if (got.authorization || got.email || got.user) fail('unexpected identity headers');
  if (got.cookie.includes('_postern')) fail('the session cookie reached the upstream');
  line = `X-Postern-Jwt-Assertion: ${verify(got.assertion, 'ES256')}; no Cookie`;
} else if (stack === 'oauth2-proxy') {
  if (got.email !== email || !got.user) fail(`X-Auth-Request-Email ${got.email}, not ${email}`);
  if (!got.authorization.startsWith('Bearer ')) fail('no Authorization: Bearer');
  line = `X-Auth-Request-User: ${got.user}, -Email: ${got.email}; Authorization: Bearer ID token, ${verify(got.authorization.slice(7), 'RS256')}; Cookie (${got.cookie.length} bytes) passed on`;
} else {
  if (got.assertion || got.pomerium_assertion || got.authorization || got.email || got.user) fail('identity headers on the plain proxy');
  line = 'no identity (no authentication)';
}
console.log(`${line}|${got.forwarded}`);
JS
declare -A IDENTITY FORWARDED
declare -A JWKS=([postern]="$TMP/postern-jwks.json" [oauth2-proxy]="$TMP/idp-jwks.json" [nginx-plain]="")
declare -A TOKEN_ISS=([postern]="$BENCH_HOST" [oauth2-proxy]="$ISSUER" [nginx-plain]="")
declare -A TOKEN_AUD=([postern]="$BENCH_HOST" [oauth2-proxy]="oauth2-proxy" [nginx-plain]="")
for s in "${STACKS[@]}"; do
    line="$(node "$TMP/check-identity.mjs" "$s" "$TMP/identity-$s.txt" "${JWKS[$s]}" "$USER_EMAIL" \
        "${TOKEN_ISS[$s]}" "${TOKEN_AUD[$s]}")" ||
        die "$s: the upstream did not receive the expected identity (above)"
    IDENTITY[$s]="${line%|*}"
    FORWARDED[$s]="${line##*|}"
done
[[ "${FORWARDED[postern]}" == "${FORWARDED[oauth2-proxy]}" && "${FORWARDED[postern]}" == "${FORWARDED[nginx-plain]}" ]] ||
    die "X-Forwarded-* differ between the stacks: postern '${FORWARDED[postern]}', oauth2-proxy '${FORWARDED[oauth2-proxy]}', nginx '${FORWARDED[nginx-plain]}'"

# ---------------------------------------------------------------- machine ---
nginx_ver="$("$NGINX" -v 2>&1 | head -n1)"
wrk_ver="$({ wrk -v 2>&1 || true; } | head -n1)"
postern_ver="$({ "$POSTERN" --version 2>&1 || true; } | head -n1)"
o2p_ver="$({ "$O2P" --version 2>&1 || true; } | head -n1)"
oidc_ver="$(node -p "require('$OIDC_DIR/node_modules/oidc-provider/package.json').version" 2>/dev/null || echo '?')"
# "name pid N CPUs L" for a process and its children (nginx workers).
describe_cpus() { # $1 = name, $2 = pid
    local p out
    out="$1 pid $2 CPUs $(cpus_of "$2")"
    for p in $(pgrep -P "$2" || true); do out+=" (worker $p CPUs $(cpus_of "$p"))"; done
    echo "$out"
}

# ------------------------------------------------------------------- runs ---
# wrk for one stack, bounded by timeout; sets WRK_CPUS from the running wrk.
# $1 = stack, $2 = duration, $3 = output file.
WRK_CPUS="?"
run_wrk() {
    local rc=0 hdrs tpid wpid="" deadline
    mapfile -t hdrs < <(wrk_headers "$1")
    timeout --kill-after=5 $(($(duration_secs "$2") + 60)) \
        "${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency \
        "${hdrs[@]}" -s "$TMP/loopback.lua" "${URL[$1]}" >"$3" 2>&1 &
    tpid="$!"
    PIDS+=("$tpid")
    # The CPUs wrk may use, read back from the process (timeout's child).
    deadline=$((SECONDS + 2))
    while [[ -z "$wpid" ]] && ((SECONDS <= deadline)) && kill -0 "$tpid" 2>/dev/null; do
        wpid="$(pgrep -P "$tpid" -x wrk || true)"
        [[ -n "$wpid" ]] || sleep 0.05
    done
    [[ -z "$wpid" ]] || WRK_CPUS="$(cpus_of "$wpid")"
    wait "$tpid" || rc=$?
    unset 'PIDS[-1]'
    ((rc == 0)) || { cat "$3" >&2; die "wrk failed for $1 (${URL[$1]}), exit $rc"; }
}
# Requests the upstream has handled (stub_status; this request included).
upstream_requests() {
    curl -s --max-time 5 "http://127.0.0.1:$UP_PORT/__status" | awk 'NR == 3 {print $3}'
}
# CPU ticks of a stack: all its processes and their children.
stack_ticks() { # $1 = stack
    local p total=0
    for p in ${STACK_PIDS[$1]}; do total=$((total + $(proc_ticks "$p"))); done
    echo "$total"
}
declare -A STACK_PIDS=([postern]="$PST_PID" [oauth2-proxy]="$NGB_PID $O2P_PID" [nginx-plain]="$NGC_PID")

measure_bg_load

declare -A R_RPS R_P50 R_P99 R_CPU R_PCORE R_LCORE BAD SOCK REQS MISSING
for s in "${STACKS[@]}"; do BAD[$s]=0; SOCK[$s]=0; REQS[$s]=0; MISSING[$s]=0; done
ORDER=()
for ((round = 1; round <= ROUNDS; round++)); do
    order=""
    for ((i = 0; i < ${#STACKS[@]}; i++)); do
        # The first stack rotates, so no stack always runs first or last.
        s="${STACKS[$(((i + round - 1) % ${#STACKS[@]}))]}"
        order+="${order:+ }${LABEL[$s]%% *}"
        if ((WARMUP_S > 0)); then
            log "$s: warm-up $WARMUP (round $round/$ROUNDS)"
            run_wrk "$s" "$WARMUP" "$TMP/wrk-$s.warmup.txt"
        fi
        log "$s: measuring $DURATION (round $round/$ROUNDS, ${URL[$s]})"
        ticks0="$(stack_ticks "$s")"
        up0="$(upstream_requests)"
        read -r pb0 pt0 < <(core_jiffies "$PROXY_CPU")
        read -r lb0 lt0 < <(core_jiffies "$LOAD_CPU")
        run_wrk "$s" "$DURATION" "$TMP/wrk-$s.$round.txt"
        read -r pb1 pt1 < <(core_jiffies "$PROXY_CPU")
        read -r lb1 lt1 < <(core_jiffies "$LOAD_CPU")
        ticks1="$(stack_ticks "$s")"
        up1="$(upstream_requests)"
        read -r rps p50 p99 bad sock reqs <<<"$(wrk_parse "$TMP/wrk-$s.$round.txt")"
        R_RPS[$s]+="$rps " R_P50[$s]+="$p50 " R_P99[$s]+="$p99 "
        BAD[$s]=$((BAD[$s] + bad))
        SOCK[$s]=$((SOCK[$s] + sock))
        REQS[$s]=$((REQS[$s] + reqs))
        # wrk counts 3xx as success: a proxy answering 302 instead of
        # proxying shows here, as requests the upstream never saw (it may see
        # up to CONNECTIONS more: requests wrk did not wait for).
        [[ "$up0" =~ ^[0-9]+$ && "$up1" =~ ^[0-9]+$ ]] || die "could not read the upstream's request counter"
        seen=$((up1 - up0 - 1))
        ((seen >= reqs)) || MISSING[$s]=$((MISSING[$s] + reqs - seen))
        R_CPU[$s]+="$(awk -v d="$((ticks1 - ticks0))" -v hz="$CLK_TCK" -v n="$reqs" \
            'BEGIN { printf "%.2f", (n > 0 ? d / hz * 1e6 / n : 0) }') "
        R_PCORE[$s]+="$(pct "$pb0" "$pt0" "$pb1" "$pt1") "
        R_LCORE[$s]+="$(pct "$lb0" "$lt0" "$lb1" "$lt1") "
    done
    ORDER+=("$order")
done

# Each stack still holds a valid session after the runs (nothing expired or
# was refused mid-run).
for s in postern oauth2-proxy; do
    mapfile -t hdrs < <(wrk_headers "$s")
    code="$(curl_to "${PORT[$s]}" "${hdrs[@]}" -o /dev/null -w '%{http_code}' "${URL[$s]}__identity" || true)"
    [[ "$code" == 200 ]] || die "$s: the session answered $code after the runs, not 200"
done

declare -A RPS P50 P99 CPU_US
for s in "${STACKS[@]}"; do
    RPS[$s]="$(median "${R_RPS[$s]}")"
    P50[$s]="$(median "${R_P50[$s]}")"
    P99[$s]="$(median "${R_P99[$s]}")"
    CPU_US[$s]="$(median "${R_CPU[$s]}")"
done

# ----------------------------------------------------------------- report ---
echo
echo "== Signed-in requests over TLS: Postern vs nginx + oauth2-proxy vs plain nginx =="
echo "machine : $NCPU CPUs, $(cpu_model), kernel $(uname -r)"
echo "idle    : $(bg_load_line)"
echo "pinning : $PIN_DESC"
echo "cpus    : A $(describe_cpus postern "$PST_PID")"
echo "          B $(describe_cpus nginx "$NGB_PID"); $(describe_cpus oauth2-proxy "$O2P_PID")"
echo "          C $(describe_cpus nginx "$NGC_PID")"
echo "          load: $(describe_cpus upstream "$UP_PID"); $(describe_cpus idp "$IDP_PID"); wrk CPUs $WRK_CPUS"
echo "          (allowed CPUs, read from /proc/PID/status while running; all $LISTENERS listeners on 127.0.0.1)"
echo "postern : $postern_ver ($POSTERN_BUILD)"
echo "oauth2  : $o2p_ver; cookie session store, GOMAXPROCS from its CPU mask"
echo "nginx   : $nginx_ver (worker_processes 1 per instance); IdP: oidc-provider $oidc_ver (tests/support/oidc)"
echo "wrk     : $wrk_ver; $(openssl version)"
echo "load    : wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP), GET /, Host: $BENCH_HOST, body 'ok'"
echo "rounds  : $ROUNDS, stacks interleaved, first stack rotating: $(printf '%s | ' "${ORDER[@]}" | sed 's/ | $//'); figures are medians over the rounds"
echo "tls     : A $(tls_info "$PST_PORT"); B $(tls_info "$NGB_PORT"); C $(tls_info "$NGC_PORT")"
echo "session : real sign-in as alice ($USER_EMAIL) through the IdP's login form; cookie header wrk sends:"
echo "          A ${#PST_COOKIE} bytes (_postern), B ${#O2P_COOKIE} bytes ($(tr ';' '\n' <<<"$O2P_COOKIE" | awk -F= '{gsub(/ /, "", $1); printf "%s%s", (NR > 1 ? ", " : ""), $1}'))"
echo "refused : bob (bob@example.org, not on the allow lists): A $BOB_PST"
echo "          B $BOB_O2P"
echo "upstream received (one curl with wrk's exact headers before timing; signatures verified against the JWKS):"
for s in "${STACKS[@]}"; do printf '  %-21s %s\n' "${LABEL[$s]}" "${IDENTITY[$s]}"; done
echo "  all stacks            X-Forwarded-* ${FORWARDED[postern]}"
echo
printf '%-21s %8s %13s %7s %13s %7s %13s %9s %6s %6s %6s %7s %6s %6s\n' stack 'req/s' 'req/s range' \
    'p50 ms' 'p50 range' 'p99 ms' 'p99 range' requests non2xx sockerr missing 'us/req' proxy load
for s in "${STACKS[@]}"; do
    printf '%-21s %8.0f %13s %7.3f %13s %7.3f %13s %9s %6s %6s %6s %7.2f %5.0f%% %5.0f%%\n' "${LABEL[$s]}" \
        "${RPS[$s]}" "$(range "${R_RPS[$s]}")" "${P50[$s]}" "$(range "${R_P50[$s]}" %.2f)" \
        "${P99[$s]}" "$(range "${R_P99[$s]}" %.2f)" "${REQS[$s]}" \
        "${BAD[$s]}" "${SOCK[$s]}" "${MISSING[$s]}" "${CPU_US[$s]}" \
        "$(median "${R_PCORE[$s]}")" "$(median "${R_LCORE[$s]}")"
done
echo "(ranges: min-max over the rounds. non2xx: wrk's non-2xx/3xx count; sockerr: connect/read/"
echo " write/timeout errors; missing: requests wrk counted that the upstream never received"
echo " (e.g. redirects to sign-in). us/req: CPU time of the stack's processes per request"
echo " (B: nginx + oauth2-proxy). proxy/load: busy share of CPU $PROXY_CPU / CPU $LOAD_CPU. With the"
echo " load CPU near 100%, wrk + upstream cap req/s and us/req is the steadier comparison.)"
echo "per round req/s:"
for s in "${STACKS[@]}"; do printf '  %-21s %s\n' "${LABEL[$s]}" "$(awk '{for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " " : ""), $i}' <<<"${R_RPS[$s]}")"; done
echo
echo "ratios (throughput: of the median req/s, and of all requests served in all rounds;"
echo "        p50, p99, us/req: lower is better)"
ratio_line() { # $1 = label, $2 = a, $3 = b
    printf '%-34s throughput %6s (all rounds %6s)   p50 %6s   p99 %6s   us/req %6s\n' "$1" \
        "$(ratio "${RPS[$2]}" "${RPS[$3]}")" "$(ratio "${REQS[$2]}" "${REQS[$3]}")" \
        "$(ratio "${P50[$2]}" "${P50[$3]}")" "$(ratio "${P99[$2]}" "${P99[$3]}")" \
        "$(ratio "${CPU_US[$2]}" "${CPU_US[$3]}")"
}
ratio_line "A/B postern / nginx+oauth2-proxy" postern oauth2-proxy
ratio_line "A/C postern / plain nginx TLS" postern nginx-plain
goal() { # $1 = label, $2 = a, $3 = b, $4 = minimum ratio
    awk -v l="$1" -v a="${RPS[$2]}" -v b="${RPS[$3]}" -v m="$4" 'BEGIN {
        r = (b > 0 ? a / b : 0)
        printf "goal: %s >= %sx: %.2fx, %s\n", l, m, r, (r >= m ? "met" : "NOT met") }'
}
goal "Postern signed in vs nginx + oauth2-proxy, req/s" postern oauth2-proxy 3
goal "Postern signed in vs plain nginx TLS (no auth), req/s" postern nginx-plain 0.9

bad=0
for s in "${STACKS[@]}"; do
    if ((BAD[$s] + SOCK[$s] + MISSING[$s] > 0)); then
        log "ERROR: $s: ${BAD[$s]} non-2xx, ${SOCK[$s]} socket errors, ${MISSING[$s]} requests not proxied in the timed runs; its numbers are not of the signed-in path (raw: KEEP_TMP=1, $TMP/wrk-$s.*.txt)"
        bad=1
    fi
done
((bad == 0)) || exit 2
