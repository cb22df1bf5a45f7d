#!/usr/bin/env bash
# Installs what building and testing conntrail needs on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# Forensic tests: tshark selects packets to compare with `extract`; a headless Chromium
# renders the `show --html` page.
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The man pages are checked by rendering them with groff.
command -v groff >/dev/null 2>&1 || need+=(groff-base)
# Fleet export tests: a real JetStream server (single node and a 3-node cluster on loopback).
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
# Live capture: xsk-rs builds libxdp/libbpf with clang and the cc crate (libelf, zlib, m4,
# pkg-config; libpcap-dev as measured in shared/LAB-NOTES.md); the live test and lab scripts
# use ip (network namespaces, veth), ethtool and tcpreplay; scripts/bench-live.sh drives the
# veth lab at full rate with trafgen (netsniff-ng) where there is no kernel pktgen.
# Fuzzing: libfuzzer-sys compiles libFuzzer with the C++ compiler.
# The real-proxy lab of the correlate tests (scripts/proxy-lab.py): HAProxy and nginx.
for pkg in haproxy nginx-light; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
for pkg in clang llvm libelf-dev zlib1g-dev m4 pkg-config libpcap-dev tcpreplay netsniff-ng iproute2 ethtool g++; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
    else
        echo "setup: please install: ${need[*]}" >&2
        exit 1
    fi
fi
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: a Rust toolchain (rustup, stable) is needed: https://rustup.rs" >&2
    exit 1
fi
export PATH="$HOME/.cargo/bin:$PATH"
cargo fetch --locked 2>/dev/null || cargo fetch
# The fuzz targets run with cargo-fuzz on the stable toolchain (scripts/fuzz.sh).
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
