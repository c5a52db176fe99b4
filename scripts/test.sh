#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check CI runs: lint, types, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy gpuos scheduler
.venv/bin/python -m pytest -q "$@"
