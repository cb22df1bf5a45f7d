#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS each (default 25), one after the other, with
# cargo-fuzz on the stable toolchain (no sanitizer: `--sanitizer none`). A crash fails the
# script and leaves its input in fuzz/artifacts/TARGET/. Seeds: the capture corpus in
# ../shared/corpus/real (packet frames), a log replayed from it (log reader), the default
# configuration and fuzz/seeds/ (config, conntrace, ring_recover: ring files written by
# `fuzz/seeds.py ring`). Corpora grow in fuzz/corpus/ (ignored
# by git), so later runs start where earlier ones stopped.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
seconds=${1:-25}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(packet log_reader config conntrace ring_recover)
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing (scripts/setup.sh installs it)" >&2
    exit 1
fi

corpus=../shared/corpus/real
mkdir -p fuzz/corpus/packet fuzz/corpus/log_reader fuzz/corpus/config fuzz/corpus/conntrace \
    fuzz/corpus/ring_recover
if [ -d "$corpus" ] && [ -z "$(ls -A fuzz/corpus/packet)" ]; then
    python3 fuzz/seeds.py fuzz/corpus/packet "$corpus"/*.pcap
fi
if [ -z "$(ls -A fuzz/corpus/log_reader)" ] && [ -f "$corpus/zeek_http_methods.pcap" ]; then
    work=$(mktemp -d)
    printf '[ring]\ndir = "%s"\n[log]\nrotate_bytes = 4096\nmin_free_bytes = 0\n' "$work" >"$work/c.toml"
    cargo run --release --quiet --bin conntrail -- replay --config "$work/c.toml" --record all \
        --log "$work/seed.log" "$corpus/zeek_http_methods.pcap" >/dev/null
    cp "$work/seed.log" fuzz/corpus/log_reader/one-segment
    { cat "$work/seed.log"; printf 'LOG.1'; cat "$work/seed.log.1"; } >fuzz/corpus/log_reader/two-segments
fi
cp -n flowtable/src/default.toml fuzz/corpus/config/default.toml
cp -n fuzz/seeds/config/* fuzz/corpus/config/
cp -n fuzz/seeds/conntrace/* fuzz/corpus/conntrace/
cp -n fuzz/seeds/ring_recover/* fuzz/corpus/ring_recover/

cd fuzz
out=$(mktemp)
trap 'rm -f "$out"; [ -z "${work:-}" ] || rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    echo "fuzz: $target for ${seconds}s"
    if cargo fuzz run --sanitizer none -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$out" 2>&1; then
        grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|average_exec_per_sec))' "$out"
    else
        tail -n 40 "$out" >&2
        echo "fuzz: $target failed; a crash input is kept in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
