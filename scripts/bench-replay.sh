#!/usr/bin/env bash
# Whole-process replay speed of conntrail against peer flow tools, from 1 k to millions of
# concurrent flows, on the same synthetic captures in the same run.
#
# usage: scripts/bench-replay.sh [--flows LIST] [--workers LIST] [--runs R] [--timeout S]
#                                [--peer-packets N] [--tshark-packets N] [--out DIR] [--install]
#   --flows LIST        concurrent flows per capture, comma-separated
#                       (default 1000,10000,100000,1000000)
#   --workers LIST      conntrail worker counts (default 1,2)
#   --runs R            runs of each tool on each capture; medians are reported (default 3)
#   --timeout S         a run taking longer is stopped and reported as such (default 300)
#   --peer-packets N    peers other than tshark skip captures above N packets (default 20000000)
#   --tshark-packets N  tshark reads only the first N packets of each capture (-c N), as it
#                       runs at a few thousand packets/s with -z conv,tcp (default 100000)
#   --out DIR           where the table (replay.md), the data (replay.tsv) and the plot
#                       (replay.svg) go (default target/bench)
#   --install           apt-get install the missing peers and gnuplot (root only)
#
# Captures come from `conntrail synth --seed 1` into target/bench/ and are reused. Each has
# max(1 000 000, 10 x flows) packets requested: synth gives a flow ~9 packets at least and
# frames average ~450-1000 bytes, so 1 M flows make a ~10 M packet, 4.6 GB file and 10 M flows
# would make a ~45 GB one (pass --flows 10000000 where the disk allows). conntrail runs with
# a table of as many slots per worker as the capture has flows. Peers, each where installed:
# nfpcapd -r (nfdump), tcptrace -n, argus -r, tshark -q -z conv,tcp, pmacctd -I (print
# plugin). Each run is one process reading a warm page cache, timed: wall time (bash's clock),
# CPU time (user + sys) and peak RSS (GNU time). The table gives, per tool, the packets it read,
# packets/s over the median wall time and over the median CPU time, and conntrail's
# (one worker) wall-time packets/s over the tool's; a second table, each conntrail thread's
# CPU time over the elapsed time in its median run (from the replay summary).
set -euo pipefail
cd "$(dirname "$0")/.."

flows_list=1000,10000,100000,1000000
workers_list=1,2
runs=3
timeout_s=300
peer_packets=20000000
tshark_packets=100000
out=target/bench
install=0
while [ $# -gt 0 ]; do
    case "$1" in
    --flows) flows_list=$2; shift 2 ;;
    --workers) workers_list=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --peer-packets) peer_packets=$2; shift 2 ;;
    --tshark-packets) tshark_packets=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --install) install=1; shift ;;
    -h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-replay: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
number() {
    case "$1" in '' | *[!0-9]*) echo "bench-replay: not a number: $1" >&2; exit 2 ;; esac
}
IFS=, read -r -a flow_counts <<<"$flows_list"
IFS=, read -r -a worker_counts <<<"$workers_list"
for n in "${flow_counts[@]}" "${worker_counts[@]}" "$runs" "$timeout_s" "$peer_packets" \
    "$tshark_packets"; do
    number "$n"
done
[ "$runs" -ge 1 ] || { echo "bench-replay: --runs must be at least 1" >&2; exit 2; }

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

if [ "$install" = 1 ]; then
    missing=()
    command -v nfpcapd >/dev/null 2>&1 || missing+=(nfdump)
    command -v tcptrace >/dev/null 2>&1 || missing+=(tcptrace)
    command -v argus >/dev/null 2>&1 || missing+=(argus-server)
    command -v tshark >/dev/null 2>&1 || missing+=(tshark)
    command -v pmacctd >/dev/null 2>&1 || missing+=(pmacct)
    command -v gnuplot >/dev/null 2>&1 || missing+=(gnuplot-nox)
    [ -x /usr/bin/time ] || missing+=(time)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq
            echo "wireshark-common wireshark-common/install-setuid boolean false" |
                debconf-set-selections
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${missing[@]}"
        else
            echo "bench-replay: --install needs root; missing: ${missing[*]}" >&2
        fi
    fi
fi
[ -x /usr/bin/time ] || { echo "bench-replay: needs GNU time (apt-get install time)" >&2; exit 1; }

cargo build --release --quiet
bin=target/release/conntrail
dir=target/bench
mkdir -p "$dir" "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs "$@" once under GNU time and `timeout`; prints "wall cpu rss_kib" or fails. Its
# standard output goes to $stdout_to if set (peers' to /dev/null: some print a lot). The
# wall time is bash's microsecond clock around the whole command (GNU time's %e counts in
# hundredths: 10 % of a 0.1 s run); it includes starting time and timeout, ~1 ms.
measure() {
    local tf=$work/time t0 t1
    t0=$EPOCHREALTIME
    if ! /usr/bin/time -f '%U %S %M' -o "$tf" timeout "$timeout_s" "$@" >"${stdout_to:-/dev/null}" 2>"$work/err"; then
        return 1
    fi
    t1=$EPOCHREALTIME
    awk -v t0="$t0" -v t1="$t1" '{ printf "%.4f %.3f %s\n", t1 - t0, $1 + $2, $3 }' "$tf"
}

# Median of the numbers on stdin.
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Runs tool command "$@" (@OUT@ becomes a fresh output directory) $runs times; prints
# "ok median_wall median_cpu max_rss_kib", or "failed" / "timeout". A conntrail run's
# "thread cpu / elapsed" line goes to $work/threads, prefixed by the run's wall time.
bench() {
    local walls="" cpus="" rss_max=0 line wall cpu rss o=$work/out
    : >"$work/threads"
    for _ in $(seq "$runs"); do
        rm -rf "$o" "$o".*
        mkdir -p "$o"
        local cmd=()
        for a in "$@"; do cmd+=("${a//@OUT@/$o}"); done
        # Untimed: some machines page out file pages left idle for a minute (a slow peer's
        # run is enough), and every tool is to read the capture from the page cache.
        cat "$pcap" >/dev/null
        local t0=$SECONDS
        if ! line=$(measure "${cmd[@]}"); then
            if [ $((SECONDS - t0)) -ge "$timeout_s" ]; then echo timeout; else echo failed; fi
            return 0
        fi
        read -r wall cpu rss <<<"$line"
        sed -n "s|^thread cpu / elapsed: |$wall |p" "${stdout_to:-/dev/null}" >>"$work/threads"
        walls+="$wall"$'\n'
        cpus+="$cpu"$'\n'
        [ "$rss" -gt "$rss_max" ] && rss_max=$rss
    done
    rm -rf "$o" "$o".*
    echo "ok $(printf '%s' "$walls" | median) $(printf '%s' "$cpus" | median) $rss_max"
}

tsv=$out/replay.tsv
printf 'flows\tpackets_read\ttool\tresult\twall_s\tcpu_s\trss_kib\n' >"$tsv"
threads_tsv=$out/replay-threads.tsv
printf 'flows\ttool\tthreads\n' >"$threads_tsv"
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" | tr ' ' '\t' >>"$tsv"; }

# Runs peer $1 on $2 packets (skipped when the capture has more than $3) as "$4...", or
# says why not.
peer() {
    local name=$1 read=$2 max=$3
    shift 3
    if ! command -v "$1" >/dev/null 2>&1; then
        row "$flows" "$read" "$name" "not-installed"
    elif [ "$count" -gt "$max" ]; then
        row "$flows" "$read" "$name" "skipped"
    else
        row "$flows" "$read" "$name" "$(bench "$@")"
    fi
}

for flows in "${flow_counts[@]}"; do
    packets=$((flows * 10 > 1000000 ? flows * 10 : 1000000))
    pcap=$dir/synth-f$flows-p$packets-s1.pcap
    stamp=$pcap.synth.txt
    if [ ! -s "$pcap" ] || [ ! -s "$stamp" ]; then
        rm -f "$pcap" "$stamp"
        echo "bench-replay: writing $pcap" >&2
        "$bin" synth -o "$pcap" --flows "$flows" --packets "$packets" --seed 1 >"$stamp.tmp"
        mv "$stamp.tmp" "$stamp"
        rm -f "$pcap.truth.jsonl"
    fi
    count=$(sed -n 's/^packets: *\([0-9][0-9]*\)$/\1/p' "$stamp" | head -n 1)
    [ -n "$count" ] || { echo "bench-replay: no 'packets: N' line in $stamp" >&2; exit 1; }
    echo "bench-replay: $flows flows, $count packets" >&2

    for w in "${worker_counts[@]}"; do
        per_worker=$(((flows + w - 1) / w))
        cfg=$work/conntrail-$w.toml
        printf '[table]\ncapacity = %s\n' "$((per_worker > 1024 ? per_worker : 1024))" >"$cfg"
        row "$flows" "$count" "conntrail-w$w" \
            "$(stdout_to=$work/stdout bench "$bin" replay --config "$cfg" --workers "$w" --log @OUT@/c.log "$pcap")"
        # The thread shares of the run with the median wall time.
        sort -g "$work/threads" | awk -v f="$flows" -v t="conntrail-w$w" '{ l[NR] = $0 }
            END { if (NR) { m = l[int((NR + 1) / 2)]; sub(/^[^ ]* /, "", m)
                printf "%s\t%s\t%s\n", f, t, m } }' >>"$threads_tsv"
    done
    peer nfpcapd "$count" "$peer_packets" nfpcapd -r "$pcap" -w @OUT@
    peer tcptrace "$count" "$peer_packets" tcptrace -n "$pcap"
    peer argus "$count" "$peer_packets" argus -r "$pcap" -w @OUT@/a.argus
    peer pmacctd "$count" "$peer_packets" pmacctd -I "$pcap" -P print -O csv \
        -c src_host,dst_host,src_port,dst_port,proto
    tshark_read=$((count < tshark_packets ? count : tshark_packets))
    peer tshark "$tshark_read" "$count" tshark -n -q -z conv,tcp -c "$tshark_read" -r "$pcap"
done

# The Markdown table.
cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
{
    echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r), $(date -u +%Y-%m-%d)."
    echo "Median of $runs runs, whole process, warm page cache."
    echo
    echo "| flows | packets read | tool | Mpps (wall) | Mpps (CPU) | wall s | CPU s | peak RSS MiB | conntrail-w1 pps / tool pps |"
    echo "|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 {
        if ($4 != "ok") { printf "| %s | %s | %s | %s | | | | | |\n", $1, $2, $3, $4; next }
        pw = $5 > 0 ? $2 / $5 / 1e6 : 0; pc = $6 > 0 ? $2 / $6 / 1e6 : 0
        if ($3 == "conntrail-w1") base[$1] = pw
        ratio = (base[$1] > 0 && pw > 0) ? sprintf("%.1f", base[$1] / pw) : ""
        printf "| %s | %s | %s | %.2f | %.2f | %.3f | %.2f | %.0f | %s |\n",
            $1, $2, $3, pw, pc, $5, $6, $7 / 1024, ratio }' "$tsv"
    echo
    echo "Where conntrail's time goes: each thread's CPU time (user + system) over the elapsed"
    echo "time, in the run with the median wall time. The busiest thread sets the pace."
    echo
    echo "| flows | tool | thread CPU / elapsed |"
    echo "|---:|---|---|"
    awk -F'\t' 'NR > 1 { printf "| %s | %s | %s |\n", $1, $2, $3 }' "$threads_tsv"
} >"$out/replay.md"
cat "$out/replay.md"

# The plot: packets/s (wall) against concurrent flows, one line per tool.
if command -v gnuplot >/dev/null 2>&1; then
    plot=()
    for t in $(awk -F'\t' 'NR > 1 { print $3 }' "$tsv" | awk '!seen[$0]++'); do
        awk -F'\t' -v t="$t" 'NR > 1 && $3 == t && $4 == "ok" && $5 > 0 {
            print $1, $2 / $5 }' "$tsv" >"$work/$t.dat"
        [ -s "$work/$t.dat" ] && plot+=("'$work/$t.dat' using 1:2 with linespoints title '$t'")
    done
    if [ ${#plot[@]} -gt 0 ]; then
        joined=$(printf '%s, ' "${plot[@]}")
        gnuplot <<EOF
set terminal svg size 800,500 dynamic font "sans,12"
set output "$out/replay.svg"
set title "Whole-process replay speed (median of $runs runs, $(nproc) CPUs)"
set xlabel "concurrent flows"
set ylabel "packets per second (wall time)"
set logscale xy
set format y "%.0s%c"
set key outside right
set grid
plot ${joined%, }
EOF
        echo "plot: $out/replay.svg" >&2
    fi
else
    echo "bench-replay: gnuplot not installed, no plot (see --install)" >&2
fi
