"""The held-out protocol: judge a policy file on traces no search saw, the same way for anyone.

``verify(source, objective, specs)`` is what ``gpuosctl evolve --verify POLICY.py --objective O
--trace FILE...`` runs, and what a search runs on its held-out windows at the end:

1. a fresh secret masks the traces (salted ids, secret estimate noise; agents/masking.py), and
   every baseline runs on the same masked traces as the candidate;
2. the candidate runs in its own process (agents/sandbox.py) and must be valid (validity.py:
   starvation, tenant fairness, monotone priority, the cluster model's checks);
3. its gain is measured against the **single best baseline** over these traces (the one policy
   a user would otherwise have picked: the best geometric mean over all of them, chosen with
   hindsight on the held-out traces themselves, which favours the baseline), per trace
   ``baseline / candidate``, with a bootstrap 95% interval over traces (stats.py); the gain
   against the best baseline *per trace* (an oracle no user has) is reported beside it;
4. the guards: every other guard objective against the same single best policy, each at most
   ``GUARD_LOSS`` worse;
5. robustness: the candidate and the single best policy again at the corners of interference
   0.1-0.5 and preemption cost 10-120 s (``ROBUSTNESS``); the gain must keep its sign at each;
6. the ceiling: a clairvoyant policy (agents/ceilings.py, true durations as estimates) shows
   how much room the objective leaves at all.

A policy is worth shipping (``ship``) only if its gain is at least ``SHIP_GAIN`` with the
interval's lower bound above 0, no guard loses more than ``GUARD_LOSS``, and the gain holds at
every robustness corner; ``reasons`` says which of these failed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from gpuos.agents.baselines import Constants
from gpuos.agents.ceilings import ceiling
from gpuos.agents.evaluator import (
    Baselines,
    baseline_makers,
    compute_baselines,
    geomean,
    guard_objectives,
    load_trace_cached,
    score_runs,
)
from gpuos.agents.masking import Secret
from gpuos.agents.objectives import OBJECTIVES, TraceRun, get_objective, simulate
from gpuos.agents.sandbox import run_candidate
from gpuos.agents.stats import Gain, bootstrap_gain
from gpuos.agents.workloads import family
from gpuos.scheduler.sim import SimConfig

SHIP_GAIN = 0.10
GUARD_LOSS = 0.02
# The corners of the cost models a gain must survive (the simulator's defaults sit inside).
ROBUSTNESS: dict[str, SimConfig] = {
    f"interference {i:g}, preemption {p:g} s": SimConfig(interference=i, preemption_cost=p)
    for i in (0.1, 0.5) for p in (10.0, 120.0)
}
VERIFY_TIMEOUT = 3600.0


def _ratios(reference: dict[str, TraceRun], runs: dict[str, TraceRun], metric: str) -> list[float]:
    """Per trace, reference / candidate for ``metric`` (lower is better, so > 1 means the
    candidate wins); a trace where both are 0 is a tie."""
    out = []
    for trace, run in runs.items():
        mine, theirs = run.metrics[metric], reference[trace].metrics[metric]
        out.append(theirs / mine if mine > 0 else (1.0 if theirs <= 0 else math.inf))
    return out


def _gain(reference: dict[str, TraceRun], runs: dict[str, TraceRun], metric: str) -> float:
    ratios = [min(r, 1e6) for r in _ratios(reference, runs, metric)]
    return geomean(ratios) - 1.0


def ship_reasons(gain: Gain, guards: dict[str, float], robust: dict[str, float], invalid: str = "") -> list[str]:
    """Why a result must not ship (empty: it may): the rule of the module docstring."""
    reasons = [f"invalid: {invalid}"] if invalid else []
    if gain.mean < SHIP_GAIN:
        reasons.append(f"gain {gain.mean:+.1%} is under the {SHIP_GAIN:.0%} needed")
    if not gain.holds:
        reasons.append(f"the interval {gain.format()} does not exclude 0")
    reasons += [f"guard {m} loses {-g:.1%} (at most {GUARD_LOSS:.0%})" for m, g in guards.items() if g < -GUARD_LOSS]
    reasons += [f"the gain does not hold at {label} ({g:+.1%})" for label, g in robust.items() if g <= 0]
    return reasons


def verify(
    source: str, objective: str, specs: Sequence[str], *, filename: str = "<candidate>",
    secret: Secret | None = None, robustness: bool = True, timeout: float = VERIFY_TIMEOUT,
    baselines: Baselines | None = None, resamples: int = 10000, jobs: int = 0, tuned: Constants | None = None,
) -> dict[str, Any]:
    """The held-out report for the candidate policy in ``source`` (see the module docstring);
    ``baselines`` must have been computed with ``secret`` on ``specs`` (and ``tuned``) when given.
    ``tuned``: the tunable baselines' constants (tuned on a history's training part; None: those
    tuned on the built-in training set)."""
    get_objective(objective)
    specs = list(specs)
    if not specs:
        raise ValueError("verification needs at least one trace")
    secret = secret or Secret.fresh()
    traces = [load_trace_cached(s, secret) for s in specs]
    base = baselines or compute_baselines(specs, objective, secret=secret, jobs=jobs or os.cpu_count() or 1,
                                          tuned=tuned)
    corners = dict(ROBUSTNESS) if robustness else {}
    outcome = run_candidate(source, traces, filename=filename, timeout=timeout, variants=corners, probe=True)
    if not outcome.ok:
        return {"valid": False, "error": outcome.error, "objective": objective, "ship": False,
                "reasons": [f"invalid: {outcome.error}"]}
    runs = {t: TraceRun.from_json(r) for t, r in outcome.runs.items()}
    scored = score_runs(runs, base, objective, outcome.inversions)
    single, _ = base.single_best(objective)
    reference = {s: base.runs[s][single] for s in specs}
    gain = bootstrap_gain(_ratios(reference, runs, objective), resamples=resamples)
    oracle = {s: base.runs[s][base.best(s, objective)[0]] for s in specs}
    oracle_gain = bootstrap_gain(_ratios(oracle, runs, objective), resamples=resamples)
    guards = {m: _gain(reference, runs, m) for m in guard_objectives(objective)}
    robust: dict[str, float] = {}
    maker = baseline_makers(objective, tuned)[single]
    for label, config in corners.items():
        theirs = {s: simulate(t, maker(), config=config) for s, t in zip(specs, traces, strict=True)}
        mine = {t: TraceRun.from_json(r) for t, r in outcome.variants[label].items()}
        robust[label] = _gain(theirs, mine, objective)
    ceilings = {s: ceiling(t, objective) for s, t in zip(specs, traces, strict=True)}
    families: dict[str, list[str]] = {}
    for s in specs:
        families.setdefault(family(s), []).append(s)
    rows = []
    for s in specs:
        best_policy, best = base.best(s, objective)
        rows.append({
            "trace": s, "family": family(s), "candidate": runs[s].metrics[objective],
            "single_best": reference[s].metrics[objective], "best_human": best, "best_human_policy": best_policy,
            "fifo": base.runs[s]["fifo"].metrics[objective], "ceiling": ceilings[s].metrics[objective],
            "gain": reference[s].metrics[objective] / runs[s].metrics[objective] - 1.0
            if runs[s].metrics[objective] > 0 else 0.0,
        })
    valid = bool(scored["valid"])
    reasons = ship_reasons(gain, guards, robust, "" if valid else str(scored.get("error")))
    return {
        "valid": valid,
        "error": scored.get("error", ""),
        "objective": objective,
        "traces": len(specs),
        "single_best": single,
        "gain": _gain_json(gain),
        "oracle_gain": _gain_json(oracle_gain),
        "families": {f: _gain(reference, {s: runs[s] for s in ss}, objective) for f, ss in families.items()},
        "guards": guards,
        "robustness": robust,
        "ceiling": {"gain_over_single_best": _gain(reference, ceilings, objective)},
        "trivial": {p: _gain(reference, {s: base.runs[s][p] for s in specs}, objective)
                    for p in ("fifo", "random-fit") if p in base.runs[specs[0]]},
        "ship": not reasons,
        "reasons": reasons,
        "rows": rows,
        "metrics": {s: runs[s].metrics for s in specs},
    }


def _gain_json(g: Gain) -> dict[str, float | str]:
    return {"mean": g.mean, "low": g.low, "high": g.high, "text": g.format()}


def format_verdict(report: dict[str, Any]) -> str:
    """The report as a person reads it."""
    objective = report["objective"]
    if "rows" not in report:
        return f"{objective}: INVALID: {report.get('error')}"
    lines = [f"objective {objective} ({OBJECTIVES[objective].description}), {report['traces']} traces; "
             f"single best baseline: {report['single_best']}",
             f"{'trace':<72}{'candidate':>11}{'single':>11}{'best':>11}{'(policy)':>26}{'ceiling':>11}{'gain':>8}"]
    for r in report["rows"]:
        lines.append(f"{r['trace']:<72}{r['candidate']:>11.4g}{r['single_best']:>11.4g}{r['best_human']:>11.4g}"
                     f"{r['best_human_policy']:>26}{r['ceiling']:>11.4g}{r['gain']:>+8.1%}")
    lines += [
        f"gain vs the single best ({report['single_best']}): {report['gain']['text']} (95% bootstrap interval over traces)",
        f"gain vs the best baseline per trace (an oracle): {report['oracle_gain']['text']}",
        "per family: " + ", ".join(f"{f} {g:+.1%}" for f, g in report["families"].items()),
        "guards (vs the single best): " + ", ".join(f"{m} {g:+.1%}" for m, g in report["guards"].items()),
        "robustness: " + (", ".join(f"{label}: {g:+.1%}" for label, g in report["robustness"].items()) or "not run"),
        f"ceiling (clairvoyant) over the single best: {report['ceiling']['gain_over_single_best']:+.1%}",
        "trivial baselines vs the single best: " + ", ".join(f"{p} {g:+.1%}" for p, g in report["trivial"].items()),
        f"valid: {report['valid']}" + (f" ({report['error']})" if report.get("error") else ""),
        "verdict: " + ("SHIP" if report["ship"] else "do not ship: " + "; ".join(report["reasons"])),
    ]
    return "\n".join(lines)
