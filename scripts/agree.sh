#!/usr/bin/env bash
# Replays every corpus capture with the release binary (--record all) and scores
# `show --json` against the tshark oracles with ../shared/tools/agree.py, and the TCP analysis
# counters and largest stall against tshark with ../shared/tools/counters.py (each fails
# under 99 %).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=../shared/corpus/real
bin=${CARGO_TARGET_DIR:-target}/release/conntrail
[ -x "$bin" ] || cargo build --release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in "$corpus"/*.pcap "$corpus"/*.pcapng; do
    [ -f "$f" ] || continue
    n=$(basename "$f")
    "$bin" replay --record all --workers 1 --log "$out/$n.log" "$f" >/dev/null
    "$bin" show --json "$out/$n.log" >"$out/$n.jsonl"
done
python3 ../shared/tools/agree.py "$corpus" "$out" --min 99 "$@"
python3 ../shared/tools/counters.py "$corpus" "$out" --min 99
