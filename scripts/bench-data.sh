#!/usr/bin/env bash
# Photographs for benchmarks/bench_effective.py: Debian's plasma-workspace-wallpapers (about 90 MB
# under /usr/share/wallpapers). Idempotent: installs nothing when the package is there.
# scripts/setup.sh runs this when MICROCOND_BENCH_DATA=1.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! dpkg -s plasma-workspace-wallpapers >/dev/null 2>&1; then
  echo "bench-data: installing plasma-workspace-wallpapers"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends plasma-workspace-wallpapers >/dev/null
fi
