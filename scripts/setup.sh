#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: Debian packages, a virtual environment in .venv,
# the CPU build of torch where no GPU is present, then microcond with its test extras.
# Re-running is cheap: each step is skipped when its result is already there.
# MICROCOND_BENCH_DATA=1 also installs the photographs benchmarks/bench_effective.py measures on.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# Pillow renders the emoji font through raqm, which loads fribidi at run time. The tests upscale
# with ImageMagick (one of the resizers the effective-size estimator knows).
APT_PACKAGES=(fonts-noto-color-emoji unicode-data libraqm0 libfribidi0 imagemagick)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "${MICROCOND_BENCH_DATA:-0}" = 1 ]; then
  VENV="$VENV" bash scripts/bench-data.sh
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

stamp="$VENV/.microcond-setup"
want=$(cat pyproject.toml requirements.lock scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
  # A bare "torch" requirement pulls a multi-GB CUDA build; without a GPU take the CPU build.
  # Override with TORCH_INSTALL, e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
  if [ -n "${TORCH_INSTALL:-}" ]; then
    torch_spec=($TORCH_INSTALL)
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    torch_spec=(torch)
  else
    torch_spec=(torch==2.13.0)
  fi
  echo "setup: installing ${torch_spec[*]}"
  "${PIP[@]}" install "${torch_spec[@]}"
fi

echo "setup: installing microcond and its dependencies"
"${PIP[@]}" install -c requirements.lock -e ".[test]"
echo "$want" > "$stamp"
