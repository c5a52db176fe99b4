"""The evaluator file OpenEvolve loads: scores a candidate policy with gpuos's own evaluator.

OpenEvolve calls ``evaluate_stage1(path)`` (a small scenario) and, for candidates that pass
``evaluator.cascade_thresholds``, ``evaluate_stage2(path)`` (the training traces); without the
cascade it calls ``evaluate(path)``. It passes only the program's path, so the objective, the
traces of each stage and the feature dimensions come from the JSON file named by
``GPUOS_ADRS_CONFIG`` (written by :mod:`gpuos.agents.openevolve_engine`).

Scoring, sandboxing and validity checks all belong to :mod:`gpuos.agents.evaluator`; this file
only converts its dict into OpenEvolve's ``EvaluationResult``: numbers become metrics, text
(per-trace metrics, violations, the error) becomes artifacts that the next prompt shows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openevolve.evaluation_result import EvaluationResult

from gpuos.agents import evaluator

# Feature dimensions OpenEvolve computes from the code itself.
BUILT_IN_FEATURES = frozenset({"complexity", "diversity", "score"})


def feature_dimensions() -> list[str]:
    """The run's MAP-Elites feature dimensions (``feature_dimensions`` in GPUOS_ADRS_CONFIG)."""
    path = os.environ.get(evaluator.CONFIG_ENV)
    return list(json.loads(Path(path).read_text()).get("feature_dimensions", ())) if path else []


def to_result(raw: dict[str, Any], features: Sequence[str] = ()) -> EvaluationResult:
    """gpuos's metrics dict as an EvaluationResult.

    Every feature dimension that OpenEvolve does not compute is present among the metrics
    (OpenEvolve drops a program that lacks one): the evaluator's own value if it gave one, else
    the mean of its per-trace values ``"<trace>/<name>"``, else 0.0 (an invalid candidate).
    """
    raw = dict(raw)
    artifacts = {str(k): str(v) for k, v in (raw.pop("artifacts", None) or {}).items()}
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, (bool, int, float)):
            metrics[key] = float(value)
        else:
            artifacts[key] = str(value)
    for name in features:
        if name in BUILT_IN_FEATURES or name in metrics:
            continue
        per_trace = [v for k, v in metrics.items() if k.endswith("/" + name)]
        metrics[name] = sum(per_trace) / len(per_trace) if per_trace else 0.0
    return EvaluationResult(metrics=metrics, artifacts=artifacts)


def _evaluate(program_path: str, stage: str) -> EvaluationResult:
    # The evaluator reads the objective and the traces of each stage from GPUOS_ADRS_CONFIG.
    return to_result(evaluator.evaluate(program_path, stage=stage), feature_dimensions())


def evaluate(program_path: str) -> EvaluationResult:
    """The full stage on the run's training traces."""
    return _evaluate(program_path, "full")


def evaluate_stage1(program_path: str) -> EvaluationResult:
    """The quick stage: one small scenario, rejecting broken candidates in about a second."""
    return _evaluate(program_path, "quick")


def evaluate_stage2(program_path: str) -> EvaluationResult:
    """The full stage (same as :func:`evaluate`)."""
    return evaluate(program_path)
