#!/usr/bin/env bash
# CPU profiles of tunekv's nodes under a write-only and a read-only workload (perf, cpu-clock
# sampling with call graphs), as text reports and, when inferno is installed
# (`cargo install inferno`), flamegraph SVGs. Needs Debian's linux-perf.
#   bench/profile.sh [OUT_DIR]        (default target/profiles)
# PROFILES picks workloads (default: all four below); SECONDS_PROFILED the seconds sampled.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/profiles}"
SECONDS_PROFILED="${SECONDS_PROFILED:-10}"
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release -p tunekv
BIN=target/release/tunekv
DIR="$(mktemp -d)"
"$BIN" dev --no-demo --fresh --dir "$DIR" >"$OUT/dev.log" 2>&1 &
DEV=$!
cleanup() { kill -INT "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 120); do [ -s "$DIR/cluster.json" ] && break; sleep 0.5; done
sleep 2
PIDS=$(python3 -c "import json,sys; print(','.join(str(n['pid']) for n in json.load(open(sys.argv[1]))['nodes']))" "$DIR/cluster.json")
echo "nodes: $PIDS"
profile() { # name, bench args...
  local name=$1; shift
  "$BIN" bench --cluster "$DIR/cluster.json" --warmup 2s --duration "$((SECONDS_PROFILED + 4))s" \
    --keys 1000 --connections 16 "$@" >"$OUT/$name.bench.txt" 2>&1 &
  local bench=$!
  sleep 4
  perf record -F 499 -g -e cpu-clock -p "$PIDS" -o "$OUT/$name.perf.data" -- sleep "$SECONDS_PROFILED" 2>/dev/null
  wait "$bench"
  perf report -i "$OUT/$name.perf.data" --stdio --no-children --sort symbol --percent-limit 1 \
    -g none 2>/dev/null | grep -v '^$' | sed 's/ *-  *- *$//; s/ *$//' >"$OUT/$name.top.txt"
  perf report -i "$OUT/$name.perf.data" --stdio --children --sort symbol --percent-limit 4 \
    -g none 2>/dev/null | grep -v '^$' | sed 's/ *-  *- *$//; s/ *$//' >"$OUT/$name.inclusive.txt"
  if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$OUT/$name.perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph >"$OUT/$name.svg"
  fi
  echo "$name: $OUT/$name.top.txt"
  grep -A2 '^level' "$OUT/$name.bench.txt" | tail -1
}
PROFILES="${PROFILES:-write read-strong read-eventual resp-get resp-set}"
for p in $PROFILES; do
  case $p in
    write) profile write --levels strong --read-ratio 0 ;;
    read-strong) profile read-strong --levels strong --read-ratio 1 ;;
    read-eventual) profile read-eventual --levels eventual --read-ratio 1 ;;
    resp-get) profile resp-get --protocol resp --levels eventual --read-ratio 1 --inflight 16 ;;
    resp-set) profile resp-set --protocol resp --levels eventual --read-ratio 0 --inflight 16 ;;
    *) echo "unknown profile $p" >&2; exit 2 ;;
  esac
done
