#!/usr/bin/env bash
# A lab for live capture: a veth pair whose generator end lives in a network namespace of
# its own, and whose capture end stays in the root namespace (default) or, with
# --capture-ns, lives in a second namespace of its own.
#
#   scripts/lab.sh up   [--name NAME] [--mtu BYTES] [--queues N] [--capture-ns]
#   scripts/lab.sh down [--name NAME]
#
# NAME (default: ct<pid>, at most 11 characters) makes every name unique:
#   NAME-gen       namespace of the generator end
#   NAME-cap       namespace of the capture end (--capture-ns only)
#   NAME-g         veth end that sends (inside NAME-gen), address 198.18.0.1/30
#   NAME-c         veth end conntrail captures on, address 198.18.0.2/30
# The addresses are of the benchmarking range (RFC 2544) and only ever exist on these two
# ends: generated traffic goes to them and nowhere else. Frames replayed from captures keep
# their own addresses but cannot leave the pair: the generator namespace has no other link,
# and the capture end's stack drops frames not addressed to it (nothing forwards them:
# conntrail's XDP program hands every frame to its socket).
#
# --queues N gives both ends N queues (default 1): the generator end's transmit queue q
# feeds receive queue q of the capture end, as RSS would spread a NIC's traffic.
#
# IPv6 is disabled on both ends before they go up (no neighbour discovery or MLD frames to
# pollute a capture), GRO is switched on at the capture end (generic XDP on a veth needs
# it), and the MTU is 3000 by default: above the largest frame of the corpus captures,
# below what native XDP accepts on a veth without multi-buffer (about 3500).
#
# `up` prints shell assignments (eval "$(scripts/lab.sh up)"): LAB_NAME, GEN_NS, GEN_IF,
# CAP_NS (empty for the root namespace), CAP_IF, GEN_IP, CAP_IP, CAP_MAC, GEN_MAC.
# `up` removes whatever it created if any step fails; `down` removes everything of NAME and
# tolerates what is already gone. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces).
set -euo pipefail

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

action=${1:-}
[ -n "$action" ] || usage
shift
name="ct$$"
mtu=3000
queues=1
capture_ns=0
while [ $# -gt 0 ]; do
    case "$1" in
    --name) name=$2; shift 2 ;;
    --mtu) mtu=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --capture-ns) capture_ns=1; shift ;;
    -h | --help) usage ;;
    *) echo "lab.sh: unknown argument $1" >&2; usage ;;
    esac
done
if ! [[ $queues =~ ^[0-9]+$ ]] || [ "$queues" -lt 1 ] || [ "$queues" -gt 64 ]; then
    echo "lab.sh: --queues must be 1-64" >&2
    exit 2
fi
if [ ${#name} -gt 11 ] || ! [[ $name =~ ^[A-Za-z0-9_]+$ ]]; then
    echo "lab.sh: --name must be 1-11 letters, digits or _ (interface names are short)" >&2
    exit 2
fi

gen_ns="$name-gen"
cap_ns="$name-cap"
gen_if="$name-g"
cap_if="$name-c"
gen_ip=198.18.0.1
cap_ip=198.18.0.2

# Runs a command in the capture end's namespace (root namespace: as is).
in_cap() {
    if [ -e "/run/netns/$cap_ns" ]; then
        ip netns exec "$cap_ns" "$@"
    else
        "$@"
    fi
}

down() {
    # Deleting one end of a veth deletes the other.
    if [ -e "/run/netns/$cap_ns" ]; then
        ip -n "$cap_ns" link del "$cap_if" 2>/dev/null || true
        ip netns del "$cap_ns" 2>/dev/null || true
    fi
    ip link del "$cap_if" 2>/dev/null || true
    if [ -e "/run/netns/$gen_ns" ]; then
        ip -n "$gen_ns" link del "$gen_if" 2>/dev/null || true
        ip netns del "$gen_ns" 2>/dev/null || true
    fi
}

up() {
    if [ -e "/run/netns/$gen_ns" ] || ip link show "$cap_if" >/dev/null 2>&1; then
        echo "lab.sh: a lab named $name exists already (scripts/lab.sh down --name $name)" >&2
        exit 1
    fi
    trap 'status=$?; if [ $status -ne 0 ]; then echo "lab.sh: up failed, removing $name" >&2; down; fi' EXIT
    ip netns add "$gen_ns"
    ip link add "$cap_if" numtxqueues "$queues" numrxqueues "$queues" type veth \
        peer name "$gen_if" numtxqueues "$queues" numrxqueues "$queues" netns "$gen_ns"
    if [ $capture_ns = 1 ]; then
        ip netns add "$cap_ns"
        ip link set "$cap_if" netns "$cap_ns"
    fi
    # Before the links go up: no IPv6, so no neighbour discovery / MLD frames.
    in_cap sysctl -qw "net.ipv6.conf.$cap_if.disable_ipv6=1"
    ip netns exec "$gen_ns" sysctl -qw "net.ipv6.conf.$gen_if.disable_ipv6=1"
    in_cap ip link set "$cap_if" mtu "$mtu"
    ip -n "$gen_ns" link set "$gen_if" mtu "$mtu"
    in_cap ip addr add "$cap_ip/30" dev "$cap_if"
    ip -n "$gen_ns" addr add "$gen_ip/30" dev "$gen_if"
    ip -n "$gen_ns" link set lo up
    in_cap ip link set "$cap_if" up
    ip -n "$gen_ns" link set "$gen_if" up
    in_cap ethtool -K "$cap_if" gro on >/dev/null
    local cap_mac gen_mac
    cap_mac=$(in_cap cat "/sys/class/net/$cap_if/address")
    gen_mac=$(ip netns exec "$gen_ns" cat "/sys/class/net/$gen_if/address")
    trap - EXIT
    echo "LAB_NAME=$name"
    echo "GEN_NS=$gen_ns"
    echo "GEN_IF=$gen_if"
    if [ $capture_ns = 1 ]; then echo "CAP_NS=$cap_ns"; else echo "CAP_NS="; fi
    echo "CAP_IF=$cap_if"
    echo "GEN_IP=$gen_ip"
    echo "CAP_IP=$cap_ip"
    echo "GEN_MAC=$gen_mac"
    echo "CAP_MAC=$cap_mac"
    echo "QUEUES=$queues"
}

case "$action" in
up) up ;;
down) down ;;
*) usage ;;
esac
