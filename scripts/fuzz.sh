#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (fuzz/README.md; not in CI: CI runs each target's
# bounded unit test). Needs the nightly toolchain and cargo-fuzz,
# which this script installs when missing.
#
#   scripts/fuzz.sh                 # every target, 10 minutes each
#   scripts/fuzz.sh http_request 60 # one target, 60 seconds
#
# Findings land in fuzz/artifacts/TARGET/; reproduce one with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(resp_parse http_request sealed)
if [[ $# -ge 1 ]]; then targets=("$1"); fi
seconds="${2:-600}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${seconds}s"
  cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -max_len=4096
done
