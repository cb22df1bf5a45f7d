#!/usr/bin/env bash
# What runtime watches cost a live worker: the time spent testing new connections against
# them, per evaluation, as the worker measures it (`conntrail watch list`), and the
# worker's busy time per packet with and without watches.
#
#   scripts/watch-cost.sh [--flows N] [--packets N] [--watches N]
#
# 1. `conntrail synth` writes a capture of N flows; lab.sh makes a veth pair.
# 2. `conntrail run` on the capture end; the capture is sent once with no watch (the
#    baseline), then N watches are added (`server port P and not net 10.99.0.0/16`,
#    P = 1..N, so every new connection is tested against every watch that does not match
#    first) and the capture is sent again with its addresses unchanged (new connections:
#    the first run's have aged out or closed).
# 3. Prints `watch list` and, per pass, the worker's busy ns per packet (stats file).
#    ns/eval is measured around each test (two clock reads included); the busy figures of
#    the two passes are only indicative: tcpreplay at top speed into a veth delivers a
#    different share of the capture each time on a loaded machine.
#
# Needs root. Everything is removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

flows=20000
packets=200000
watches=4
while [ $# -gt 0 ]; do
    case "$1" in
    --flows) flows=$2; shift 2 ;;
    --packets) packets=$2; shift 2 ;;
    --watches) watches=$2; shift 2 ;;
    *) sed -n '2,8p' "$0" >&2; exit 2 ;;
    esac
done

cargo build --release -q -p conntrail
bin=target/release/conntrail
dir=$(mktemp -d /tmp/conntrail-watch-cost.XXXXXX)
name="wc$$"
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    bash scripts/lab.sh down --name "$name" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
eval "$(bash scripts/lab.sh up --name "$name")"
"$bin" synth -o "$dir/c.pcap" --flows "$flows" --packets "$packets" --duration-s 5 >/dev/null
cat >"$dir/c.toml" <<TOML
[table]
capacity = $((flows * 2))
[timeouts]
tcp_closed_s = 0.5
udp_s = 0.5
tcp_established_s = 1.0
tcp_syn_s = 1.0
icmp_s = 0.5
[ring]
dir = "$dir"
[[capture]]
interface = "$CAP_IF"
queues = [0]
TOML
"$bin" run --config "$dir/c.toml" --log "$dir/l.log" >"$dir/run.out" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q '^running:' "$dir/run.out" && break; sleep 0.1; done
busy() { # packets busy_ns
    sleep 1.5
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["sockets"][0]; print(s["packets"], s["busy_ns"])' "$dir/l.log.stats.json"
}
send() { ip netns exec "$GEN_NS" tcpreplay --topspeed -q -i "$GEN_IF" "$dir/c.pcap" >/dev/null 2>&1; }
read -r p0 b0 < <(busy)
send
sleep 2
read -r p1 b1 < <(busy)
for i in $(seq "$watches"); do
    "$bin" watch add "server port $i and not net 10.99.0.0/16" --log "$dir/l.log" >/dev/null
done
send
read -r p2 b2 < <(busy)
"$bin" watch list --log "$dir/l.log"
awk -v p0="$p0" -v b0="$b0" -v p1="$p1" -v b1="$b1" -v p2="$p2" -v b2="$b2" -v w="$watches" 'BEGIN {
    printf "no watch:  %d packets, busy %.1f ns/pkt\n", p1 - p0, (b1 - b0) / (p1 - p0);
    printf "%d watches: %d packets, busy %.1f ns/pkt\n", w, p2 - p1, (b2 - b1) / (p2 - p1);
}'
