#!/usr/bin/env bash
# Create .venv and install gpuos with what the demo and the tests need.
# torch is pinned: a looser requirement pulls a multi-GB CUDA build where a CPU build suffices.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,kernels]"
