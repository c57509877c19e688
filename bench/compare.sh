#!/usr/bin/env bash
# tunekv side by side with etcd (3 members) and Redis on this machine, in one run.
# Installs Debian's etcd-server and redis-server if missing (without starting their services),
# builds tunekv in release mode, and runs `tunekv bench --compare etcd,redis`.
# Extra arguments go to tunekv bench, e.g. `bench/compare.sh --duration 20s --connections 32`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q etcd-server redis-server
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
cargo build --release -p tunekv
exec target/release/tunekv bench --compare etcd,redis --out "${OUT:-target/bench-compare}" "$@"
