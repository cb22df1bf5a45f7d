#!/usr/bin/env bash
# Live capture throughput on a lab veth: how fast `conntrail run` receives with no drop of its
# own, against the generator's own maximum, and CPU per packet.
#
#   scripts/bench-live.sh [--duration S] [--size BYTES] [--flows N] [--generator G]
#                         [--mode auto|native|generic] [--worker-cpu N] [--gen-cpu N]
#                         [--steps N] [--ring N]
#
# 1. lab.sh makes a veth pair with both ends in namespaces of their own (--capture-ns).
# 2. The generator (scripts/pktgen.sh: kernel pktgen, else trafgen, else tcpreplay) sends
#    as fast as it can for S seconds with nothing attached: its own maximum.
# 3. `conntrail run` starts on the capture end (inside its namespace, the worker pinned to
#    --worker-cpu, the generator to --gen-cpu), and the generator sends as fast as it can
#    again, then at rates found by bisection (--steps runs) between 0 and that maximum.
#    --ring sets the fill and RX rings (descriptors; UMEM frames twice that; default 2048).
#    A run is clean when conntrail counted every frame the generator end sent and the
#    kernel's counters of its socket (rx dropped, rx ring full, fill ring empty) did not
#    move; the `dropped` column is rx dropped + rx ring full (a copy-mode frame lost to an
#    empty fill ring is in rx dropped too). The highest clean rate is reported.
# 4. CPU per packet, three ways: ns/pkt is the worker's busy time (from a batch's arrival
#    to its frames' return, measured per batch; busy_% is its share of the run) over the
#    frames it received: what a packet costs the engine, whatever it spends spinning for
#    the next; ns/pkt_cpu is conntrail's whole CPU time (all threads, /proc/PID/stat, with
#    the poll-mode spinning) over them; ns/pkt_mach the whole machine's busy time
#    (/proc/stat). On a veth in copy mode the kernel's receive work (XDP, the copy into
#    the UMEM) runs in the sender's softirq: it is in the machine's figure only.
#
# Needs root. Prints a table and a summary line per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=5
size=64
flows=1000
generator=auto
mode=auto
worker_cpu=1
gen_cpu=0
steps=6
ring=2048
while [ $# -gt 0 ]; do
    case "$1" in
    --duration) duration=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --flows) flows=$2; shift 2 ;;
    --generator) generator=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --worker-cpu) worker_cpu=$2; shift 2 ;;
    --gen-cpu) gen_cpu=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --ring) ring=$2; shift 2 ;;
    -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-live.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-live.sh: needs root (namespaces, veth, AF_XDP)" >&2; exit 1; }
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo build --release -q -p conntrail
bin=$PWD/target/release/conntrail

name="ctb$$"
out=$(mktemp -d)
run_pid=""
cleanup() {
    if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
        kill -TERM "$run_pid" 2>/dev/null || true
        wait "$run_pid" 2>/dev/null || true
    fi
    scripts/lab.sh down --name "$name"
    rm -rf "$out"
}
trap cleanup EXIT
eval "$(scripts/lab.sh up --name "$name" --capture-ns)"

gen() { # gen RATE -> pktgen.sh's line
    scripts/pktgen.sh --lab "$name" --generator "$generator" --rate "$1" --size "$size" \
        --flows "$flows" --duration "$duration" --cpu "$gen_cpu"
}
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
stats() { # the total of the stats file: packets drops busy_ns
    python3 - "$out/live.log.stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
p = sum(x["packets"] for x in s["sockets"])
# In copy mode a frame lost for want of a fill-ring entry counts in both rx_dropped and
# fill_ring_empty; in zero-copy mode the driver's own counters have it and fill_ring_empty
# only says the ring ran dry. Drops are rx_dropped + rx_ring_full; a run is clean only when
# fill_ring_empty did not move either.
k = sum(x["kernel"]["rx_dropped"] + x["kernel"]["rx_ring_full"] for x in s["sockets"])
e = sum(x["kernel"]["fill_ring_empty"] for x in s["sockets"])
b = sum(x.get("busy_ns", 0) for x in s["sockets"])
print(p, k, b, e)
PY
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$run_pid/stat"; }
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
tck=$(getconf CLK_TCK)

echo "lab $name: generator end $GEN_IF in $GEN_NS, capture end $CAP_IF in $CAP_NS;" \
    "size $size B, $flows flows, $duration s per run; generator on CPU $gen_cpu, worker on CPU $worker_cpu"

alone=$(gen 0)
gen_max=$(field sent_pps "$alone")
echo "generator alone: $alone"

cat >"$out/live.toml" <<EOF
[table]
capacity = 131072

[ring]
dir = "$out"

[[capture]]
interface = "$CAP_IF"
queues = [0]
cores = [$worker_cpu]
mode = "$mode"
fill_ring = $ring
rx_ring = $ring
frames = $((ring * 2))
EOF
ip netns exec "$CAP_NS" "$bin" run --config "$out/live.toml" --log "$out/live.log" \
    >"$out/run.out" 2>"$out/run.err" &
run_pid=$!
for _ in $(seq 100); do
    [ -s "$out/live.log.stats.json" ] && break
    kill -0 "$run_pid" 2>/dev/null || { cat "$out/run.err" >&2; exit 1; }
    sleep 0.1
done
head -1 "$out/run.out"

printf '%-10s %10s %10s %8s %6s %7s %9s %9s %11s %11s\n' target_pps sent_pps received dropped clean cpu_% busy_% ns/pkt ns/pkt_cpu ns/pkt_mach
measure() { # measure RATE -> sets sent_pps clean
    local line p0 k0 w0 e0 p1 k1 w1 e1 c0 c1 b0 b1 sent recv drop
    read -r p0 k0 w0 e0 < <(stats)
    c0=$(cpu_ticks)
    b0=$(busy_ticks)
    line=$(gen "$1")
    sleep 2.5 # two publications of the stats file
    c1=$(cpu_ticks)
    b1=$(busy_ticks)
    read -r p1 k1 w1 e1 < <(stats)
    sent=$(field sent "$line")
    sent_pps=$(field sent_pps "$line")
    recv=$((p1 - p0))
    drop=$((k1 - k0))
    clean=no
    [ "$drop" = 0 ] && [ "$e1" = "$e0" ] && [ "$recv" -ge "$sent" ] && clean=yes
    awk -v r="$1" -v s="$sent_pps" -v n="$recv" -v d="$drop" -v c="$clean" \
        -v cpu="$((c1 - c0))" -v busy="$((b1 - b0))" -v w="$((w1 - w0))" -v tck="$tck" \
        -v dur="$duration" 'BEGIN {
        secs = cpu / tck
        printf "%-10s %10.0f %10d %8d %6s %7.1f %9.1f %9.0f %11.0f %11.0f\n", (r == 0 ? "max" : r), s,
            n, d, c, 100 * secs / (dur + 2.5), 100 * w / 1e9 / dur, (n ? w / n : 0),
            (n ? secs * 1e9 / n : 0), (n ? busy / tck * 1e9 / n : 0)
    }'
}

measure 0
with_max=${sent_pps%.*}
best=0
if [ "$clean" = yes ]; then
    best=$with_max
    note="(the generator is the limit)"
else
    lo=0
    hi=$with_max
    for _ in $(seq "$steps"); do
        mid=$(((lo + hi) / 2))
        measure "$mid"
        if [ "$clean" = yes ]; then
            lo=$mid
            [ "${sent_pps%.*}" -gt "$best" ] && best=${sent_pps%.*}
        else
            hi=$mid
        fi
    done
    note="(bisection between 0 and $with_max pps)"
fi

kill -TERM "$run_pid"
wait "$run_pid" || true
run_pid=""
echo
grep -E "^(packets|flows|elapsed)|kernel rx dropped" "$out/run.out" || true
echo
echo "generator alone (nothing attached): $gen_max pps"
echo "generator with conntrail attached:  $with_max pps"
echo "highest clean rate (no drop of conntrail's own, every frame counted): $best pps $note"
