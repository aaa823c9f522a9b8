#!/usr/bin/env bash
# Postern vs nginx: HTTP/2 from clients (h2load over TLS, ALPN h2), proxied
# to the same HTTP/1.1 upstream, on loopback.
#
# What it measures
#   h2load -> proxy (TLS, HTTP/2) -> upstream (HTTP/1.1, keep-alive), for two
#   targets with identical h2load settings: nginx-h2, postern-h2.
#   h2load opens CLIENTS connections [4] with STREAMS concurrent streams each
#   [100] (-m), all GET / on https://bench.localhost:PORT/. The upstream is
#   one nginx answering every path with the 2-byte body "ok". Both proxies
#   front that same upstream.
#
# Resource pinning (as benches/proxy_vs_nginx.sh)
#   The proxy under test (nginx with worker_processes 1, or Postern, whose
#   tokio runtime sizes itself from the CPU affinity mask and so gets one
#   worker) runs pinned to CPU ${PROXY_CPU:-0}; h2load and the upstream nginx
#   share CPU ${LOAD_CPU:-1}. The CPUs each process was allowed are printed.
#   With fewer than 2 CPUs (or PIN=0) nothing is pinned and the script says so.
#
# Parity choices
#   * Same certificate (self-signed ECDSA P-256), TLS 1.2/1.3, ALPN h2; the
#     negotiated protocol, cipher and ALPN of each listener are printed, and
#     h2load's "Application protocol" must be h2 for every run.
#   * 128 concurrent streams per connection on both (nginx
#     http2_max_concurrent_streams, Postern max_concurrent_streams), above
#     STREAMS, so h2load's -m is what limits.
#   * Requests per client connection effectively unlimited on both (nginx
#     keepalive_requests 10000000, which applies to HTTP/2 since nginx
#     1.19.7; Postern has no such limit). Otherwise nginx sends GOAWAY after
#     1000 requests and h2load's connection ends.
#   * Upstream: HTTP/1.1 keep-alive on both; nginx keeps 256 idle upstream
#     connections, like Postern's per-worker pool (256 per upstream).
#   * Same X-Forwarded-For/-Proto/-Host to the upstream (Postern always sets
#     them); the upstream's /__forwarded echo through each proxy is printed.
#   * Only bench.localhost is served on both (nginx rejects other SNI
#     names), no access logging (nginx access_log off, Postern log level
#     warn).
#   * h2load connects to 127.0.0.1 (--connect-to) with SNI and :authority
#     bench.localhost:PORT, so no name resolution or /etc/hosts is involved.
#
# Usage
#   benches/h2_vs_nginx.sh                      # run (Postern: see below)
#   POSTERN_BIN=/path/to/postern benches/h2_vs_nginx.sh
#   SKIP_POSTERN=1 benches/h2_vs_nginx.sh       # nginx only
#
# Postern binary: POSTERN_BIN if set; else target/release/postern if it
# exists (BUILD=1 rebuilds it first); else `cargo build --release --bin
# postern`. (benches/proxy_vs_nginx.sh uses the profile-guided build of
# scripts/build-release.sh; pass POSTERN_BIN=target/pgo/postern for that.)
#
# Environment knobs (defaults in brackets)
#   DURATION [10s]  h2load -D per target and round;  WARMUP [2s] (discarded)
#   ROUNDS   [3]    interleaved rounds; medians are reported
#   CLIENTS  [4]    h2load -c;  STREAMS [100] h2load -m;  H2_THREADS [1] -t
#   PROXY_CPU [0], LOAD_CPU [1], PIN [1]   CPU pinning (see above)
#   KEEP_TMP [0]    keep the temp dir (configs, logs, raw h2load output)
#
# Output
#   Machine, versions, background load, negotiated TLS, then per target:
#   req/s median and min-max over the rounds, request latency (h2load's
#   mean and max, and p50/p99 computed from h2load's --log-file, one line per
#   request), requests, errors (failed + errored + timed out streams +
#   non-2xx), the proxy's own CPU time per request (us) and how busy the
#   proxy and load CPUs were; then the Postern/nginx ratios.
#   Exit status: 0 ok, 1 setup/run failure, 2 some target had errors.
#
# Everything listens on 127.0.0.1 only; all processes started here are
# stopped on exit (also on failure or Ctrl-C); every wait is bounded.

set -euo pipefail

DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-4}"
STREAMS="${STREAMS:-100}"
H2_THREADS="${H2_THREADS:-1}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PIN="${PIN:-1}"
SKIP_POSTERN="${SKIP_POSTERN:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
BENCH_TAG="h2-bench"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/lib/bench.sh
source "$REPO_ROOT/scripts/lib/bench.sh"

DURATION_S="$(duration_secs "$DURATION")"
WARMUP_S="$(duration_secs "$WARMUP")"
((DURATION_S > 0)) || die "DURATION must be > 0"
positive_int ROUNDS "$ROUNDS"
positive_int CLIENTS "$CLIENTS"
positive_int STREAMS "$STREAMS"
positive_int H2_THREADS "$H2_THREADS"
((CLIENTS >= H2_THREADS)) || die "CLIENTS must be >= H2_THREADS"
((STREAMS <= 128)) || die "STREAMS must be <= 128 (both proxies allow 128 streams per connection)"

install_deps nginx:nginx-light h2load:nghttp2-client curl:curl
require_tools h2load openssl curl ss timeout awk sort
nginx_init
setup_pinning "h2load + upstream"
POSTERN="" POSTERN_BUILD="(skipped)"
[[ "$SKIP_POSTERN" == 1 ]] || find_postern

make_tmp_and_cert
free_port UP_PORT
free_port NGX_PORT
free_port PST_PORT

# ------------------------------------------------------------ configs ---
write_upstream_conf "$UP_PORT" 8192

# HTTP/2 on a TLS listener: `http2 on;` since nginx 1.25.1, before that a
# `listen ... http2` parameter.
if nginx_at_least 1.25.1; then
    NGX_H2_LISTEN="" NGX_H2_ON="http2 on;"
else
    NGX_H2_LISTEN=" http2" NGX_H2_ON=""
fi
{
    nginx_main_common nginx 8192 16384
    cat <<EOF
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    http2_max_concurrent_streams 128;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
$(nginx_temp_paths "$TMP/nginx")

    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 256;
        keepalive_requests 10000000;
    }

    # Only $BENCH_HOST is served, like Postern's single route.
    server {
        listen 127.0.0.1:$NGX_PORT ssl$NGX_H2_LISTEN default_server;
        $NGX_H2_ON
        ssl_reject_handshake on;
    }
    server {
        listen 127.0.0.1:$NGX_PORT ssl$NGX_H2_LISTEN;
        $NGX_H2_ON
        server_name $BENCH_HOST;
        ssl_certificate     $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What Postern always sends upstream (see "Parity choices").
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host:\$server_port;
        }
    }
}
EOF
} >"$TMP/nginx.conf"

cat >"$TMP/postern.yaml" <<EOF
address: 127.0.0.1:$PST_PORT
certificate_file: $TMP/cert.pem
certificate_key_file: $TMP/key.pem
max_concurrent_streams: 128
routes:
  - from: https://$BENCH_HOST
    to: http://127.0.0.1:$UP_PORT
    allow_public_unauthenticated_access: true
EOF

# ---------------------------------------------------------- processes ---
log "temp dir $TMP; upstream :$UP_PORT; nginx :$NGX_PORT; postern :$PST_PORT"
start_nginx upstream load
UP_PID="${PIDS[-1]}"
wait_ready upstream "$UP_PID" http "$UP_PORT" "$TMP/upstream.error.log"
start_nginx nginx proxy
declare -A PROXY_PID=([nginx-h2]="${PIDS[-1]}") PORT=([nginx-h2]="$NGX_PORT")
wait_ready nginx-h2 "${PROXY_PID[nginx-h2]}" https "$NGX_PORT" "$TMP/nginx.error.log" --http2
TARGETS=(nginx-h2)
if [[ "$SKIP_POSTERN" != 1 ]]; then
    start_postern postern
    PROXY_PID[postern-h2]="${PIDS[-1]}"
    PORT[postern-h2]="$PST_PORT"
    wait_ready postern-h2 "${PROXY_PID[postern-h2]}" https "$PST_PORT" "$TMP/postern.out" --http2
    TARGETS+=(postern-h2)
fi

target_url() { echo "https://$BENCH_HOST:${PORT[$1]}/"; }

# ------------------------------------------------------------ machine ---
nginx_ver="$("$NGINX" -v 2>&1 | head -n1)"
h2load_ver="$({ h2load --version 2>&1 || true; } | head -n1)"
postern_ver="(skipped)"
[[ -z "$POSTERN" ]] || postern_ver="$({ "$POSTERN" --version 2>&1 || true; } | head -n1)"

# What each proxy sends upstream, through HTTP/2.
forwarded() { curl_bench https "${PORT[$1]}" /__forwarded --http2; }

# ------------------------------------------------------------ runs ---
run_h2load() { # $1 = target, $2 = duration, $3 = output file, $4 = log file or ""
    local url rc=0 logopt=()
    url="$(target_url "$1")"
    [[ -z "$4" ]] || logopt=(--log-file="$4")
    run_fg "$3" timeout --kill-after=5 $(($(duration_secs "$2") + 60)) \
        "${LOAD_PIN[@]}" h2load -c"$CLIENTS" -m"$STREAMS" -t"$H2_THREADS" -D "$(duration_secs "$2")" \
        --connect-to="127.0.0.1:${PORT[$1]}" "${logopt[@]}" "$url" || rc=$?
    ((rc == 0)) || { cat "$3" >&2; die "h2load failed for $1 ($url), exit $rc"; }
    grep -q '^Application protocol: h2$' "$3" ||
        { cat "$3" >&2; die "h2load did not negotiate h2 with $1"; }
}

# Parse h2load output + log file: "rps mean_ms max_ms p50_ms p99_ms errors requests".
parse_h2load() {
    local f="$1" logf="$2" rps mean max reqs errs pcts
    rps="$(awk '/^finished in/ {print $4}' "$f")"
    # time for request: min max mean sd +/-sd, each with a unit.
    read -r max mean < <(awk '/^time for request:/ {print $5, $6}' "$f")
    reqs="$(awk '/^requests:/ {print $8}' "$f")" # succeeded
    errs="$(awk '
        /^requests:/ {e += $10 + $12 + $14}                 # failed, errored, timeout
        /^status codes:/ {gsub(",", ""); e += $5 + $7 + $9}   # 3xx 4xx 5xx
        END {print e + 0}' "$f")"
    # Per request: start (us since epoch), status, duration (us). -1 = failed.
    pcts="$(awk -F'\t' '$2 != -1 {print $3}' "$logf" | sort -n | awk '{v[NR] = $1} END {
        if (NR == 0) { print "NaN NaN"; exit }
        i50 = int(NR * 0.50 + 0.5); i99 = int(NR * 0.99 + 0.5)
        if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
        printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }')"
    [[ -n "$rps" && -n "$mean" && -n "$max" && -n "$reqs" ]] ||
        { cat "$f" >&2; die "could not parse h2load output $f"; }
    echo "$rps $(h2_ms "$mean") $(h2_ms "$max") $pcts $errs $reqs"
}
# h2load time values ("812us", "1.23ms", "2.01s") -> milliseconds.
h2_ms() {
    awk -v v="$1" 'BEGIN {
        if (match(v, /^[0-9.]+/) == 0) { print "NaN"; exit }
        n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
        if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000;
        else { print "NaN"; exit }
        printf "%.3f", n * f
    }'
}

measure_bg_load

declare -A R_RPS R_MEAN R_MAX R_P50 R_P99 R_CPU R_PCORE R_LCORE ERRS REQS
for t in "${TARGETS[@]}"; do ERRS[$t]=0; REQS[$t]=0; done
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${TARGETS[@]}"; do
        if ((WARMUP_S > 0)); then
            log "$t: warm-up $WARMUP (round $round/$ROUNDS)"
            run_h2load "$t" "$WARMUP" "$TMP/h2load-$t.warmup.txt" ""
        fi
        log "$t: measuring $DURATION (round $round/$ROUNDS, $(target_url "$t"))"
        ticks0="$(proc_ticks "${PROXY_PID[$t]}")"
        read -r pb0 pt0 < <(core_jiffies "$PROXY_CPU")
        read -r lb0 lt0 < <(core_jiffies "$LOAD_CPU")
        run_h2load "$t" "$DURATION" "$TMP/h2load-$t.$round.txt" "$TMP/h2log-$t.$round.tsv"
        ticks1="$(proc_ticks "${PROXY_PID[$t]}")"
        read -r pb1 pt1 < <(core_jiffies "$PROXY_CPU")
        read -r lb1 lt1 < <(core_jiffies "$LOAD_CPU")
        read -r rps mean max p50 p99 errs reqs \
            <<<"$(parse_h2load "$TMP/h2load-$t.$round.txt" "$TMP/h2log-$t.$round.tsv")"
        # The per-request logs are large; keep only the last round's.
        ((round == ROUNDS)) || rm -f "$TMP/h2log-$t.$round.tsv"
        R_RPS[$t]+="$rps " R_MEAN[$t]+="$mean " R_MAX[$t]+="$max "
        R_P50[$t]+="$p50 " R_P99[$t]+="$p99 "
        ERRS[$t]=$((ERRS[$t] + errs))
        REQS[$t]=$((REQS[$t] + reqs))
        R_CPU[$t]+="$(awk -v d="$((ticks1 - ticks0))" -v hz="$CLK_TCK" -v n="$reqs" \
            'BEGIN { printf "%.2f", (n > 0 ? d / hz * 1e6 / n : 0) }') "
        R_PCORE[$t]+="$(pct "$pb0" "$pt0" "$pb1" "$pt1") "
        R_LCORE[$t]+="$(pct "$lb0" "$lt0" "$lb1" "$lt1") "
    done
done

# ------------------------------------------------------------ report ---
declare -A RPS P50 P99 MEAN MAXL CPU_US
for t in "${TARGETS[@]}"; do
    RPS[$t]="$(median "${R_RPS[$t]}")"
    MEAN[$t]="$(median "${R_MEAN[$t]}")"
    MAXL[$t]="$(median "${R_MAX[$t]}")"
    P50[$t]="$(median "${R_P50[$t]}")"
    P99[$t]="$(median "${R_P99[$t]}")"
    CPU_US[$t]="$(median "${R_CPU[$t]}")"
done

echo
echo "== Postern vs nginx, HTTP/2 clients (h2load, TLS, ALPN h2) =="
echo "machine : $NCPU CPUs, $(cpu_model), kernel $(uname -r)"
echo "pinning : $PIN_DESC"
for t in "${TARGETS[@]}"; do
    echo "cpus    : $t pid ${PROXY_PID[$t]} allowed CPUs $(cpus_of "${PROXY_PID[$t]}")"
done
echo "cpus    : upstream pid $UP_PID allowed CPUs $(cpus_of "$UP_PID"); h2load ran with ${LOAD_PIN[*]:-no pinning}"
echo "nginx   : $nginx_ver (proxy: worker_processes 1, http2, upstream keepalive 256)"
echo "h2load  : $h2load_ver"
echo "postern : $postern_ver ($POSTERN_BUILD)"
echo "openssl : $(openssl version)"
echo "idle    : $(bg_load_line)"
echo "load    : h2load -c$CLIENTS -m$STREAMS -t$H2_THREADS -D $DURATION (warm-up $WARMUP), GET https://$BENCH_HOST:PORT/, body 'ok'"
echo "rounds  : $ROUNDS, targets interleaved; figures are medians over the rounds"
for t in "${TARGETS[@]}"; do
    echo "tls     : $t: h2load got $(awk '/^TLS Protocol:/ {p = $3} /^Cipher:/ {c = $2}
        /^Server Temp Key:/ {k = $4} /^Application protocol:/ {a = $3}
        END {print p, c, k, "ALPN", a}' "$TMP/h2load-$t.$ROUNDS.txt"); openssl s_client: $(tls_info "${PORT[$t]}" h2)"
    echo "upstream: $t sends $(forwarded "$t")"
done
echo
printf '%-11s %10s %14s %8s %8s %8s %9s %10s %7s %8s %6s %6s\n' target 'req/s' 'req/s range' \
    'p50 ms' 'p99 ms' 'mean ms' 'max ms' requests errors 'us/req' 'proxy' 'load'
for t in "${TARGETS[@]}"; do
    printf '%-11s %10.1f %14s %8.3f %8.3f %8.3f %9.3f %10s %7s %8.2f %5.0f%% %5.0f%%\n' \
        "$t" "${RPS[$t]}" "$(range "${R_RPS[$t]}")" "${P50[$t]}" "${P99[$t]}" "${MEAN[$t]}" \
        "${MAXL[$t]}" "${REQS[$t]}" "${ERRS[$t]}" "${CPU_US[$t]}" \
        "$(median "${R_PCORE[$t]}")" "$(median "${R_LCORE[$t]}")"
done
echo "(p50/p99: from h2load's per-request log; mean/max: h2load's 'time for request'."
echo " us/req: the proxy's own CPU time per request; proxy/load: busy share of CPU"
echo " $PROXY_CPU / CPU $LOAD_CPU. When the load CPU is ~100%, h2load + upstream cap req/s"
echo " and us/req is the fairer comparison. p99 range over rounds:"
for t in "${TARGETS[@]}"; do echo "   $t $(range "${R_P99[$t]}" %.2f) ms"; done
echo ")"

if [[ "$SKIP_POSTERN" != 1 ]]; then
    echo
    echo "Postern / nginx  (throughput: higher is better; latency, CPU/req: lower is better)"
    echo "throughput $(ratio "${RPS[postern-h2]}" "${RPS[nginx-h2]}") (all rounds $(ratio "${REQS[postern-h2]}" "${REQS[nginx-h2]}"))" \
        " p50 $(ratio "${P50[postern-h2]}" "${P50[nginx-h2]}")  p99 $(ratio "${P99[postern-h2]}" "${P99[nginx-h2]}")" \
        " CPU/req $(ratio "${CPU_US[postern-h2]}" "${CPU_US[nginx-h2]}")   (goal: throughput >= 1.0x)"
fi

bad=0
for t in "${TARGETS[@]}"; do
    if [[ "${ERRS[$t]}" != 0 ]]; then
        log "warning: $t had ${ERRS[$t]} failed/errored streams or non-2xx responses; its numbers are suspect (raw: $TMP/h2load-$t.*.txt, KEEP_TMP=1 to keep)"
        bad=1
    fi
done
((bad == 0)) || exit 2
