#!/usr/bin/env bash
# The test suite: formatting, lints, API docs without broken links, unit/property/integration
# tests (release build, so the corpus replays are quick), the release binary scored against
# the tshark oracles, then a short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace --release
scripts/agree.sh
scripts/fuzz.sh 25
