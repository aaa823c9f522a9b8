#!/usr/bin/env bash
# Builds the release binary the way Postern ships it: profile-guided.
#
#   scripts/build-release.sh          -> target/pgo/postern (PGO build)
#   PGO=0 scripts/build-release.sh    -> target/pgo/postern (plain release build)
#
# Steps
#   1. An instrumented release build (-Cprofile-generate).
#   2. A training run on loopback: two instrumented Postern processes, one
#      plain-HTTP (`origin`, answering `response:` routes and proxying to
#      itself) and one HTTPS with a generated certificate (`edge`, proxying
#      to the first, access log on), loaded with wrk (HTTP/1.1) and h2load
#      (HTTP/2) through the paths users run: proxied GET and POST, HTTPS on
#      HTTP/1.1 and HTTP/2, signed-in requests (a session cookie minted by
#      examples/session_token.rs, policy, identity assertion), CORS
#      preflights and CORS-decorated responses, direct responses, 401s for a
#      route that needs sign-in, unknown hosts.
#   3. llvm-profdata merges the profiles (rustup's llvm-tools component, whose
#      LLVM matches rustc's; installed with rustup if missing).
#   4. The optimized build (-Cprofile-use), copied to target/pgo/postern.
#
# Why: with the profile LLVM lays out the hot path together and inlines by
# measured frequency. On the 2-core bench machine this took Postern's user
# CPU per proxied request from about 3.1 us to about 2.4 us (see README).
# Signed-in requests went from 5.2-5.6 us to 4.2-4.6 us.
# Code the training does not reach (the sign-in redirects and callback, the
# Kubernetes watcher, config reloads) is compiled as cold, that is for size,
# and can run slower than in a plain build: signed-in requests took 6.4 us
# before they were part of the training. A new per-request path needs a
# load below.
#
# Knobs: PGO [1], TRAIN_SECS [4] per load, KEEP_TMP [0].
# Needs cargo/rustc (rustup for llvm-tools), wrk, h2load (Debian
# nghttp2-client) and curl; installs the last three with apt-get if missing.
# Everything listens on 127.0.0.1 only; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

PGO="${PGO:-1}"
TRAIN_SECS="${TRAIN_SECS:-4}"
KEEP_TMP="${KEEP_TMP:-0}"
TARGET_ROOT="$(realpath -m "${CARGO_TARGET_DIR:-$REPO/target}")"
OUT_DIR="$TARGET_ROOT/pgo"
OUT="$OUT_DIR/postern"
HOST_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"

log() { printf '[build-release] %s\n' "$*" >&2; }
die() { printf '[build-release] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$OUT_DIR"

if [[ "$PGO" == 0 ]]; then
    log "PGO=0: plain release build"
    cargo build --release --bin postern
    cp "$TARGET_ROOT/release/postern" "$OUT"
    log "built $OUT (no profile)"
    exit 0
fi

# ---------------------------------------------------------------- tools ---
# shellcheck source=scripts/lib/shell.sh
source "$REPO/scripts/lib/shell.sh"
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST_TRIPLE/bin/llvm-profdata"
if [[ ! -x "$PROFDATA" ]]; then
    command -v rustup >/dev/null 2>&1 ||
        die "no $PROFDATA and no rustup to add llvm-tools (or build with PGO=0)"
    log "adding rustup component llvm-tools (llvm-profdata matching rustc's LLVM)"
    rustup component add llvm-tools
    [[ -x "$PROFDATA" ]] || die "llvm-tools installed but $PROFDATA is missing"
fi

# --target makes RUSTFLAGS apply to Postern and its dependencies only, not
# to build scripts and proc macros (which would write profiles of their own).
cargo_build() { # $1 = target dir, $2 = extra rustflags
    CARGO_TARGET_DIR="$1" RUSTFLAGS="${RUSTFLAGS:-} $2" \
        cargo build --release --bin postern --target "$HOST_TRIPLE"
}

# ------------------------------------------------------ 1. instrumented ---
PROFILES="$OUT_DIR/profiles"
rm -rf "$PROFILES"
mkdir -p "$PROFILES"
log "1/4 instrumented build"
cargo_build "$OUT_DIR/instrumented" "-Cprofile-generate=$PROFILES"
INSTRUMENTED="$OUT_DIR/instrumented/$HOST_TRIPLE/release/postern"
# A plain debug build, apart: building an example turns on dev-dependency
# features of shared crates, and code compiled with other features does not
# match the profile (measured: in one build, a training run that built the
# example with Postern left the proxy path as slow as with no profile).
cargo build --example session_token
SESSION_TOKEN="$TARGET_ROOT/debug/examples/session_token"

# ----------------------------------------------------------- 2. training ---
TMP="$(mktemp -d "${TMPDIR:-/tmp}/postern-pgo.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf -- "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port ORIGIN_PORT
free_port EDGE_PORT

ORIGIN="http://127.0.0.1:$ORIGIN_PORT"
cat >"$TMP/origin.yaml" <<EOF
address: 127.0.0.1:$ORIGIN_PORT
insecure_server: true
cookie_secret: $(head -c32 /dev/urandom | base64)
routes:
  - from: http://origin.pgo.localhost
    response: { status: 200, content_type: text/plain, body: "ok" }
    allow_public_unauthenticated_access: true
  - from: http://proxied.pgo.localhost
    to: $ORIGIN
    host_rewrite: origin.pgo.localhost
    set_response_headers: { X-Frame-Options: DENY }
    allow_public_unauthenticated_access: true
  - from: http://api.pgo.localhost
    to: $ORIGIN
    host_rewrite: origin.pgo.localhost
    allow_public_unauthenticated_access: true
    cors:
      allow_origins: [https://app.pgo.localhost]
      allow_methods: [GET, POST]
      allow_headers: [Authorization]
      allow_credentials: true
  - from: http://signed-in.pgo.localhost
    to: $ORIGIN
    host_rewrite: origin.pgo.localhost
    allow_any_authenticated_user: true
    pass_identity_headers: true
  - from: http://private.pgo.localhost
    response: { body: "signed-in users only" }
EOF
SESSION="$("$SESSION_TOKEN" "$TMP/origin.yaml")" ||
    die "examples/session_token could not mint a session for the training config"
cat >"$TMP/edge.yaml" <<EOF
address: 127.0.0.1:$EDGE_PORT
routes:
  - from: https://edge.pgo.localhost
    to: $ORIGIN
    host_rewrite: origin.pgo.localhost
    allow_public_unauthenticated_access: true
EOF

start() { # $1 = name, $2 = log level
    LLVM_PROFILE_FILE="$PROFILES/postern-%p-%m.profraw" "$INSTRUMENTED" --log-level "$2" \
        serve --config "$TMP/$1.yaml" --shutdown-grace 5s >"$TMP/$1.log" 2>&1 </dev/null &
    PIDS+=($!)
}
wait_ready() { # curl args...
    local i
    for ((i = 0; i < 300; i++)); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" || true)" == 200 ]] && return 0
        sleep 0.1
    done
    die "Postern did not answer $* within 30 s"
}
EDGE_URL="https://edge.pgo.localhost:$EDGE_PORT/"

log "2/4 training run (${TRAIN_SECS}s per load)"
start origin warn
start edge info
wait_ready -H 'Host: origin.pgo.localhost' "$ORIGIN/"
wait_ready -k --resolve "edge.pgo.localhost:$EDGE_PORT:127.0.0.1" "$EDGE_URL"

cat >"$TMP/loopback.lua" <<'LUA'
local resolve = wrk.resolve
wrk.resolve = function(host, service) resolve("127.0.0.1", service) end
LUA
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
cat >"$TMP/preflight.lua" <<'LUA'
wrk.method = "OPTIONS"
wrk.headers["Origin"] = "https://app.pgo.localhost"
wrk.headers["Access-Control-Request-Method"] = "POST"
wrk.headers["Access-Control-Request-Headers"] = "authorization"
LUA

load() { # $1 = what, then wrk arguments; fails if wrk made no requests
    local out n
    out="$(wrk -t1 -c16 -d"${TRAIN_SECS}s" "${@:2}" 2>&1)" || die "wrk failed ($1): $out"
    n="$(awk '/requests in/{print $1}' <<<"$out")"
    [[ "${n:-0}" -gt 0 ]] || die "training load '$1' made no requests: $out"
    LAST_LOAD="$out"
    log "  $1: $n requests"
}
load_2xx() { # as load, and every response must be 2xx (the path really ran)
    load "$@"
    [[ "$LAST_LOAD" != *"Non-2xx"* ]] || die "training load '$1' got non-2xx answers: $LAST_LOAD"
}
load_2xx "proxied GET" -H 'Host: proxied.pgo.localhost' "$ORIGIN/a/b?c=d"
load_2xx "proxied POST" -s "$TMP/post.lua" -H 'Host: proxied.pgo.localhost' "$ORIGIN/upload"
load_2xx "signed-in GET" -H 'Host: signed-in.pgo.localhost' -H "Cookie: theme=dark; _postern=$SESSION" "$ORIGIN/"
load_2xx "CORS preflight" -s "$TMP/preflight.lua" -H 'Host: api.pgo.localhost' "$ORIGIN/items"
load_2xx "CORS GET" -H 'Host: api.pgo.localhost' -H 'Origin: https://app.pgo.localhost' "$ORIGIN/items"
load "401, JSON" -H 'Host: private.pgo.localhost' -H 'Accept: application/json' "$ORIGIN/"
load "401, navigation" -H 'Host: private.pgo.localhost' -H 'Sec-Fetch-Mode: navigate' \
    -H 'Accept: text/html' "$ORIGIN/"
load "unknown host" -H 'Host: nowhere.pgo.localhost' "$ORIGIN/"
load_2xx "HTTPS, HTTP/1.1" -s "$TMP/loopback.lua" "$EDGE_URL"
h2out="$(h2load -c16 -m10 -D "$TRAIN_SECS" --connect-to="127.0.0.1:$EDGE_PORT" "$EDGE_URL" 2>&1)" ||
    die "h2load failed: $h2out"
h2ok="$(awk '/^status codes:/{print $3}' <<<"$h2out")"
[[ "${h2ok:-0}" -gt 0 ]] || die "HTTP/2 training load got no 2xx: $h2out"
log "  HTTPS, HTTP/2: $h2ok requests"

# SIGTERM: Postern drains and exits, which writes the profiles.
for pid in "${PIDS[@]}"; do kill -TERM "$pid"; done
for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    wait "$pid" || die "instrumented Postern (pid $pid) exited with an error; see KEEP_TMP=1 logs"
done
PIDS=()

# --------------------------------------------------------------- 3. merge ---
log "3/4 merging $(find "$PROFILES" -name '*.profraw' | wc -l) profiles"
# The profile's hash is in its file name, so a new profile changes RUSTFLAGS
# and cargo rebuilds every crate with it (cargo does not hash flag targets).
"$PROFDATA" merge -o "$TMP/merged.profdata" "$PROFILES"
sum="$(sha256sum "$TMP/merged.profdata" | cut -c1-16)"
find "$OUT_DIR" -maxdepth 1 -name 'postern-*.profdata' -delete
PROFILE="$OUT_DIR/postern-$sum.profdata"
mv "$TMP/merged.profdata" "$PROFILE"

# ------------------------------------------------------------ 4. optimize ---
log "4/4 optimized build with $PROFILE"
cargo_build "$OUT_DIR/optimized" "-Cprofile-use=$PROFILE -Cllvm-args=-pgo-warn-missing-function=false"
cp "$OUT_DIR/optimized/$HOST_TRIPLE/release/postern" "$OUT"
log "built $OUT (profile-guided)"
