#!/usr/bin/env bash
# Postern vs nginx: N concurrent keep-alive connections, mostly idle, a few
# busy, on loopback. Memory per idle connection and the latency of the busy
# ones while the idle ones are held.
#
# What it measures, per target (nginx, postern) and round
#   1. A fresh proxy (pinned to CPU ${PROXY_CPU:-0}), warmed up with the busy
#      load for WARMUP; then the busy load alone for BUSY_DURATION: the
#      baseline p50/p99 with no idle connections.
#   2. RSS before: VmRSS from /proc/PID/status (nginx: master + worker).
#   3. benches/idle_conns.py opens N keep-alive connections [10000], each
#      makes one request (GET /, must answer 200) and then stays idle. The
#      source addresses are spread over 127.0.0.2.. (PER_SOURCE each), so
#      ephemeral ports never run short.
#   4. RSS with N idle: (RSS with - RSS before) / N = memory per idle
#      connection (user space only; the kernel's socket memory is the same
#      for both and not in RSS).
#   5. The busy load again: wrk -t1 -c BUSY_CONNS [8] for BUSY_DURATION [5s]
#      with --latency: p50/p99 of the busy connections while N idle are
#      held. During the run the established connections on the proxy port
#      are counted with ss (split into the opener's and wrk's), and after it
#      the opener reports how many of its connections are still open; a
#      round where fewer than N were held is flagged.
#   6. The idle connections are closed; RSS after close (what the proxy
#      keeps). The proxy is stopped.
#   Rounds alternate nginx, postern, nginx, postern, ...; medians are
#   reported with the min-max over the rounds.
#
# Parity choices
#   * nginx: worker_processes 1, worker_connections N + 1024,
#     worker_rlimit_nofile 2N + 2048; Postern: max_connections N + 1024 (its
#     default is 10000, which N idle + the busy ones would pass). Both:
#     keep-alive timeout 3600 s (longer than any run), unlimited requests per
#     connection. The script raises `ulimit -n` to N + 2048 for everything it
#     starts (and says so if the hard limit is lower).
#   * Same upstream (one nginx, "ok", pinned to the load CPU with wrk and the
#     opener), same X-Forwarded-* headers, Host routing to bench.localhost
#     only, no access logging (Postern at log level warn).
#   * TLS=1 makes both listeners TLS (same self-signed P-256 certificate) and
#     the opener and wrk speak TLS; default plain HTTP.
#
# Usage
#   benches/many_connections.sh
#   N=2000 ROUNDS=1 benches/many_connections.sh     # quick
#   POSTERN_BIN=/path/to/postern benches/many_connections.sh
#
# Postern binary: POSTERN_BIN if set; else target/release/postern if it
# exists (BUILD=1 rebuilds it first); else `cargo build --release --bin
# postern`.
#
# Environment knobs (defaults in brackets)
#   N [10000]            idle connections;  PER_SOURCE [2000] per 127.0.0.x
#   BUSY_CONNS [8]       wrk -c (wrk -t1);  BUSY_DURATION [5s];  WARMUP [2s]
#   ROUNDS [3]           interleaved rounds (a fresh proxy each)
#   BASELINE [1]         0 skips the busy run without idle connections
#   TLS [0]              1: TLS listeners
#   OPEN_TIMEOUT [180]   seconds allowed for opening the N connections
#   PROXY_CPU [0], LOAD_CPU [1], PIN [1], KEEP_TMP [0], SKIP_POSTERN [0]
#
# Exit status: 0 ok, 1 setup/run failure, 2 some round had errors or did
# not hold all N connections.
#
# Everything listens on 127.0.0.1 only (clients come from 127.0.0.x); all
# processes started here are stopped on exit (also on failure or Ctrl-C);
# every wait is bounded.

set -euo pipefail

N="${N:-10000}"
PER_SOURCE="${PER_SOURCE:-2000}"
BUSY_CONNS="${BUSY_CONNS:-8}"
BUSY_DURATION="${BUSY_DURATION:-5s}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-3}"
BASELINE="${BASELINE:-1}"
TLS="${TLS:-0}"
OPEN_TIMEOUT="${OPEN_TIMEOUT:-180}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PIN="${PIN:-1}"
SKIP_POSTERN="${SKIP_POSTERN:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
BENCH_TAG="conns-bench"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/lib/bench.sh
source "$REPO_ROOT/scripts/lib/bench.sh"

positive_int N "$N"
positive_int PER_SOURCE "$PER_SOURCE"
positive_int BUSY_CONNS "$BUSY_CONNS"
positive_int ROUNDS "$ROUNDS"
positive_int OPEN_TIMEOUT "$OPEN_TIMEOUT"
BUSY_S="$(duration_secs "$BUSY_DURATION")"
WARMUP_S="$(duration_secs "$WARMUP")"
((BUSY_S > 0)) || die "BUSY_DURATION must be > 0"
(((N + PER_SOURCE - 1) / PER_SOURCE <= 253)) || die "N / PER_SOURCE needs more than 127.0.0.2-254"
SCHEME=http
[[ "$TLS" == 1 ]] && SCHEME=https

install_deps nginx:nginx-light wrk:wrk curl:curl python3:python3
require_tools wrk openssl curl ss timeout awk python3
PYTHON="$(command -v /usr/bin/python3 || command -v python3)"
nginx_init
setup_pinning "wrk + opener + upstream"
POSTERN="" POSTERN_BUILD="(skipped)"
[[ "$SKIP_POSTERN" == 1 ]] || find_postern

# ------------------------------------------------------------ fd limit ---
NOFILE=$((N + 2048))
if (($(ulimit -Sn) < NOFILE)); then
    if [[ "$(ulimit -Hn)" != unlimited ]] && (($(ulimit -Hn) < NOFILE)); then
        ulimit -Hn "$NOFILE" 2>/dev/null ||
            die "ulimit -n: hard limit $(ulimit -Hn) < $NOFILE needed for N=$N (raise it, or lower N)"
    fi
    ulimit -Sn "$NOFILE"
fi
log "ulimit -n $(ulimit -Sn) (hard $(ulimit -Hn))"

make_tmp_and_cert
cat >"$TMP/loopback.lua" <<'LUA'
local resolve = wrk.resolve
wrk.resolve = function(host, service)
   resolve("127.0.0.1", service)
end
LUA

# ------------------------------------------------------------ configs ---
free_port UP_PORT
write_upstream_conf "$UP_PORT" 4096

write_nginx_conf() { # $1 = port
    local listen="listen 127.0.0.1:$1"
    [[ "$TLS" == 1 ]] && listen+=" ssl"
    {
        nginx_main_common nginx "$((N + 1024))" "$((2 * N + 2048))"
        cat <<EOF
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 3600s;
    ssl_protocols TLSv1.2 TLSv1.3;
$(nginx_temp_paths "$TMP/nginx")

    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 256;
        keepalive_requests 10000000;
    }
    # Only $BENCH_HOST is served, like Postern's single route.
    server {
        $listen default_server backlog=4096;
        $([[ "$TLS" == 1 ]] && echo "ssl_reject_handshake on;" || echo "return 404;")
    }
    server {
        $listen;
        server_name $BENCH_HOST;
        ssl_certificate     $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
        }
    }
}
EOF
    } >"$TMP/nginx.conf"
}

write_postern_conf() { # $1 = port
    {
        echo "address: 127.0.0.1:$1"
        if [[ "$TLS" == 1 ]]; then
            echo "certificate_file: $TMP/cert.pem"
            echo "certificate_key_file: $TMP/key.pem"
        else
            echo "insecure_server: true"
        fi
        cat <<EOF
max_connections: $((N + 1024))
keepalive_timeout: 3600s
routes:
  - from: $SCHEME://$BENCH_HOST
    to: http://127.0.0.1:$UP_PORT
    allow_public_unauthenticated_access: true
EOF
    } >"$TMP/postern.yaml"
}

# ---------------------------------------------------------- processes ---
start_nginx upstream load
UP_PID="${PIDS[-1]}"
wait_ready upstream "$UP_PID" http "$UP_PORT" "$TMP/upstream.error.log"

# Starts a fresh proxy; sets CUR_PID and CUR_PORT.
start_proxy() { # $1 = target
    free_port CUR_PORT
    if [[ "$1" == nginx ]]; then
        write_nginx_conf "$CUR_PORT"
        start_nginx nginx proxy
        CUR_PID="${PIDS[-1]}"
        wait_ready nginx "$CUR_PID" "$SCHEME" "$CUR_PORT" "$TMP/nginx.error.log"
    else
        write_postern_conf "$CUR_PORT"
        start_postern postern
        CUR_PID="${PIDS[-1]}"
        wait_ready postern "$CUR_PID" "$SCHEME" "$CUR_PORT" "$TMP/postern.out"
    fi
}

run_wrk() { # $1 = duration, $2 = output file
    local rc=0
    run_fg "$2" timeout --kill-after=5 $(($(duration_secs "$1") + 60)) \
        "${LOAD_PIN[@]}" wrk -t1 -c"$BUSY_CONNS" -d"$1" --latency \
        -H "Host: $BENCH_HOST" -s "$TMP/loopback.lua" "$SCHEME://$BENCH_HOST:$CUR_PORT/" || rc=$?
    ((rc == 0)) || { cat "$2" >&2; die "wrk failed (port $CUR_PORT), exit $rc"; }
}

# wrk time values ("812.00us", "1.23ms", "2.01s") -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (match(v, /^[0-9.]+/) == 0) { print "NaN"; exit }
        n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
        if (u == "us") f = 0.001; else if (u == "ms") f = 1;
        else if (u == "s") f = 1000; else if (u == "m") f = 60000; else { print "NaN"; exit }
        printf "%.3f", n * f
    }'
}
# "rps p50_ms p99_ms errors"
parse_wrk() {
    local f="$1" rps p50 p99 errs
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$f")"
    p50="$(awk '$1 == "50%" {print $2}' "$f")"
    p99="$(awk '$1 == "99%" {print $2}' "$f")"
    errs="$(awk '
        /Non-2xx or 3xx responses:/ {e += $NF}
        /Socket errors:/ {gsub(",", ""); e += $4 + $6 + $8 + $10}
        END {print e + 0}' "$f")"
    [[ -n "$rps" && -n "$p50" && -n "$p99" ]] || { cat "$f" >&2; die "could not parse wrk output $f"; }
    echo "$rps $(to_ms "$p50") $(to_ms "$p99") $errs"
}

# Established connections on the proxy port: "total from_opener" (the
# opener connects from 127.0.0.2 and up, wrk from 127.0.0.1).
count_established() {
    ss -Htn state established "( sport = :$CUR_PORT )" 2>/dev/null |
        awk '{n++; if ($4 !~ /^127\.0\.0\.1:/) o++} END {print n + 0, o + 0}'
}

# Waits (bounded) until the opener's output has a line starting with $2.
wait_line() { # $1 = file, $2 = prefix, $3 = timeout s, $4 = pid
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        grep -q "^$2" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || { grep -q "^$2" "$1" 2>/dev/null && return 0; return 1; }
        sleep 0.2
    done
    return 1
}

# ------------------------------------------------------------ versions ---
nginx_ver="$("$NGINX" -v 2>&1 | head -n1)"
wrk_ver="$({ wrk -v 2>&1 || true; } | head -n1)"
postern_ver="(skipped)"
[[ -z "$POSTERN" ]] || postern_ver="$({ "$POSTERN" --version 2>&1 || true; } | head -n1)"

measure_bg_load

TARGETS=(nginx)
[[ "$SKIP_POSTERN" == 1 ]] || TARGETS+=(postern)
declare -A R_LEFT R_BASE R_WITH R_PER R_AFTER R_CLOSED R_P50 R_P99 R_RPS R_B50 R_B99 R_HELD R_SS CPUS ERRS BAD
for t in "${TARGETS[@]}"; do ERRS[$t]=0; BAD[$t]=0; done

for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${TARGETS[@]}"; do
        log "$t: round $round/$ROUNDS: fresh proxy"
        start_proxy "$t"
        CPUS[$t]="$(cpus_of "$CUR_PID")"
        if ((WARMUP_S > 0)); then run_wrk "$WARMUP" "$TMP/wrk-$t.$round.warmup.txt"; fi
        if [[ "$BASELINE" == 1 ]]; then
            log "$t: busy load alone, $BUSY_DURATION"
            run_wrk "$BUSY_DURATION" "$TMP/wrk-$t.$round.alone.txt"
            read -r _ b50 b99 errs <<<"$(parse_wrk "$TMP/wrk-$t.$round.alone.txt")"
            R_B50[$t]+="$b50 " R_B99[$t]+="$b99 "
            ERRS[$t]=$((ERRS[$t] + errs))
        fi
        sleep 1
        rss0="$(rss_kib "$CUR_PID")"

        log "$t: opening $N idle keep-alive connections"
        ofile="$TMP/opener-$t.$round.out"
        tls_opt=()
        [[ "$TLS" == 1 ]] && tls_opt=(--tls)
        start_bg "opener-$t.$round" "${LOAD_PIN[@]}" "$PYTHON" "$SCRIPT_DIR/idle_conns.py" \
            --port "$CUR_PORT" --host "$BENCH_HOST" -n "$N" --per-source "$PER_SOURCE" \
            --open-timeout "$OPEN_TIMEOUT" --hold $((OPEN_TIMEOUT + BUSY_S + 600)) "${tls_opt[@]}"
        OPENER_PID="${PIDS[-1]}"
        wait_line "$ofile" opened $((OPEN_TIMEOUT + 30)) "$OPENER_PID" ||
            { cat "$ofile" >&2; die "$t: the opener did not finish opening connections"; }
        opened_line="$(grep '^opened' "$ofile")"
        log "$t: $opened_line"
        opened="$(awk '{print $2}' <<<"$opened_line")"
        sleep 1
        rss1="$(rss_kib "$CUR_PID")"
        read -r ss_total ss_idle < <(count_established)

        log "$t: busy load with $ss_idle idle connections held ($ss_total established on the port), $BUSY_DURATION"
        run_wrk "$BUSY_DURATION" "$TMP/wrk-$t.$round.busy.txt" &
        wrk_job=$!
        PIDS+=("$wrk_job")
        sleep "$(awk -v s="$BUSY_S" 'BEGIN {print s / 2}')"
        read -r mid_total mid_idle < <(count_established)
        wait "$wrk_job" || die "$t: busy load failed"
        forget_pid "$wrk_job"
        read -r rps p50 p99 errs <<<"$(parse_wrk "$TMP/wrk-$t.$round.busy.txt")"
        rss2="$(rss_kib "$CUR_PID")"
        kill -USR1 "$OPENER_PID" 2>/dev/null || true
        wait_line "$ofile" status 10 "$OPENER_PID" || true
        held="$(awk '/^status/ {print $3; exit}' "$ofile")"
        log "$t: during busy load: $mid_total established on the proxy port ($mid_idle from the opener); after it the opener still had ${held:-?} open"

        stop_pid "$OPENER_PID"
        forget_pid "$OPENER_PID"
        sleep 2
        rss3="$(rss_kib "$CUR_PID")"
        # Server-side sockets on the port still around (CLOSE_WAIT etc.).
        left="$(ss -Htn "( sport = :$CUR_PORT )" 2>/dev/null | wc -l)"
        ((left == 0)) || log "$t: $left sockets on the proxy port 2 s after the opener closed its connections"
        stop_pid "$CUR_PID"
        forget_pid "$CUR_PID"

        R_BASE[$t]+="$rss0 " R_WITH[$t]+="$rss1 " R_AFTER[$t]+="$rss2 " R_CLOSED[$t]+="$rss3 "
        R_PER[$t]+="$(awk -v a="$rss0" -v b="$rss1" -v n="${opened:-0}" \
            'BEGIN { printf "%.2f", (n > 0 ? (b - a) / n : 0) }') "
        R_P50[$t]+="$p50 " R_P99[$t]+="$p99 " R_RPS[$t]+="$rps "
        R_HELD[$t]+="${held:-0} " R_SS[$t]+="$mid_idle " R_LEFT[$t]+="$left "
        ERRS[$t]=$((ERRS[$t] + errs))
        if [[ "${opened:-0}" != "$N" || "${held:-0}" != "$N" || "$mid_idle" != "$N" || "$ss_idle" != "$N" ]]; then
            log "warning: $t round $round: opened ${opened:-0}, counted $ss_idle before and $mid_idle during the busy load, ${held:-0} still open after it; wanted $N"
            BAD[$t]=1
        fi
    done
done

# ------------------------------------------------------------ report ---
mib() { awk -v k="$(median "$1")" 'BEGIN { printf "%.1f", k / 1024 }'; }
mib_range() { tr ' ' '\n' <<<"$1" | awk 'NF {printf "%.1f ", $1 / 1024}'; }
echo
echo "== Postern vs nginx: $N idle keep-alive connections + $BUSY_CONNS busy ($SCHEME) =="
echo "machine : $NCPU CPUs, $(cpu_model), kernel $(uname -r)"
echo "pinning : $PIN_DESC"
for t in "${TARGETS[@]}"; do echo "cpus    : $t allowed CPUs ${CPUS[$t]}"; done
echo "cpus    : upstream allowed CPUs $(cpus_of "$UP_PID"); wrk and opener ran with ${LOAD_PIN[*]:-no pinning}"
echo "nginx   : $nginx_ver (worker_processes 1, worker_connections $((N + 1024)), keepalive_timeout 3600s)"
echo "postern : $postern_ver ($POSTERN_BUILD; max_connections $((N + 1024)), keepalive_timeout 3600s)"
echo "wrk     : $wrk_ver; busy load wrk -t1 -c$BUSY_CONNS -d$BUSY_DURATION --latency"
echo "opener  : benches/idle_conns.py ($("$PYTHON" --version 2>&1)), one GET each, from 127.0.0.2.. ($PER_SOURCE per address)"
echo "fds     : ulimit -n $(ulimit -Sn)"
echo "idle    : $(bg_load_line)"
echo "rounds  : $ROUNDS, targets interleaved, a fresh proxy each; medians (min-max)"
echo
printf '%-8s %8s %9s %9s %11s %14s %9s %9s %5s\n' target 'held' 'RSS MiB' 'RSS+idle' 'KiB/conn' 'KiB/conn range' 'after' 'closed' 'left'
for t in "${TARGETS[@]}"; do
    printf '%-8s %8s %9s %9s %11.2f %14s %9s %9s %5s\n' "$t" "$(printf '%.0f' "$(median "${R_SS[$t]}")")" \
        "$(mib "${R_BASE[$t]}")" "$(mib "${R_WITH[$t]}")" "$(median "${R_PER[$t]}")" \
        "$(range "${R_PER[$t]}" %.2f)" "$(mib "${R_AFTER[$t]}")" "$(mib "${R_CLOSED[$t]}")" \
        "$(printf '%.0f' "$(median "${R_LEFT[$t]}")")"
done
echo "(held: idle connections established on the proxy port, counted with ss mid-way"
echo " through the busy load; RSS: VmRSS before the idle connections, with them, after"
echo " the busy load, and 2 s after they were closed; KiB/conn = (RSS+idle - RSS) / N;"
echo " left: server-side sockets on the port 2 s after the close. nginx allocates its"
echo " connection array for worker_connections at start, so part of its per-connection"
echo " cost is in its 'RSS MiB'; RSS+idle compares the totals)"
echo
printf '%-8s %10s %14s %9s %9s %14s %12s %12s %7s\n' target 'busy rps' 'rps range' 'p50 ms' 'p99 ms' \
    'p99 range' 'alone p50' 'alone p99' errors
for t in "${TARGETS[@]}"; do
    a50="-" a99="-"
    if [[ "$BASELINE" == 1 ]]; then a50="$(median "${R_B50[$t]}")" a99="$(median "${R_B99[$t]}")"; fi
    printf '%-8s %10.0f %14s %9.3f %9.3f %14s %12s %12s %7s\n' "$t" "$(median "${R_RPS[$t]}")" \
        "$(range "${R_RPS[$t]}")" "$(median "${R_P50[$t]}")" "$(median "${R_P99[$t]}")" \
        "$(range "${R_P99[$t]}" %.3f)" "$a50" "$a99" "${ERRS[$t]}"
done
echo "(busy: wrk on $BUSY_CONNS connections while $N idle are held; alone: the same load"
echo " before the idle connections were opened)"
for t in "${TARGETS[@]}"; do
    echo "raw RSS MiB per round, $t: before $(mib_range "${R_BASE[$t]}")| with idle $(mib_range "${R_WITH[$t]}")"
done

if [[ "$SKIP_POSTERN" != 1 ]]; then
    echo
    echo "Postern / nginx  (lower is better)"
    echo "memory per idle connection $(ratio "$(median "${R_PER[postern]}")" "$(median "${R_PER[nginx]}")")  (goal <= 1.0x)" \
        "  busy p99 $(ratio "$(median "${R_P99[postern]}")" "$(median "${R_P99[nginx]}")")  (goal <= 1.2x)" \
        "  busy p50 $(ratio "$(median "${R_P50[postern]}")" "$(median "${R_P50[nginx]}")")"
fi

bad=0
for t in "${TARGETS[@]}"; do
    if [[ "${ERRS[$t]}" != 0 || "${BAD[$t]}" != 0 ]]; then
        log "warning: $t had ${ERRS[$t]} wrk errors or did not hold all $N connections; its numbers are suspect (KEEP_TMP=1 keeps the raw output)"
        bad=1
    fi
done
((bad == 0)) || exit 2
