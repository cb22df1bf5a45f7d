#!/usr/bin/env bash
# Whole-process replay speed of conntrail against peer flow tools on one synthetic capture.
#
# usage: scripts/bench-replay.sh [--flows N] [--packets M] [--runs R] [--install]
#   --flows N     concurrent flows in the capture (default 50000)
#   --packets M   packets in the capture, approximately (default 1000000)
#   --runs R      runs of each tool; the median wall time is reported (default 3)
#   --install     apt-get install the peer tools that are missing (root only)
#
# The capture comes from `conntrail synth --seed 1` into target/bench/ and is reused when one
# with the same parameters is there. Each tool reads it from a warm page cache, one process
# per run: `conntrail replay --workers 1`, `nfpcapd -r` (nfdump) and `tcptrace -n`. Prints a
# Markdown table: packets/s (median), wall time, peak RSS (with GNU time installed) and
# conntrail's packets/s over each tool's.
set -euo pipefail
cd "$(dirname "$0")/.."

flows=50000
packets=1000000
runs=3
install=0
while [ $# -gt 0 ]; do
    case "$1" in
    --flows) flows=$2; shift 2 ;;
    --packets) packets=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --install) install=1; shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-replay: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$flows" "$packets" "$runs"; do
    case "$n" in '' | *[!0-9]*) echo "bench-replay: not a number: $n" >&2; exit 2 ;; esac
done
[ "$runs" -ge 1 ] || { echo "bench-replay: --runs must be at least 1" >&2; exit 2; }

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

if [ "$install" = 1 ]; then
    missing=()
    command -v nfpcapd >/dev/null 2>&1 || missing+=(nfdump)
    command -v tcptrace >/dev/null 2>&1 || missing+=(tcptrace)
    [ -x /usr/bin/time ] || missing+=(time)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
        else
            echo "bench-replay: --install needs root; missing: ${missing[*]}" >&2
        fi
    fi
fi

cargo build --release --quiet
bin=target/release/conntrail
dir=target/bench
mkdir -p "$dir"

# The capture, reused when the same parameters made it.
pcap=$dir/synth-f$flows-p$packets-s1.pcap
stamp=$pcap.synth.txt
if [ ! -s "$pcap" ] || [ ! -s "$stamp" ]; then
    rm -f "$pcap" "$stamp"
    "$bin" synth -o "$pcap" --flows "$flows" --packets "$packets" --seed 1 >"$stamp.tmp"
    mv "$stamp.tmp" "$stamp"
fi
count=$(sed -n 's/^packets: *\([0-9][0-9]*\)$/\1/p' "$stamp" | head -n 1)
[ -n "$count" ] || { echo "bench-replay: no 'packets: N' line in $stamp" >&2; exit 1; }
cat "$pcap" >/dev/null # warm the page cache

# Runs "$@" once; prints "wall_seconds peak_rss_kib" (rss "-" without GNU time).
measure() {
    local t0 t1 rss=- tf
    tf=$(mktemp)
    t0=$(date +%s%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f '%M' -o "$tf" "$@" >/dev/null 2>&1 || { rm -f "$tf"; return 1; }
        rss=$(tail -n 1 "$tf")
    else
        "$@" >/dev/null 2>&1 || { rm -f "$tf"; return 1; }
    fi
    t1=$(date +%s%N)
    rm -f "$tf"
    awk -v a="$t0" -v b="$t1" -v r="$rss" 'BEGIN { printf "%.4f %s\n", (b - a) / 1e9, r }'
}

# Median of the numbers on stdin.
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Runs tool $1 ($2...: command, with @OUT@ replaced by a fresh output path) $runs times;
# prints "median_wall max_rss_kib".
bench() {
    local name=$1 out walls="" rss_max=- line wall rss
    shift
    for _ in $(seq "$runs"); do
        out=$dir/out-$name
        rm -rf "$out" "$out".*
        local cmd=()
        for a in "$@"; do cmd+=("${a//@OUT@/$out}"); done
        if [ "$name" = nfpcapd ]; then mkdir -p "$out"; fi
        line=$(measure "${cmd[@]}") || { echo "failed"; return 0; }
        read -r wall rss <<<"$line"
        walls+="$wall"$'\n'
        if [ "$rss" != - ] && { [ "$rss_max" = - ] || [ "$rss" -gt "$rss_max" ]; }; then
            rss_max=$rss
        fi
    done
    rm -rf "$dir/out-$name" "$dir/out-$name".*
    echo "$(printf '%s' "$walls" | median) $rss_max"
}

nfpcapd_out=-w
if command -v nfpcapd >/dev/null 2>&1 && ! nfpcapd -h 2>&1 | grep -q -- '-w '; then
    nfpcapd_out=-l # nfdump before 1.7
fi

tools=(conntrail nfpcapd tcptrace)
declare -A result
result[conntrail]=$(bench conntrail "$bin" replay --workers 1 --log @OUT@.log "$pcap")
if command -v nfpcapd >/dev/null 2>&1; then
    result[nfpcapd]=$(bench nfpcapd nfpcapd -r "$pcap" "$nfpcapd_out" @OUT@)
else
    result[nfpcapd]="not installed"
fi
if command -v tcptrace >/dev/null 2>&1; then
    result[tcptrace]=$(bench tcptrace tcptrace -n "$pcap")
else
    result[tcptrace]="not installed"
fi

cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
echo "## Replay speed: $count packets, $flows flows ($(basename "$pcap"), $(du -h "$pcap" | cut -f1))"
echo
echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r). Median of $runs runs," \
    "whole process, warm page cache."
echo
echo "| tool | packets/s (median) | wall s | peak RSS MiB | conntrail pps / tool pps |"
echo "|---|---:|---:|---:|---:|"
read -r c_wall _ <<<"${result[conntrail]}"
for t in "${tools[@]}"; do
    r=${result[$t]}
    case "$r" in
    "not installed" | failed) echo "| $t | $r | | | |"; continue ;;
    esac
    read -r wall rss <<<"$r"
    awk -v t="$t" -v n="$count" -v w="$wall" -v r="$rss" -v cw="${c_wall:-}" 'BEGIN {
        pps = w > 0 ? n / w : 0
        mib = r == "-" ? "" : sprintf("%.1f", r / 1024)
        ratio = (cw ~ /^[0-9.]+$/ && cw > 0 && w > 0) ? sprintf("%.2f", w / cw) : ""
        printf "| %s | %.0f | %.3f | %s | %s |\n", t, pps, w, mib, ratio }'
done
