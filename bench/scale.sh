#!/usr/bin/env bash
# tunekv as its data grows (issue 21): `tunekv bench --scale` at 100k, 1M and 10M keys on a
# release build, in one report (docs/performance.md, "Data beyond memory"). Long: loading 10M
# keys and measuring each size takes tens of minutes and about 5 GB of disk per node; CI runs
# the same code at 100k keys (tests/bench.rs). Extra arguments go to tunekv bench, e.g.
# `bench/scale.sh --keys 1000000 --duration 20s`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tunekv
exec target/release/tunekv bench --scale --keys 10000000 --connections 16 --inflight 16 \
  --duration 30s --out "${OUT:-target/bench-scale}" "$@"
