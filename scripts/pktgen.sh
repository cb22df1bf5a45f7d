#!/usr/bin/env bash
# Sends UDP traffic into a lab made by scripts/lab.sh, from its generator end to its capture
# end, and nowhere else.
#
#   scripts/pktgen.sh --lab NAME [--rate PPS] [--size BYTES] [--flows N] [--duration S]
#                     [--generator auto|pktgen|trafgen|tcpreplay|synth] [--pcap FILE]
#                     [--cpu LIST]
#
#   --rate       packets per second in all (0, the default: as fast as it goes)
#   --size       frame size in bytes without the FCS (default 64; minimum 60)
#   --flows      distinct UDP flows (source ports), spread over the queues (default 1000)
#   --duration   seconds (default 10)
#   --generator  auto (default): the kernel's pktgen module if it loads (an appliance
#                kernel), else trafgen (netsniff-ng) if installed, else tcpreplay of a
#                generated capture; `synth` replays a `conntrail synth` capture instead
#                (mixed sizes: --size is ignored); --pcap FILE replays FILE in a loop.
#   --cpu        CPUs the user-space generator may run on (taskset list, e.g. 0)
#
# pktgen gets one kernel thread per lab queue (lab.sh up --queues N), each sending on its
# own transmit queue, which a veth delivers to the same receive queue of the capture end.
# User-space generators send from one process; the kernel spreads their flows over the
# queues by hash.
#
# Addresses: from the generator end (198.18.0.1 and its MAC) to the capture end
# (198.18.0.2 and its MAC), both made by lab.sh inside namespaces it created; replayed
# captures (--pcap, synth) keep their own addresses but only ever cross the lab's veth.
#
# Prints one line: generator=... queues=... size=... flows=... duration_s=... rate_pps=...
# sent=... sent_pps=... tx_dropped=... (sent and dropped counted by the generator end's own
# interface counters, so every generator is measured the same way).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

lab=""
rate=0
size=64
flows=1000
duration=10
generator=auto
pcap=""
cpus=""
while [ $# -gt 0 ]; do
    case "$1" in
    --lab) lab=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --flows) flows=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --generator) generator=$2; shift 2 ;;
    --pcap) pcap=$2; generator=tcpreplay; shift 2 ;;
    --cpu) cpus=$2; shift 2 ;;
    -h | --help) usage ;;
    *) echo "pktgen.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$lab" ] || { echo "pktgen.sh: --lab NAME is required (scripts/lab.sh up --name NAME)" >&2; exit 2; }
for v in rate size flows duration; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "pktgen.sh: --$v must be a whole number" >&2; exit 2; }
done
[ "$size" -ge 60 ] || { echo "pktgen.sh: --size must be at least 60" >&2; exit 2; }
[ "$flows" -ge 1 ] && [ "$flows" -le 50000 ] || { echo "pktgen.sh: --flows must be 1-50000" >&2; exit 2; }
[ "$duration" -ge 1 ] || { echo "pktgen.sh: --duration must be at least 1" >&2; exit 2; }

gen_ns="$lab-gen"
gen_if="$lab-g"
cap_if="$lab-c"
if [ ! -e "/run/netns/$gen_ns" ]; then
    echo "pktgen.sh: no lab $lab (scripts/lab.sh up --name $lab)" >&2
    exit 1
fi
# Only ever the lab's own generator end: it must be a veth inside the lab's namespace.
if [ "$(ip netns exec "$gen_ns" ethtool -i "$gen_if" 2>/dev/null | sed -n 's/^driver: //p')" != veth ]; then
    echo "pktgen.sh: $gen_if in $gen_ns is not the lab's veth end" >&2
    exit 1
fi
in_gen() { ip netns exec "$gen_ns" "$@"; }
if [ -e "/run/netns/$lab-cap" ]; then
    cap_mac=$(ip netns exec "$lab-cap" cat "/sys/class/net/$cap_if/address")
else
    cap_mac=$(cat "/sys/class/net/$cap_if/address")
fi
gen_mac=$(in_gen cat "/sys/class/net/$gen_if/address")
gen_ip=198.18.0.1
cap_ip=198.18.0.2
queues=$(in_gen ls "/sys/class/net/$gen_if/queues" | grep -c '^tx-')

work=$(mktemp -d)
cleanup() {
    [ -n "${gen_pid:-}" ] && kill -INT -- "-$gen_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

pin() {
    if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

counter() { in_gen cat "/sys/class/net/$gen_if/statistics/$1"; }

# A capture of `flows` UDP frames of `size` bytes, one per flow, generator end to capture end.
make_udp_pcap() {
    python3 - "$1" "$gen_mac" "$cap_mac" "$gen_ip" "$cap_ip" "$size" "$flows" <<'PY'
import socket, struct, sys
out, smac, dmac, sip, dip, size, flows = sys.argv[1:8]
size, flows = int(size), int(flows)
mac = lambda m: bytes(int(x, 16) for x in m.split(":"))
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
with open(out, "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    payload = b"\0" * (size - 14 - 20 - 8)
    for i in range(flows):
        udp = struct.pack("!HHHH", 10000 + i, 9, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         socket.inet_aton(sip), socket.inet_aton(dip))
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        frame = mac(dmac) + mac(smac) + b"\x08\x00" + ip + udp
        f.write(struct.pack("<IIII", 0, i, len(frame), len(frame)) + frame)
PY
}

run_pktgen() {
    local pg=/proc/net/pktgen ncpu per_rate per_flows q cpu dev
    ncpu=$(nproc)
    # pktgen's control files are per network namespace: configure it inside the lab's.
    if ! in_gen test -d $pg && ! { modprobe pktgen 2>/dev/null && in_gen test -d $pg; }; then
        echo "pktgen.sh: the kernel's pktgen module is not available here (modprobe pktgen);" \
            "use --generator auto to fall back to a user-space generator" >&2
        exit 1
    fi
    for ((cpu = 0; cpu < ncpu; cpu++)); do
        in_gen bash -c "echo rem_device_all > $pg/kpktgend_$cpu"
    done
    per_rate=$((rate / queues))
    per_flows=$(((flows + queues - 1) / queues))
    for ((q = 0; q < queues; q++)); do
        cpu=$((q % ncpu))
        dev="$gen_if@$q"
        in_gen bash -c "
            echo 'add_device $dev' > $pg/kpktgend_$cpu
            p=$pg/$dev
            echo 'count 0' > \$p
            echo 'clone_skb 0' > \$p
            echo 'burst 1' > \$p
            echo 'pkt_size $((size - 4))' > \$p
            echo 'dst_mac $cap_mac' > \$p
            echo 'src_mac $gen_mac' > \$p
            echo 'dst_min $cap_ip' > \$p
            echo 'dst_max $cap_ip' > \$p
            echo 'src_min $gen_ip' > \$p
            echo 'src_max $gen_ip' > \$p
            echo 'udp_dst_min 9' > \$p
            echo 'udp_dst_max 9' > \$p
            echo 'udp_src_min $((10000 + q * per_flows))' > \$p
            echo 'udp_src_max $((10000 + (q + 1) * per_flows - 1))' > \$p
            echo 'queue_map_min $q' > \$p
            echo 'queue_map_max $q' > \$p
            if [ $per_rate -gt 0 ]; then echo 'ratep $per_rate' > \$p; else echo 'delay 0' > \$p; fi
        "
    done
    setsid ip netns exec "$gen_ns" bash -c "echo start > $pg/pgctrl" &
    gen_pid=$!
    sleep "$duration"
    in_gen bash -c "echo stop > $pg/pgctrl"
    wait "$gen_pid" 2>/dev/null || true
    gen_pid=""
    for ((cpu = 0; cpu < ncpu; cpu++)); do
        in_gen bash -c "echo rem_device_all > $pg/kpktgend_$cpu"
    done
}

run_trafgen() {
    cat >"$work/trafgen.cfg" <<EOF
{
  eth(da=$cap_mac, sa=$gen_mac),
  ipv4(saddr=$gen_ip, daddr=$cap_ip, ttl=64),
  udp(sp=dinc(10000, $((10000 + flows - 1))), dp=9),
  fill(0x00, $((size - 14 - 20 - 8)))
}
EOF
    local args=(--in "$work/trafgen.cfg" --out "$gen_if" --no-sock-mem --cpus 1 -q)
    if [ "$rate" -gt 0 ]; then args+=(--rate "${rate}pps" -n $((rate * duration))); fi
    setsid ip netns exec "$gen_ns" bash -c "exec ${cpus:+taskset -c $cpus} trafgen ${args[*]} >/dev/null 2>&1" &
    gen_pid=$!
    local waited=0
    while kill -0 "$gen_pid" 2>/dev/null && [ $waited -lt $((duration * 10)) ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill -INT -- "-$gen_pid" 2>/dev/null || true
    wait "$gen_pid" 2>/dev/null || true
    gen_pid=""
}

run_tcpreplay() {
    local file=$1 args=(--quiet --preload-pcap --loop=0 --duration="$duration" -i "$gen_if")
    if [ "$rate" -gt 0 ]; then args+=(--pps="$rate"); else args+=(--topspeed); fi
    in_gen bash -c "exec ${cpus:+taskset -c $cpus} tcpreplay ${args[*]} $file" >/dev/null 2>&1 || true
}

if [ "$generator" = auto ]; then
    if { [ -d /proc/net/pktgen ] || modprobe pktgen 2>/dev/null; } && in_gen test -d /proc/net/pktgen; then
        generator=pktgen
    elif command -v trafgen >/dev/null 2>&1; then
        generator=trafgen
    elif command -v python3 >/dev/null 2>&1; then
        generator=tcpreplay
    else
        generator=synth
    fi
fi

tx0=$(counter tx_packets)
drop0=$(counter tx_dropped)
start=$(date +%s.%N)
case "$generator" in
pktgen) run_pktgen ;;
trafgen) run_trafgen ;;
tcpreplay)
    if [ -z "$pcap" ]; then
        pcap="$work/udp.pcap"
        make_udp_pcap "$pcap"
    fi
    run_tcpreplay "$pcap"
    ;;
synth)
    bin=target/release/conntrail
    [ -x "$bin" ] || cargo build --release -q -p conntrail
    "$bin" synth -o "$work/synth.pcap" --flows "$flows" --packets $((flows * 20)) --seed 1 >/dev/null
    size=mixed
    run_tcpreplay "$work/synth.pcap"
    ;;
*) echo "pktgen.sh: unknown generator $generator" >&2; exit 2 ;;
esac
end=$(date +%s.%N)
tx1=$(counter tx_packets)
drop1=$(counter tx_dropped)
sent=$((tx1 - tx0))
awk -v g="$generator" -v q="$queues" -v s="$size" -v f="$flows" -v r="$rate" \
    -v n="$sent" -v d="$((drop1 - drop0))" -v t0="$start" -v t1="$end" 'BEGIN {
    t = t1 - t0
    printf "generator=%s queues=%d size=%s flows=%d duration_s=%.2f rate_pps=%d sent=%d sent_pps=%.0f tx_dropped=%d\n",
        g, q, s, f, t, r, n, n / t, d
}'
