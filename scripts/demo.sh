#!/usr/bin/env bash
# Quick start, command 1: set up (idempotent), then run the demo. Extra arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/microcond demo "$@"
