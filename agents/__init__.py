"""ADRS: discover scheduling policies by search against the simulator, and verify them.

``evaluate(program_path)`` (the evaluator, :mod:`gpuos.agents.evaluator`) is the product;
:mod:`gpuos.agents.gp` is the offline search engine, :mod:`gpuos.agents.search` the run loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def evaluate(program_path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Score a candidate policy file; see :func:`gpuos.agents.evaluator.evaluate`."""
    from gpuos.agents.evaluator import evaluate as run

    return run(program_path, **kwargs)


__all__ = ["evaluate"]
