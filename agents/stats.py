"""How sure a gain is: a geometric-mean gain over traces with a bootstrap confidence interval.

A policy's gain on one trace is a ratio, baseline / candidate, of an objective where lower is
better (1.25 = the candidate is 25% better there). Over a set of traces the gain is the
geometric mean of the ratios minus one, and its interval comes from resampling the traces with
replacement (a percentile bootstrap; the pairing of candidate and baseline on one trace is kept,
since each ratio already compares the two on the same trace). A gain with one window at +63%
and five within 0.1% then shows an interval that reaches down to about zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gain:
    """A gain (0.041 = 4.1% better) and its confidence interval at ``level``."""

    mean: float
    low: float
    high: float
    level: float = 0.95
    traces: int = 0

    @property
    def holds(self) -> bool:
        """Whether the whole interval is a gain (its lower bound is above zero)."""
        return self.low > 0

    def format(self) -> str:
        """``+4.1% [+0.8%, +7.5%]``."""
        return f"{self.mean:+.1%} [{self.low:+.1%}, {self.high:+.1%}]"


def bootstrap_gain(
    ratios: Sequence[float], *, resamples: int = 10000, seed: int = 0, level: float = 0.95
) -> Gain:
    """The geometric-mean gain of per-trace ``ratios`` (baseline / candidate) with a percentile
    bootstrap interval over traces. Deterministic for a given ``seed``.

    Raises ValueError for no ratios, a ratio that is not a positive number, or a ``level``
    outside (0, 1).
    """
    if not ratios:
        raise ValueError("no ratios: a gain needs at least one trace")
    if not all(math.isfinite(r) and r > 0 for r in ratios):
        raise ValueError(f"ratios must be positive numbers, got {list(ratios)}")
    if not 0 < level < 1:
        raise ValueError(f"level {level} is outside (0, 1); e.g. 0.95")
    if resamples < 1:
        raise ValueError(f"resamples {resamples} is below 1")
    logs = np.log(np.asarray(ratios, dtype=float))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(logs), size=(resamples, len(logs)))
    means = logs[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Gain(
        mean=math.expm1(float(logs.mean())),
        low=math.expm1(float(low)),
        high=math.expm1(float(high)),
        level=level,
        traces=len(logs),
    )
