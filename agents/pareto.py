"""GEPA-style selection: keep the candidates that are best somewhere, not only the best overall.

Each evaluated candidate has a score per trace. The Pareto front holds the candidates no other
candidate beats on every trace. Parent selection looks at where the incumbent (best combined
score) fails, i.e. the traces where it trails the best score seen there most, and prefers the
candidates that win on those traces, so the next proposal is built from what worked where the
incumbent did not.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Scored:
    key: str  # identifies the candidate (e.g. its rendered source's hash)
    combined: float
    per_trace: dict[str, float]


def dominates(a: Scored, b: Scored) -> bool:
    """``a`` is at least as good as ``b`` on every trace and better on one."""
    traces = b.per_trace.keys() | a.per_trace.keys()
    ge = all(a.per_trace.get(t, 0.0) >= b.per_trace.get(t, 0.0) for t in traces)
    return ge and any(a.per_trace.get(t, 0.0) > b.per_trace.get(t, 0.0) for t in traces)


def pareto_front(candidates: Sequence[Scored]) -> list[Scored]:
    """The valid candidates no other candidate dominates (first of equal duplicates kept)."""
    valid = [c for c in candidates if c.combined > 0]
    front: list[Scored] = []
    seen: set[tuple[tuple[str, float], ...]] = set()
    for c in valid:
        sig = tuple(sorted(c.per_trace.items()))
        if sig in seen or any(dominates(o, c) for o in valid):
            continue
        seen.add(sig)
        front.append(c)
    return front


def failures(incumbent: Scored, candidates: Sequence[Scored]) -> list[tuple[str, float]]:
    """Traces where ``incumbent`` trails the best score seen there, worst gap first."""
    gaps = []
    for trace, mine in incumbent.per_trace.items():
        best = max((c.per_trace.get(trace, 0.0) for c in candidates), default=mine)
        if best > mine:
            gaps.append((trace, best / mine if mine > 0 else float("inf")))
    return sorted(gaps, key=lambda tg: -tg[1])


def select_parent(candidates: Sequence[Scored], rng: random.Random, explore: float = 0.5) -> Scored:
    """A parent: with probability ``explore`` the front's winner on a trace where the incumbent
    fails (chosen in proportion to the gap), else a size-3 tournament on the combined score."""
    valid = [c for c in candidates if c.combined > 0] or list(candidates)
    incumbent = max(valid, key=lambda c: c.combined)
    front = pareto_front(valid)
    gaps = failures(incumbent, front)
    if gaps and rng.random() < explore:
        weights = [min(g, 10.0) - 1.0 + 1e-6 for _, g in gaps]
        trace = rng.choices([t for t, _ in gaps], weights=weights)[0]
        return max(front, key=lambda c: (c.per_trace.get(trace, 0.0), c.combined))
    return max(rng.sample(valid, min(3, len(valid))), key=lambda c: c.combined)
