# shellcheck shell=bash
# Shared by scripts/build-release.sh and benches/proxy_vs_nginx.sh; sourced,
# after the sourcing script has defined `die`.

# Runs a command as root: directly, or through sudo.
as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root or sudo to run: $*"
    fi
}

# Loopback ports below the kernel's ephemeral range (so no outgoing
# connection, e.g. wrk's or a proxy's upstream socket, can be holding one)
# and not used by any TCP socket in any state.
USED_PORTS=" "
EPHEMERAL_LOW="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
if ((EPHEMERAL_LOW > 12000)); then
    PORT_BASE=10000 PORT_SPAN=$((EPHEMERAL_LOW - 10000))
else
    PORT_BASE=10000 PORT_SPAN=20000 # unusual range setup: rely on the ss check
fi
port_in_use() { [[ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]]; }

# free_port VAR: sets VAR to a free port, never one handed out before. Not
# `VAR=$(free_port)`: in a subshell the record of handed-out ports is lost.
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((PORT_BASE + RANDOM % PORT_SPAN))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        port_in_use "$p" && continue
        USED_PORTS+="$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "no free port found"
}
