#!/usr/bin/env bash
# What benchmarks/bench_effective.py measures on: Debian's plasma-workspace-wallpapers (about 90 MB
# of photographs under /usr/share/wallpapers) and ImageMagick, and in the virtual environment
# (when there is one) the other resizer libraries it compares: OpenCV and libvips (as the `bench`
# extra lists them). Idempotent: installs nothing that is there. scripts/setup.sh runs this when
# MICROCOND_BENCH_DATA=1.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in plasma-workspace-wallpapers imagemagick; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench-data: installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
VENV=${VENV:-.venv}
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import cv2, pyvips' >/dev/null 2>&1; then
  echo "bench-data: installing OpenCV and libvips for Python"
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install -c requirements.lock opencv-python-headless pyvips-binary pyvips
fi
