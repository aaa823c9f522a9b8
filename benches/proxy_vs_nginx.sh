#!/usr/bin/env bash
# Postern vs nginx: reverse-proxy throughput and latency on loopback.
#
# What it measures
#   wrk -> proxy -> upstream, for four targets, with identical wrk settings:
#     nginx-http, postern-http, nginx-https, postern-https
#   The upstream is one nginx instance answering every path with the 2-byte
#   body "ok" (HTTP/1.1, keep-alive). Both proxies front that same upstream.
#
# Resource pinning (this is what makes the comparison fair)
#   The proxy under test (nginx with worker_processes 1, or Postern) runs
#   pinned to CPU ${PROXY_CPU:-0} with taskset; wrk and the upstream nginx share
#   CPU ${LOAD_CPU:-1}. Postern's tokio runtime sizes its worker pool from the
#   CPU affinity mask (available_parallelism), so pinned to one CPU it gets
#   one worker thread, like nginx's single worker. On a machine with fewer
#   than 2 CPUs (or with PIN=0) nothing is pinned and the script says so.
#
# Parity choices
#   * Both proxies route by Host/SNI: nginx only serves `bench.localhost`
#     (other Hosts get 404, other SNI names get their handshake rejected),
#     Postern has a single route `from: http(s)://bench.localhost`.
#   * Client-side and upstream-side keep-alive are effectively unlimited on
#     both (nginx keepalive_requests 100000, client and upstream side, as
#     hyper has no per-connection request limit by default); nginx keeps 64
#     idle upstream connections (= wrk connections).
#   * HTTP/1.1 only: nginx's TLS listener has http2 off; wrk speaks HTTP/1.1.
#   * Access logging: off by default (nginx `access_log off`, Postern at log
#     level warn; it logs one access line per request at info). ACCESS_LOG=on
#     runs both with their defaults instead: nginx `access_log` to a file in
#     its `combined` format, Postern at log level info with stderr to a file;
#     ACCESS_LOG=both runs every target both ways (`-log` targets) in the
#     same interleaved rounds and adds log-on / log-off ratios.
#   * Same request rewrite: Postern always sets X-Forwarded-For, -Proto and
#     -Host for the upstream (reverse proxies in front of apps are expected
#     to, and ingress-nginx does by default), so nginx is configured to set
#     the same three. Postern also keeps per-route Prometheus counters and a
#     latency histogram, which nginx has no equivalent of and does not do.
#   * Same self-signed ECDSA P-256 certificate for both, TLS 1.2/1.3 allowed;
#     the negotiated protocol and cipher of each TLS listener are printed.
#
# Name resolution
#   glibc does not resolve `*.localhost` names on every system (it does not on
#   Debian 12 without nss-myhostname), and this script must not edit
#   /etc/hosts. So wrk is given the URL https://bench.localhost:PORT/ -- which
#   makes it send SNI `bench.localhost` -- together with a tiny Lua script
#   that overrides wrk.resolve to connect to 127.0.0.1. The Lua script
#   defines no request/response hooks, so wrk keeps its static (fast)
#   request path. Every request also carries `Host: bench.localhost` (-H).
#   curl uses --resolve for the same effect.
#
# Usage
#   benches/proxy_vs_nginx.sh                 # build Postern, run all four
#   POSTERN_BIN=/path/to/postern benches/proxy_vs_nginx.sh   # skip the build
#   PGO=0 benches/proxy_vs_nginx.sh           # plain `cargo build --release`
#   SKIP_POSTERN=1 benches/proxy_vs_nginx.sh  # nginx only (no Postern needed)
#
# Postern is built the way it ships: scripts/build-release.sh, a
# profile-guided build (its header says what the training run covers).
#
# Environment knobs (defaults in brackets)
#   DURATION [10s]   wrk run length per target and round (Ns, Nm or Nh)
#   ROUNDS   [3]     interleaved rounds; medians are reported
#   WARMUP   [2s]    wrk warm-up per target, output discarded
#   THREADS  [2]     wrk -t;  CONNECTIONS [64]  wrk -c
#   PROXY_CPU [0], LOAD_CPU [1], PIN [1]  CPU pinning (see above)
#   KEEP_TMP [0]     keep the temp dir (configs, logs, raw wrk output)
#   ACCESS_LOG [off] off, on or both (see "Access logging" above)
#
# Output
#   Machine, versions, background CPU load before the runs, negotiated TLS,
#   then per target: req/s, p50 and p99 latency in ms (wrk's us/ms/s units
#   converted), requests, errors (non-2xx + socket errors), the proxy's own
#   CPU time per request (us, from /proc/PID/stat) and how busy the proxy
#   and load CPUs were. Then Postern/nginx ratios per protocol. On a 2-CPU
#   machine both cores run near 100%: req/s is then capped by wrk + upstream
#   as much as by the proxy, and CPU/req is the steadier comparison.
#   Exit status: 0 ok, 1 setup/run failure, 2 some target had errors.
#
# Everything listens on 127.0.0.1 only; all processes started here are
# stopped on exit (also on failure or Ctrl-C); every wait is bounded.

set -euo pipefail

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PIN="${PIN:-1}"
SKIP_POSTERN="${SKIP_POSTERN:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
ACCESS_LOG="${ACCESS_LOG:-off}"
case "$ACCESS_LOG" in
    off) LOG_SUFFIXES=("") ;;
    on) LOG_SUFFIXES=("-log") ;;
    both) LOG_SUFFIXES=("" "-log") ;;
    *) echo "ACCESS_LOG must be off, on or both, not '$ACCESS_LOG'" >&2; exit 1 ;;
esac
BENCH_HOST="bench.localhost"
READY_TIMEOUT=30

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup ---
PIDS=()
TMP=""
cleanup() {
    local rc=$? pid children=() deadline
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        # nginx workers outlive a SIGKILLed master: remember the children.
        if kill -0 "$pid" 2>/dev/null; then
            mapfile -t -O "${#children[@]}" children < <(pgrep -P "$pid" || true)
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + 5))
    for pid in "${PIDS[@]}" "${children[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 ]]; then
            log "kept temp dir: $TMP"
        else
            rm -rf -- "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ arguments ---
# Convert a wrk duration (10, 10s, 2m, 1h) to seconds.
duration_secs() {
    local d="$1"
    [[ "$d" =~ ^([0-9]+)([smh]?)$ ]] || die "bad duration '$d' (use e.g. 10s, 2m)"
    case "${BASH_REMATCH[2]}" in
        m) echo $((BASH_REMATCH[1] * 60)) ;;
        h) echo $((BASH_REMATCH[1] * 3600)) ;;
        *) echo "${BASH_REMATCH[1]}" ;;
    esac
}
DURATION_S="$(duration_secs "$DURATION")"
WARMUP_S="$(duration_secs "$WARMUP")"
((DURATION_S > 0)) || die "DURATION must be > 0"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be >= THREADS"

# ---------------------------------------------------------- dependencies ---
# shellcheck source=scripts/lib/shell.sh
source "$REPO_ROOT/scripts/lib/shell.sh"

find_nginx() {
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

install_deps() {
    local need=()
    [[ -n "$(find_nginx)" ]] || need+=(nginx)
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    ((${#need[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get to install them"
    log "installing: ${need[*]}"
    local pkgs=()
    for p in "${need[@]}"; do
        if [[ "$p" == nginx ]]; then pkgs+=(nginx-light); else pkgs+=("$p"); fi
    done
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    if ! as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; then
        # nginx-light is only a transitional package on newer Debian releases.
        pkgs=("${pkgs[@]/#nginx-light/nginx}")
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    fi
}

install_deps
NGINX="$(find_nginx)"
[[ -n "$NGINX" ]] || die "nginx not found after install"
for tool in wrk openssl curl ss timeout awk; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found"
done

# ---------------------------------------------------------------- pinning ---
NCPU="$(nproc)"
PROXY_PIN=()
LOAD_PIN=()
if [[ "$PIN" == 1 ]] && ((NCPU >= 2)) && command -v taskset >/dev/null 2>&1; then
    PROXY_PIN=(taskset -c "$PROXY_CPU")
    LOAD_PIN=(taskset -c "$LOAD_CPU")
    PIN_DESC="proxy on CPU $PROXY_CPU; wrk + upstream on CPU $LOAD_CPU (taskset)"
else
    PIN_DESC="NOT pinned (PIN=$PIN, nproc=$NCPU): numbers are noisier"
    log "warning: $PIN_DESC"
fi

# ------------------------------------------------------------- postern bin ---
POSTERN=""
POSTERN_BUILD="given as POSTERN_BIN"
if [[ "$SKIP_POSTERN" != 1 ]]; then
    if [[ -n "${POSTERN_BIN:-}" ]]; then
        POSTERN="$POSTERN_BIN"
    else
        command -v cargo >/dev/null 2>&1 || die "cargo not found (set POSTERN_BIN or SKIP_POSTERN=1)"
        log "building postern (scripts/build-release.sh, PGO=${PGO:-1}) in $REPO_ROOT"
        PGO="${PGO:-1}" "$REPO_ROOT/scripts/build-release.sh"
        POSTERN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/pgo/postern"
        POSTERN_BUILD="$([[ "${PGO:-1}" == 0 ]] && echo "plain release" || echo "profile-guided release")"
    fi
    [[ -x "$POSTERN" ]] || die "postern binary not executable: $POSTERN"
fi

# --------------------------------------------------------------- temp dir ---
TMP="$(mktemp -d "${TMPDIR:-/tmp}/postern-bench.XXXXXX")"
# nginx workers may run as an unprivileged user when started as root; let
# them traverse the dir (the key file itself stays 0600, the master reads it).
chmod 755 "$TMP"

# Self-signed certificate for bench.localhost.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 2 \
    -subj "/CN=$BENCH_HOST" -addext "subjectAltName=DNS:$BENCH_HOST" \
    >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "openssl req failed"; }
chmod 600 "$TMP/key.pem"

# wrk: keep the URL host (SNI + default Host) but connect to 127.0.0.1.
cat >"$TMP/loopback.lua" <<'LUA'
local resolve = wrk.resolve
wrk.resolve = function(host, service)
   resolve("127.0.0.1", service)
end
LUA

# ------------------------------------------------------------------ ports ---
free_port UP_PORT
free_port NGX_HTTP_PORT
free_port NGX_HTTPS_PORT
free_port PST_HTTP_PORT
free_port PST_HTTPS_PORT
free_port NGX_HTTP_LOG_PORT
free_port NGX_HTTPS_LOG_PORT
free_port PST_HTTP_LOG_PORT
free_port PST_HTTPS_LOG_PORT

# ------------------------------------------------------------ nginx confs ---
# Temp paths inside $TMP for every module compiled in (so no /var/lib access).
NGINX_V="$("$NGINX" -V 2>&1)"
nginx_temp_paths() {
    local dir="$1" m
    echo "client_body_temp_path $dir/body;"
    for m in proxy fastcgi uwsgi scgi; do
        [[ "$NGINX_V" == *"--without-http_${m}_module"* ]] || echo "${m}_temp_path $dir/$m;"
    done
}

nginx_main_common() { # $1 = name
    cat <<EOF
worker_processes 1;
pid $TMP/$1.pid;
error_log $TMP/$1.error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
EOF
}

# The proxying server for $BENCH_HOST on an HTTP and an HTTPS port; $3 is
# its access_log directive (nginx's default: every request, `combined`, to
# a file).
bench_server() { # $1 = http port, $2 = https port, $3 = access_log directive
    cat <<EOF
    server {
        listen 127.0.0.1:$1;
        listen 127.0.0.1:$2 ssl;   # no http2
        server_name $BENCH_HOST;
        $3
        ssl_certificate     $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What Postern always sends upstream (see "Parity choices").
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
        }
    }
EOF
}

mkdir -p "$TMP/upstream" "$TMP/nginx"
{
    nginx_main_common upstream
    cat <<EOF
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 75s;
$(nginx_temp_paths "$TMP/upstream")
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 "ok"; }
    }
}
EOF
} >"$TMP/upstream.conf"

{
    nginx_main_common nginx
    cat <<EOF
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
$(nginx_temp_paths "$TMP/nginx")

    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 100000;
    }

    # Only $BENCH_HOST is served, like Postern's single route.
    server {
        listen 127.0.0.1:$NGX_HTTP_PORT default_server;
        listen 127.0.0.1:$NGX_HTTP_LOG_PORT default_server;
        return 404;
    }
    server {
        listen 127.0.0.1:$NGX_HTTPS_PORT ssl default_server;
        listen 127.0.0.1:$NGX_HTTPS_LOG_PORT ssl default_server;
        ssl_reject_handshake on;
    }

$(bench_server "$NGX_HTTP_PORT" "$NGX_HTTPS_PORT" "access_log off;")
$(bench_server "$NGX_HTTP_LOG_PORT" "$NGX_HTTPS_LOG_PORT" "access_log $TMP/nginx.access.log combined;")
}
EOF
} >"$TMP/nginx.conf"

# ---------------------------------------------------------- process start ---
start_bg() { # $1 = log name, rest = command; appends the pid to PIDS
    local name="$1"
    shift
    "$@" >"$TMP/$name.out" 2>&1 &
    PIDS+=("$!")
}

start_nginx() { # $1 = name, $2 = pin ("proxy"|"load")
    local name="$1" pin=()
    if [[ "$2" == proxy ]]; then pin=("${PROXY_PIN[@]}"); else pin=("${LOAD_PIN[@]}"); fi
    "$NGINX" -t -q -p "$TMP/$name" -e "$TMP/$name.error.log" -c "$TMP/$name.conf" \
        >"$TMP/$name.test.out" 2>&1 ||
        { cat "$TMP/$name.test.out" "$TMP/$name.error.log" >&2 2>/dev/null || true
          die "nginx config '$name' is invalid"; }
    start_bg "$name" "${pin[@]}" "$NGINX" -p "$TMP/$name" -e "$TMP/$name.error.log" \
        -c "$TMP/$name.conf" -g 'daemon off;'
}

write_postern_conf() { # $1 = file, $2 = scheme, $3 = port
    {
        echo "address: 127.0.0.1:$3"
        if [[ "$2" == https ]]; then
            echo "certificate_file: $TMP/cert.pem"
            echo "certificate_key_file: $TMP/key.pem"
        else
            echo "insecure_server: true"
        fi
        cat <<EOF
routes:
  - from: $2://$BENCH_HOST
    to: http://127.0.0.1:$UP_PORT
    allow_public_unauthenticated_access: true
EOF
    } >"$1"
}

start_postern() { # $1 = name, $2 = scheme, $3 = port; a name ending in -log logs access
    local level=warn
    [[ "$1" == *-log ]] && level=info
    write_postern_conf "$TMP/$1.yaml" "$2" "$3"
    # Its stderr (the access log at info) goes to $TMP/$1.out.
    start_bg "$1" env -u RUST_LOG "${PROXY_PIN[@]}" "$POSTERN" serve \
        --config "$TMP/$1.yaml" --log-level "$level"
}

# Wait until URL answers "ok" through curl; bounded. $1 = label, $2 = pid,
# $3 = scheme, $4 = port, $5 = log file to show on failure.
wait_ready() {
    local label="$1" pid="$2" scheme="$3" port="$4" logf="$5" body deadline
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 2>/dev/null || true
            die "$label exited before becoming ready (log above: $logf)"
        fi
        body="$(curl -sk --max-time 2 --resolve "$BENCH_HOST:$port:127.0.0.1" \
            "$scheme://$BENCH_HOST:$port/" 2>/dev/null || true)"
        [[ "$body" == ok ]] && return 0
        sleep 0.2
    done
    tail -n 30 "$logf" >&2 2>/dev/null || true
    die "$label did not answer 'ok' on $scheme://$BENCH_HOST:$port/ within ${READY_TIMEOUT}s (last body: '${body:-}'; log: $logf)"
}

log "temp dir $TMP; upstream :$UP_PORT; nginx :$NGX_HTTP_PORT/:$NGX_HTTPS_PORT; postern :$PST_HTTP_PORT/:$PST_HTTPS_PORT"

start_nginx upstream load
UP_PID="${PIDS[-1]}"
wait_ready upstream "$UP_PID" http "$UP_PORT" "$TMP/upstream.error.log"

start_nginx nginx proxy
NGX_PID="${PIDS[-1]}"
declare -A TARGET_PORT=(
    [nginx-http]="$NGX_HTTP_PORT" [nginx-https]="$NGX_HTTPS_PORT"
    [postern-http]="$PST_HTTP_PORT" [postern-https]="$PST_HTTPS_PORT"
    [nginx-http-log]="$NGX_HTTP_LOG_PORT" [nginx-https-log]="$NGX_HTTPS_LOG_PORT"
    [postern-http-log]="$PST_HTTP_LOG_PORT" [postern-https-log]="$PST_HTTPS_LOG_PORT"
)
TARGETS=()
declare -A PROXY_PID=()
for proto in http https; do
    for sfx in "${LOG_SUFFIXES[@]}"; do
        t="nginx-$proto$sfx"
        wait_ready "$t" "$NGX_PID" "$proto" "${TARGET_PORT[$t]}" "$TMP/nginx.error.log"
        PROXY_PID[$t]="$NGX_PID"
        TARGETS+=("$t")
        [[ "$SKIP_POSTERN" == 1 ]] && continue
        t="postern-$proto$sfx"
        start_postern "$t" "$proto" "${TARGET_PORT[$t]}"
        PROXY_PID[$t]="${PIDS[-1]}"
        wait_ready "$t" "${PIDS[-1]}" "$proto" "${TARGET_PORT[$t]}" "$TMP/$t.out"
        TARGETS+=("$t")
    done
done

target_url() { # $1 = target, e.g. postern-https-log
    local proto="${1#*-}"
    echo "${proto%-log}://$BENCH_HOST:${TARGET_PORT[$1]}/"
}

# ---------------------------------------------------------------- machine ---
cpu_model="$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
[[ -n "$cpu_model" ]] || cpu_model="$(lscpu 2>/dev/null | awk -F': *' '/Model name/ {print $2; exit}' || true)"
nginx_ver="$("$NGINX" -v 2>&1 | head -n1)"
wrk_ver="$({ wrk -v 2>&1 || true; } | head -n1)"
postern_ver="(skipped)"
if [[ -n "$POSTERN" ]]; then
    postern_ver="$({ "$POSTERN" --version 2>&1 || true; } | head -n1)"
fi

tls_info() { # $1 = port -> "TLSv1.3 TLS_AES_256_GCM_SHA384"
    timeout 5 openssl s_client -connect "127.0.0.1:$1" -servername "$BENCH_HOST" \
        </dev/null 2>/dev/null |
        awk '/^New,/ {sub(",$", "", $2); print $2, $NF; exit}' || true
}

# ------------------------------------------------------------------- runs ---
run_wrk() { # $1 = target, $2 = duration, $3 = output file
    local url rc=0
    url="$(target_url "$1")"
    # In the background + wait, so that a signal interrupts us right away
    # (cleanup then stops wrk too) instead of after the run.
    timeout --kill-after=5 $(( $(duration_secs "$2") + 60 )) \
        "${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency \
        -H "Host: $BENCH_HOST" -s "$TMP/loopback.lua" "$url" >"$3" 2>&1 &
    PIDS+=("$!")
    wait "$!" || rc=$?
    unset 'PIDS[-1]'
    ((rc == 0)) || { cat "$3" >&2; die "wrk failed for $1 ($url), exit $rc"; }
}

# wrk time values ("812.00us", "1.23ms", "2.01s", "1.00m") -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (match(v, /^[0-9.]+/) == 0) { print "NaN"; exit }
        n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
        if (u == "us") f = 0.001; else if (u == "ms") f = 1;
        else if (u == "s") f = 1000; else if (u == "m") f = 60000;
        else if (u == "h") f = 3600000; else { print "NaN"; exit }
        printf "%.3f", n * f
    }'
}

# Parse one wrk output: prints "rps p50_ms p99_ms errors requests".
parse_wrk() {
    local f="$1" rps p50 p99 errs reqs
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$f")"
    p50="$(awk '$1 == "50%" {print $2}' "$f")"
    p99="$(awk '$1 == "99%" {print $2}' "$f")"
    reqs="$(awk '/requests in/ {print $1}' "$f")"
    # Non-2xx/3xx responses plus socket errors (connect/read/write/timeout).
    errs="$(awk '
        /Non-2xx or 3xx responses:/ {e += $NF}
        /Socket errors:/ {gsub(",", ""); e += $4 + $6 + $8 + $10}
        END {print e + 0}' "$f")"
    [[ -n "$rps" && -n "$p50" && -n "$p99" && -n "$reqs" ]] ||
        { cat "$f" >&2; die "could not parse wrk output $f"; }
    echo "$rps $(to_ms "$p50") $(to_ms "$p99") $errs $reqs"
}

# CPU time (user+system, clock ticks) of a proxy: the process and its
# direct children (nginx master + worker; Postern is one process, all threads).
CLK_TCK="$(getconf CLK_TCK)"
proc_ticks() {
    local p total=0 t kids=()
    mapfile -t kids < <(pgrep -P "$1" || true)
    for p in "$1" "${kids[@]}"; do
        # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
        t="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || true)"
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
# "busy total" jiffies of one CPU from /proc/stat.
core_jiffies() {
    awk -v c="cpu$1" '$1 == c {b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6}' /proc/stat
}
pct() { awk -v b0="$1" -v t0="$2" -v b1="$3" -v t1="$4" \
    'BEGIN { printf "%.0f", (t1 > t0 ? 100 * (b1 - b0) / (t1 - t0) : 0) }'; }

# Anything else burning CPU (a compile, another benchmark) skews the numbers:
# measure the background load over 1 s before the runs and report it.
all_jiffies() { awk '$1 == "cpu" {b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6}' /proc/stat; }
read -r ab0 at0 < <(all_jiffies)
sleep 1
read -r ab1 at1 < <(all_jiffies)
BG_LOAD="$(pct "$ab0" "$at0" "$ab1" "$at1")"
if ((BG_LOAD > 10)); then
    log "warning: the machine is ${BG_LOAD}% busy before the runs; numbers will be skewed"
fi

# Rounds interleave the targets (nginx, postern, nginx, postern, ...) so a
# slow phase of a shared VM hits both; each figure reported is the median
# over the rounds, and req/s also shows its range.
declare -A R_RPS R_P50 R_P99 R_CPU R_PCORE R_LCORE RPS P50 P99 ERRS REQS CPU_US PROXY_CORE LOAD_CORE RPS_RANGE
for t in "${TARGETS[@]}"; do ERRS[$t]=0; REQS[$t]=0; done
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${TARGETS[@]}"; do
        if ((WARMUP_S > 0)); then
            log "$t: warm-up $WARMUP (round $round/$ROUNDS)"
            run_wrk "$t" "$WARMUP" "$TMP/wrk-$t.warmup.txt"
        fi
        log "$t: measuring $DURATION (round $round/$ROUNDS, $(target_url "$t"))"
        ticks0="$(proc_ticks "${PROXY_PID[$t]}")"
        read -r pb0 pt0 < <(core_jiffies "$PROXY_CPU")
        read -r lb0 lt0 < <(core_jiffies "$LOAD_CPU")
        run_wrk "$t" "$DURATION" "$TMP/wrk-$t.$round.txt"
        ticks1="$(proc_ticks "${PROXY_PID[$t]}")"
        read -r pb1 pt1 < <(core_jiffies "$PROXY_CPU")
        read -r lb1 lt1 < <(core_jiffies "$LOAD_CPU")
        read -r rps p50 p99 errs reqs <<<"$(parse_wrk "$TMP/wrk-$t.$round.txt")"
        R_RPS[$t]+="$rps "
        R_P50[$t]+="$p50 "
        R_P99[$t]+="$p99 "
        ERRS[$t]=$((ERRS[$t] + errs))
        REQS[$t]=$((REQS[$t] + reqs))
        R_CPU[$t]+="$(awk -v d="$((ticks1 - ticks0))" -v hz="$CLK_TCK" -v n="$reqs" \
            'BEGIN { printf "%.2f", (n > 0 ? d / hz * 1e6 / n : 0) }') "
        R_PCORE[$t]+="$(pct "$pb0" "$pt0" "$pb1" "$pt1") "
        R_LCORE[$t]+="$(pct "$lb0" "$lt0" "$lb1" "$lt1") "
    done
done

median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for t in "${TARGETS[@]}"; do
    RPS[$t]="$(median "${R_RPS[$t]}")"
    P50[$t]="$(median "${R_P50[$t]}")"
    P99[$t]="$(median "${R_P99[$t]}")"
    CPU_US[$t]="$(printf '%.2f' "$(median "${R_CPU[$t]}")")"
    RPS_RANGE[$t]="$(tr ' ' '\n' <<<"${R_RPS[$t]}" | awk 'NF' | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f-%.0f", lo, hi}')"
    if ((${#PROXY_PIN[@]} > 0)); then
        PROXY_CORE[$t]="$(printf '%.0f' "$(median "${R_PCORE[$t]}")")%"
        LOAD_CORE[$t]="$(printf '%.0f' "$(median "${R_LCORE[$t]}")")%"
    else
        PROXY_CORE[$t]="-"
        LOAD_CORE[$t]="-"
    fi
done

# ----------------------------------------------------------------- report ---
echo
echo "== Postern vs nginx reverse proxy =="
echo "machine : $NCPU CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r)"
echo "pinning : $PIN_DESC"
echo "nginx   : $nginx_ver (proxy: worker_processes 1, upstream keepalive 64)"
echo "wrk     : $wrk_ver"
echo "postern : $postern_ver ($POSTERN_BUILD)"
echo "openssl : $(openssl version)"
echo "idle    : background CPU load before the runs: ${BG_LOAD}% of all CPUs$( ((BG_LOAD > 10)) && echo '  <-- NOT idle, numbers skewed')"
echo "load    : wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (warm-up $WARMUP), Host: $BENCH_HOST, body 'ok'"
echo "rounds  : $ROUNDS, targets interleaved; figures are medians over the rounds"
echo "tls     : nginx $(tls_info "$NGX_HTTPS_PORT")$([[ "$SKIP_POSTERN" == 1 ]] || echo "; postern $(tls_info "$PST_HTTPS_PORT")")"
echo
printf '%-14s %11s %14s %8s %8s %10s %7s %12s %11s %10s\n' target 'req/s' 'req/s range' 'p50 ms' 'p99 ms' \
    requests errors 'proxy us/req' 'proxy core' 'load core'
for t in "${TARGETS[@]}"; do
    printf '%-14s %11.1f %14s %8.3f %8.3f %10s %7s %12s %11s %10s\n' \
        "$t" "${RPS[$t]}" "${RPS_RANGE[$t]}" "${P50[$t]}" "${P99[$t]}" "${REQS[$t]}" "${ERRS[$t]}" \
        "${CPU_US[$t]}" "${PROXY_CORE[$t]}" "${LOAD_CORE[$t]}"
done
echo "(proxy us/req: the proxy's own CPU time per request; proxy/load core:"
echo " busy share of CPU $PROXY_CPU / CPU $LOAD_CPU during the run. When the load core"
echo " is ~100%, wrk + upstream cap req/s and us/req is the fairer comparison.)"

if [[ "$SKIP_POSTERN" != 1 ]]; then
    echo
    echo "Postern / nginx  (throughput: higher is better; p99, CPU/req: lower is better)"
    echo "(throughput: ratio of the medians; all rounds: of the requests served in all rounds,"
    echo " which every target ran for the same time)"
    compare() { # $1 = label, $2 = target a, $3 = target b: a / b
        awk -v p="$1" -v pr="${RPS[$2]}" -v nr="${RPS[$3]}" \
            -v p9="${P99[$2]}" -v n9="${P99[$3]}" \
            -v pc="${CPU_US[$2]}" -v nc="${CPU_US[$3]}" \
            -v pq="${REQS[$2]}" -v nq="${REQS[$3]}" 'BEGIN {
            printf "%-10s throughput %6.2fx (all rounds %.2fx)   p99 %6.2fx   CPU/req %6.2fx\n", p,
                (nr > 0 ? pr / nr : 0), (nq > 0 ? pq / nq : 0), (n9 > 0 ? p9 / n9 : 0), (nc > 0 ? pc / nc : 0)
        }'
    }
    for proto in http https; do
        for sfx in "${LOG_SUFFIXES[@]}"; do
            compare "$proto$sfx" "postern-$proto$sfx" "nginx-$proto$sfx"
        done
    done
    if [[ "$ACCESS_LOG" == both ]]; then
        echo
        echo "Access log on / off, same proxy (goal for Postern: throughput >= 0.95x)"
        for proxy in postern nginx; do
            for proto in http https; do
                compare "$proxy-$proto" "$proxy-$proto-log" "$proxy-$proto"
            done
        done
        # The lines really were written (not dropped or filtered).
        for t in postern-http-log postern-https-log; do
            echo "$t: $(grep -c 'postern::access' "$TMP/$t.out" || true) access log lines on stderr"
        done
        echo "nginx: $(wc -l <"$TMP/nginx.access.log") access log lines"
    fi
fi

bad=0
for t in "${TARGETS[@]}"; do
    if [[ "${ERRS[$t]}" != 0 ]]; then
        log "warning: $t had ${ERRS[$t]} non-2xx responses or socket errors; its numbers are suspect (raw: $TMP/wrk-$t.*.txt, KEEP_TMP=1 to keep)"
        bad=1
    fi
done
((bad == 0)) || exit 2
