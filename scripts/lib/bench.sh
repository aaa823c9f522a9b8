# shellcheck shell=bash
# shellcheck disable=SC2034  # variables set here are read by the sourcing script
# Shared by benches/h2_vs_nginx.sh, benches/many_connections.sh and
# benches/signed_in_vs_oauth2_proxy.sh (the same structure as
# benches/proxy_vs_nginx.sh, which predates this file and keeps its own
# copy). Sourced after the sourcing script has set:
#   BENCH_TAG   prefix of log lines, e.g. "h2-bench"
#   REPO_ROOT   repository root
#   KEEP_TMP    1 keeps the temp dir
#   KEEP_TMP_ON_ERROR  1 keeps it when the script exits with status 1 (optional)
# It defines log/die, the cleanup trap (PIDS, TMP), dependency install,
# pinning, the Postern binary, the certificate, nginx config pieces, process
# start and readiness, wrk helpers, CPU/RSS accounting and medians.
#
# Everything listens on 127.0.0.1; every process appended to PIDS is stopped
# on exit (also on failure or Ctrl-C); every wait is bounded.

log() { printf '[%s] %s\n' "$BENCH_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BENCH_TAG" "$*" >&2; exit 1; }

# shellcheck source=scripts/lib/shell.sh
source "$REPO_ROOT/scripts/lib/shell.sh"

BENCH_HOST="${BENCH_HOST:-bench.localhost}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"

# ---------------------------------------------------------------- cleanup ---
PIDS=()
TMP=""
# Stops one process (and, for nginx, the workers that outlive a SIGKILLed
# master): TERM, up to 5 s, then KILL. Bounded.
stop_pid() {
    local pid="$1" kids=() p deadline
    kill -0 "$pid" 2>/dev/null || return 0
    mapfile -t kids < <(pgrep -P "$pid" || true)
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    for p in "$pid" "${kids[@]}"; do
        while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
}
# Removes a pid from PIDS (after stop_pid, for processes stopped mid-run).
forget_pid() {
    local i
    for i in "${!PIDS[@]}"; do [[ "${PIDS[$i]}" == "$1" ]] && unset 'PIDS[i]'; done
    PIDS=("${PIDS[@]}")
}
bench_cleanup() {
    local rc=$? pid children=() deadline
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
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
        if [[ "${KEEP_TMP:-0}" == 1 || ("${KEEP_TMP_ON_ERROR:-0}" == 1 && "$rc" == 1) ]]; then
            log "kept temp dir: $TMP"
        else
            rm -rf -- "$TMP"
        fi
    fi
    exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background, in PIDS while it runs, and waits for it
# (so a signal interrupts the script at once and cleanup stops the command).
# $1 = output file, rest = command. Returns the command's exit status.
run_fg() {
    local out="$1" rc=0
    shift
    "$@" >"$out" 2>&1 &
    PIDS+=("$!")
    wait "$!" || rc=$?
    unset 'PIDS[-1]'
    return "$rc"
}

# ------------------------------------------------------------ arguments ---
# A duration (10, 10s, 2m, 1h) in seconds.
duration_secs() {
    local d="$1"
    [[ "$d" =~ ^([0-9]+)([smh]?)$ ]] || die "bad duration '$d' (use e.g. 10s, 2m)"
    case "${BASH_REMATCH[2]}" in
        m) echo $((BASH_REMATCH[1] * 60)) ;;
        h) echo $((BASH_REMATCH[1] * 3600)) ;;
        *) echo "${BASH_REMATCH[1]}" ;;
    esac
}
positive_int() { # $1 = name, $2 = value
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer (got '$2')"
}

# ---------------------------------------------------------- dependencies ---
find_nginx() {
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

# install_deps "command:debian-package" ...: installs the packages of the
# commands that are missing (nginx as nginx-light, falling back to nginx).
install_deps() {
    local pair cmd pkg pkgs=()
    for pair in "$@"; do
        cmd="${pair%%:*}" pkg="${pair#*:}"
        if [[ "$cmd" == nginx ]]; then
            [[ -n "$(find_nginx)" ]] || pkgs+=(nginx-light)
        else
            command -v "$cmd" >/dev/null 2>&1 || pkgs+=("$pkg")
        fi
    done
    ((${#pkgs[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing ${pkgs[*]} and no apt-get to install them"
    log "installing: ${pkgs[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    if ! as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; then
        # nginx-light is only a transitional package on newer Debian releases.
        pkgs=("${pkgs[@]/#nginx-light/nginx}")
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    fi
}

require_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found"
    done
}

# ---------------------------------------------------------------- pinning ---
# Sets PROXY_PIN / LOAD_PIN (taskset prefixes, empty when not pinned) and
# PIN_DESC. $1 = what runs on the load CPU (for the description).
setup_pinning() {
    NCPU="$(nproc)"
    PROXY_PIN=()
    LOAD_PIN=()
    if [[ "${PIN:-1}" == 1 ]] && ((NCPU >= 2)) && command -v taskset >/dev/null 2>&1; then
        PROXY_PIN=(taskset -c "$PROXY_CPU")
        LOAD_PIN=(taskset -c "$LOAD_CPU")
        PIN_DESC="proxy on CPU $PROXY_CPU; $1 on CPU $LOAD_CPU (taskset)"
    else
        PIN_DESC="NOT pinned (PIN=${PIN:-1}, nproc=$NCPU): numbers are noisier"
        log "warning: $PIN_DESC"
    fi
}

# The CPUs a running process may use, e.g. "0" or "0-1" (from its mask).
cpus_of() { awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo "?"; }

# ------------------------------------------------------------- postern bin ---
# Sets POSTERN and POSTERN_BUILD: POSTERN_BIN if set; else the plain release
# binary target/release/postern if it exists (BUILD=1 rebuilds it first);
# else `cargo build --release --bin postern`.
find_postern() {
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    if [[ -n "${POSTERN_BIN:-}" ]]; then
        POSTERN="$POSTERN_BIN"
        POSTERN_BUILD="given as POSTERN_BIN"
    else
        POSTERN="$target/release/postern"
        if [[ "${BUILD:-0}" == 1 || ! -x "$POSTERN" ]]; then
            command -v cargo >/dev/null 2>&1 || die "cargo not found (set POSTERN_BIN)"
            log "building postern: cargo build --release --bin postern (in $REPO_ROOT; waits for cargo's lock)"
            (cd "$REPO_ROOT" && cargo build --release --bin postern) >&2 ||
                die "cargo build failed"
            POSTERN_BUILD="plain release, built now"
        else
            POSTERN_BUILD="plain release, existing binary from $(date -r "$POSTERN" '+%F %T') (BUILD=1 rebuilds)"
        fi
    fi
    [[ -x "$POSTERN" ]] || die "postern binary not executable: $POSTERN"
}

# --------------------------------------------------------------- temp dir ---
# Creates TMP and a self-signed ECDSA P-256 certificate for BENCH_HOST in it
# (CERT_EXTRA_NAMES, optional: more DNS names for its subjectAltName,
# space-separated).
make_tmp_and_cert() {
    local san="DNS:$BENCH_HOST" name
    for name in ${CERT_EXTRA_NAMES:-}; do san+=",DNS:$name"; done
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/postern-$BENCH_TAG.XXXXXX")"
    # nginx workers may run as an unprivileged user when started as root; let
    # them traverse the dir (the key file stays 0600, the master reads it).
    chmod 755 "$TMP"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 2 \
        -subj "/CN=$BENCH_HOST" -addext "subjectAltName=$san" \
        >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "openssl req failed"; }
    chmod 600 "$TMP/key.pem"
}

# --------------------------------------------------------------- nginx ---
nginx_init() {
    NGINX="$(find_nginx)"
    [[ -n "$NGINX" ]] || die "nginx not found after install"
    NGINX_V="$("$NGINX" -V 2>&1)"
    NGINX_VERSION="$(sed -n 's|^nginx version: nginx/\([0-9.]*\).*|\1|p' <<<"$NGINX_V" | head -n1)"
}

# True if nginx is at least version $1 (e.g. 1.25.1).
nginx_at_least() {
    [[ "$(printf '%s\n%s\n' "$1" "${NGINX_VERSION:-0}" | sort -V | head -n1)" == "$1" ]]
}

# Temp paths inside $1 for every module compiled in (so no /var/lib access).
nginx_temp_paths() {
    local dir="$1" m
    echo "client_body_temp_path $dir/body;"
    for m in proxy fastcgi uwsgi scgi; do
        [[ "$NGINX_V" == *"--without-http_${m}_module"* ]] || echo "${m}_temp_path $dir/$m;"
    done
}

# Main context. $1 = name, $2 = worker_connections, $3 = worker_rlimit_nofile.
nginx_main_common() {
    cat <<EOF
worker_processes 1;
pid $TMP/$1.pid;
error_log $TMP/$1.error.log warn;
worker_rlimit_nofile ${3:-16384};
events { worker_connections ${2:-8192}; }
EOF
}

# The upstream: one nginx answering "ok" on every path, HTTP/1.1 keep-alive,
# and /__forwarded with the X-Forwarded-* headers it received (parity check).
# $3 (optional): more lines for its server block, e.g. locations.
write_upstream_conf() { # $1 = port, $2 = worker_connections, $3 = extra
    mkdir -p "$TMP/upstream"
    {
        nginx_main_common upstream "${2:-8192}" "$((${2:-8192} * 2 + 1024))"
        cat <<EOF
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 3600s;
$(nginx_temp_paths "$TMP/upstream")
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / { return 200 "ok"; }
        location = /__forwarded {
            return 200 "for=\$http_x_forwarded_for proto=\$http_x_forwarded_proto host=\$http_x_forwarded_host";
        }
${3:-}
    }
}
EOF
    } >"$TMP/upstream.conf"
}

# start_bg NAME CMD...: output to $TMP/NAME.out; the pid is appended to PIDS.
start_bg() {
    local name="$1"
    shift
    "$@" >"$TMP/$name.out" 2>&1 &
    PIDS+=("$!")
}

start_nginx() { # $1 = name (config $TMP/$1.conf), $2 = pin ("proxy"|"load")
    local name="$1" pin=()
    if [[ "$2" == proxy ]]; then pin=("${PROXY_PIN[@]}"); else pin=("${LOAD_PIN[@]}"); fi
    mkdir -p "$TMP/$name"
    "$NGINX" -t -q -p "$TMP/$name" -e "$TMP/$name.error.log" -c "$TMP/$name.conf" \
        >"$TMP/$name.test.out" 2>&1 ||
        { cat "$TMP/$name.test.out" "$TMP/$name.error.log" >&2 2>/dev/null || true
          die "nginx config '$name' is invalid"; }
    start_bg "$name" "${pin[@]}" "$NGINX" -p "$TMP/$name" -e "$TMP/$name.error.log" \
        -c "$TMP/$name.conf" -g 'daemon off;'
}

# The postern process started with its config $TMP/$1.yaml.
start_postern() { # $1 = name
    start_bg "$1" env RUST_LOG=warn "${PROXY_PIN[@]}" "$POSTERN" serve \
        --config "$TMP/$1.yaml" --log-level warn
}

# curl through a proxy to BENCH_HOST (connecting to 127.0.0.1).
# $1 = scheme, $2 = port, $3 = path, rest = extra curl options.
curl_bench() {
    local scheme="$1" port="$2" path="$3"
    shift 3
    curl -sk --max-time 2 --resolve "$BENCH_HOST:$port:127.0.0.1" "$@" \
        "$scheme://$BENCH_HOST:$port$path" 2>/dev/null || true
}

# Waits until / answers "ok"; bounded. $1 = label, $2 = pid, $3 = scheme,
# $4 = port, $5 = log file to show on failure, rest = extra curl options.
wait_ready() {
    local label="$1" pid="$2" scheme="$3" port="$4" logf="$5" body="" deadline
    shift 5
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 2>/dev/null || true
            die "$label exited before becoming ready (log above: $logf)"
        fi
        body="$(curl_bench "$scheme" "$port" / "$@")"
        [[ "$body" == ok ]] && return 0
        sleep 0.2
    done
    tail -n 30 "$logf" >&2 2>/dev/null || true
    die "$label did not answer 'ok' on $scheme://$BENCH_HOST:$port/ within ${READY_TIMEOUT}s (last body: '$body'; log: $logf)"
}

# Waits until `curl URL` answers HTTP status $4; bounded. $1 = label,
# $2 = pid, $3 = port (BENCH_HOST resolves to 127.0.0.1 on it), $5 = URL,
# $6 = log file to show on failure.
wait_status() {
    local label="$1" pid="$2" port="$3" want="$4" url="$5" logf="$6" got="" deadline
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 2>/dev/null || true
            die "$label exited before becoming ready (log above: $logf)"
        fi
        got="$(curl -sk --max-time 2 --resolve "$BENCH_HOST:$port:127.0.0.1" \
            -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true)"
        [[ "$got" == "$want" ]] && return 0
        sleep 0.2
    done
    tail -n 30 "$logf" >&2 2>/dev/null || true
    die "$label did not answer $want on $url within ${READY_TIMEOUT}s (last: '$got'; log: $logf)"
}

tls_info() { # $1 = port, $2 = ALPN list -> "TLSv1.3 TLS_AES_256_GCM_SHA384 ALPN h2"
    timeout 5 openssl s_client -connect "127.0.0.1:$1" -servername "$BENCH_HOST" \
        ${2:+-alpn "$2"} </dev/null 2>/dev/null |
        awk '/^New,/ {sub(",$", "", $2); c = $2 " " $NF}
             /^ALPN protocol:/ {a = " ALPN " $3}
             /^No ALPN/ {a = " no ALPN"}
             END {print c a}' || true
}

# ------------------------------------------------------------ accounting ---
CLK_TCK="$(getconf CLK_TCK)"
# CPU time (user+system, clock ticks) of a process and its direct children
# (nginx master + worker; Postern is one process, all threads).
proc_ticks() {
    local p total=0 t kids=()
    mapfile -t kids < <(pgrep -P "$1" || true)
    for p in "$1" "${kids[@]}"; do
        t="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || true)"
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
# VmRSS in KiB of a process plus its direct children (nginx master + worker).
rss_kib() {
    local p total=0 r kids=()
    mapfile -t kids < <(pgrep -P "$1" || true)
    for p in "$1" "${kids[@]}"; do
        r="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
        total=$((total + ${r:-0}))
    done
    echo "$total"
}
# "busy total" jiffies of one CPU, or of all ("") from /proc/stat.
core_jiffies() {
    awk -v c="cpu$1" '$1 == c {b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6}' /proc/stat
}
pct() { awk -v b0="$1" -v t0="$2" -v b1="$3" -v t1="$4" \
    'BEGIN { printf "%.0f", (t1 > t0 ? 100 * (b1 - b0) / (t1 - t0) : 0) }'; }

# Background load of all CPUs over 1 s, in percent; warns above 10%.
measure_bg_load() {
    local ab0 at0 ab1 at1
    read -r ab0 at0 < <(core_jiffies "")
    sleep 1
    read -r ab1 at1 < <(core_jiffies "")
    BG_LOAD="$(pct "$ab0" "$at0" "$ab1" "$at1")"
    if ((BG_LOAD > 10)); then
        log "warning: the machine is ${BG_LOAD}% busy before the runs; numbers will be skewed"
    fi
}
bg_load_line() {
    echo "background CPU load before the runs: ${BG_LOAD}% of all CPUs$( ((BG_LOAD > 10)) && echo '  <-- NOT idle, numbers skewed')"
}

cpu_model() {
    local m
    m="$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
    [[ -n "$m" ]] || m="$(lscpu 2>/dev/null | awk -F': *' '/Model name/ {print $2; exit}' || true)"
    echo "${m:-unknown CPU}"
}

# ------------------------------------------------------------------ wrk ---
# $TMP/loopback.lua: wrk keeps the URL's host (SNI and Host) but connects to
# 127.0.0.1 (no name resolution, no /etc/hosts). No request/response hooks,
# so wrk keeps its static (fast) request path.
write_wrk_loopback_lua() {
    cat >"$TMP/loopback.lua" <<'LUA'
local resolve = wrk.resolve
wrk.resolve = function(host, service)
   resolve("127.0.0.1", service)
end
LUA
}
# wrk time values ("812.00us", "1.23ms", "2.01s", "1.00m") -> milliseconds.
wrk_ms() {
    awk -v v="$1" 'BEGIN {
        if (match(v, /^[0-9.]+/) == 0) { print "NaN"; exit }
        n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
        if (u == "us") f = 0.001; else if (u == "ms") f = 1;
        else if (u == "s") f = 1000; else if (u == "m") f = 60000;
        else if (u == "h") f = 3600000; else { print "NaN"; exit }
        printf "%.3f", n * f
    }'
}
# One wrk --latency output -> "rps p50_ms p99_ms non2xx socket_errors requests"
# (non2xx: non-2xx/3xx responses; socket errors: connect+read+write+timeout).
wrk_parse() {
    local f="$1" rps p50 p99 bad sock reqs
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$f")"
    p50="$(awk '$1 == "50%" {print $2}' "$f")"
    p99="$(awk '$1 == "99%" {print $2}' "$f")"
    reqs="$(awk '/requests in/ {print $1}' "$f")"
    bad="$(awk '/Non-2xx or 3xx responses:/ {e += $NF} END {print e + 0}' "$f")"
    sock="$(awk '/Socket errors:/ {gsub(",", ""); e += $4 + $6 + $8 + $10} END {print e + 0}' "$f")"
    [[ -n "$rps" && -n "$p50" && -n "$p99" && -n "$reqs" ]] ||
        { cat "$f" >&2; die "could not parse wrk output $f"; }
    echo "$rps $(wrk_ms "$p50") $(wrk_ms "$p99") $bad $sock $reqs"
}

# ---------------------------------------------------------------- stats ---
# Median of space-separated numbers.
median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) print "NaN"; else if (NR % 2) print v[(NR + 1) / 2];
    else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# "min-max" of space-separated numbers, printf format $2 (default %.0f).
range() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk -v f="${2:-%.0f}" \
    'NR == 1 {lo = $1} {hi = $1} END {printf f "-" f, lo, hi}'; }
# $1 / $2 as "1.23x" ("-" if $2 is 0 or not a number).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2fx", a / b; else print "-" }'; }
