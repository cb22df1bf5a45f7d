#!/usr/bin/env bash
# A two-minute tour: build, synthesise a capture of 200 concurrent flows with known
# anomalies (ground truth beside it), replay it, and show the records conntrail kept.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

bin=target/release/conntrail
out=target/demo
cargo build --release
mkdir -p "$out"
rm -f "$out"/demo.log*

"$bin" synth -o "$out/demo.pcap" --flows 200 --packets 4000 --seed 1
replay=$("$bin" replay --log "$out/demo.log" "$out/demo.pcap")
echo "$replay"
echo
# `show` may stop early when head has read enough; that is not an error.
"$bin" show "$out/demo.log" | head -n 80 || true

records=$(sed -n 's/^records: *//p' <<<"$replay")
flows=$(sed -n 's/^flows: *//p' <<<"$replay")
echo
echo "Shown: the first 80 lines of the ${records:-?} records conntrail kept out of" \
    "${flows:-?} flows; the truth of every flow is in $out/demo.pcap.truth.jsonl."
