#!/usr/bin/env bash
# The sdxl preset on an NVIDIA GPU: full and LoRA fine-tuning of random SDXL-architecture UNets
# (bf16, gradient checkpointing off and on), a resume, the exports and a probe, each case's peak
# GPU memory and images/s beside the memory plan. Set-up as the quick start (a CUDA torch where a
# GPU is present); extra arguments go to benchmarks/gpu_check.py (--sizes, --steps, --batch, --out).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python benchmarks/gpu_check.py "$@"
