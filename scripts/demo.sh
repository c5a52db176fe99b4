#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the demo: gpuosd on simulated GPUs with a mixed trace-drawn batch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
