"""Baselines that are hard to beat: the human policies, their order x placement combinations,
and the tunable ones with their constants tuned on the training set.

A human policy is trusted code, so tuning simulates it in this process. Each tunable policy has
a :class:`~gpuos.agents.gp.ParamSpace` over its class constants; :func:`tune` runs a seeded
search (random draws, then mutations of the best) on training workloads only and returns the
best constants; :func:`tuned_policy` makes a policy with them. Tuned constants are stored per
objective as JSON under ``agents/tuned/`` with the command and the specs that made them, and
:func:`baseline_set` reads them back.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpuos.agents.gp import Param, ParamSpace
from gpuos.agents.objectives import get_objective, simulate
from gpuos.agents.workloads import load_workload
from gpuos.scheduler import available
from gpuos.scheduler.policy import Policy

TUNED_DIR = Path(__file__).resolve().parent / "tuned"

# The constants each tunable human policy has (fgd, best-fit and the rest have none).
SPACES: dict[str, ParamSpace] = {
    "tiresias": ParamSpace(
        "gpuos.scheduler.policies.tiresias", "Tiresias",
        (Param("thresholds", 300.0, 100_000.0, 0), Param("thresholds", 1000.0, 1_000_000.0, 1),
         Param("promote_knob", 0.5, 64.0)),
        defaults={"thresholds[0]": 3250.0, "thresholds[1]": 7200.0, "promote_knob": 8.0},
    ),
    "srtf": ParamSpace(
        "gpuos.scheduler.policies.srtf", "ShortestRemainingTimeFirst",
        (Param("margin", 1.0, 16.0),), defaults={"margin": 2.0},
    ),
    "gandiva": ParamSpace(
        "gpuos.scheduler.policies.gandiva", "Gandiva",
        (Param("slice_seconds", 5.0, 900.0),), defaults={"slice_seconds": 60.0},
    ),
}
COMBINED = ("srtf+bestfit", "srtf+fgd", "priority+bestfit", "priority+fgd", "tiresias+bestfit", "tiresias+fgd")


def _constants(space: ParamSpace, values: dict[str, float], base: type[Policy]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in space.params:
        if p.index >= 0:
            items = list(out.get(p.attr, getattr(base, p.attr)))
            items[p.index] = values[p.label]
            out[p.attr] = tuple(sorted(items)) if space.sorted_tuples else tuple(items)
        else:
            out[p.attr] = values[p.label]
    return out


def tuned_policy(name: str, values: dict[str, float], label: str = "tuned") -> Policy:
    """Policy ``name`` with its class constants set to ``values`` (labels as in its space),
    named ``<name>@<label>``."""
    base = available()[name]
    attrs = _constants(SPACES[name], values, base)
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    cls = type(f"{base.__name__}Tuned", (base,), {
        **attrs, "__module__": __name__, "name": f"{name}@{label}",
        "description": f"{base.description} ({shown})",
        "provenance": f"{base.provenance}; constants tuned on the training set",
    })
    return cls()


def _score(policy: Policy, traces: Sequence[Any], objective: str, reference: Sequence[float]) -> float:
    """Geometric mean over traces of the metric relative to the defaults' (lower is better)."""
    measure = get_objective(objective)
    logs = []
    for trace, ref in zip(traces, reference, strict=True):
        run = simulate(trace, policy)
        logs.append(math.log(max(run.metrics[measure.name], 1e-12) / max(ref, 1e-12)))
    return math.exp(sum(logs) / len(logs))


def tune(policy: str, specs: Sequence[str], objective: str, *, trials: int, seed: int) -> dict[str, float]:
    """The constants of ``policy`` that score best on ``specs`` (training workloads only) in
    ``trials`` seeded simulations per spec: half random draws, half mutations of the best; the
    defaults are the first trial, so the answer is never worse than them on ``specs``."""
    space = SPACES[policy]
    rng = random.Random(seed)
    traces = [load_workload(s) for s in specs]
    reference = [simulate(t, policy).metrics[objective] for t in traces]
    best, best_score = dict(space.defaults), 1.0
    for trial in range(1, trials):
        values = space.sample(rng) if trial < trials // 2 else space.mutate(best, rng)
        score = _score(tuned_policy(policy, values), traces, objective, reference)
        if score < best_score:
            best, best_score = values, score
    return best


def save_tuned(objective: str, tuned: dict[str, dict[str, float]], specs: Sequence[str], command: str,
               gains: dict[str, float]) -> Path:
    path = TUNED_DIR / f"{objective}.json"
    path.write_text(json.dumps({"objective": objective, "command": command, "specs": list(specs),
                                "constants": tuned, "training_gain_vs_defaults": gains}, indent=2) + "\n")
    return path


def load_tuned(objective: str) -> dict[str, dict[str, float]]:
    path = TUNED_DIR / f"{objective}.json"
    if not path.exists():
        return {}
    return {k: {p: float(x) for p, x in v.items()} for k, v in json.loads(path.read_text())["constants"].items()}


# Tuned constants: policy -> constant label -> value (as agents/tuned/*.json hold them).
Constants = dict[str, dict[str, float]]


def tuned_label(constants: Constants) -> str:
    """The label of baselines tuned elsewhere than on the built-in training set (a history's
    training part): ``tuned-<digest>``, so two sets of constants never share a baseline's name
    (runs are memoised by name)."""
    digest = hashlib.sha256(json.dumps(constants, sort_keys=True).encode()).hexdigest()[:8]
    return f"tuned-{digest}"


def baseline_set(objective: str, tuned: Constants | None = None) -> list[Policy | str]:
    """Every human policy, the order x placement combinations, and the tunable policies with
    their constants tuned for ``objective``: ``tuned`` when given (constants tuned on a history's
    training part, :func:`tune_all`), else those stored under agents/tuned/."""
    human: list[Policy | str] = [n for n in available() if not n.startswith("evolved") and "+" not in n]
    if tuned is None:
        made = [tuned_policy(n, v, f"tuned-{objective}") for n, v in load_tuned(objective).items()]
    else:
        made = [tuned_policy(n, v, tuned_label(tuned)) for n, v in tuned.items()]
    return [*human, *COMBINED, *made]


def tune_all(specs: Sequence[str], objective: str, *, trials: int, seed: int = 0) -> Constants:
    """Every tunable policy's constants tuned on ``specs`` for ``objective`` (:func:`tune`)."""
    return {name: tune(name, specs, objective, trials=trials, seed=seed) for name in SPACES}


def spread(specs: Sequence[str], n: int) -> list[str]:
    """``n`` of ``specs``, taking each trace family's windows in turn (round robin)."""
    from gpuos.agents.workloads import family

    by_family: dict[str, list[str]] = {}
    for spec in specs:
        by_family.setdefault(family(spec), []).append(spec)
    rounds = [spec for i in range(len(specs)) for group in by_family.values() if i < len(group) for spec in group[i:i + 1]]
    return rounds[:n]


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from gpuos.agents.workloads import TRAINING

    p = argparse.ArgumentParser(description="tune the human policies' constants on training workloads")
    p.add_argument("--objective", default="mean_jct")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--workloads", type=int, default=4,
                   help="N training workloads, the first of each family in turn (tuning on one family overfits it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", action="append", help="default: every tunable policy")
    args = p.parse_args(argv)
    specs = spread(TRAINING, args.workloads)
    tuned, gains = {}, {}
    for name in args.policy or list(SPACES):
        values = tune(name, specs, args.objective, trials=args.trials, seed=args.seed)
        reference = [simulate(load_workload(s), name).metrics[args.objective] for s in specs]
        score = _score(tuned_policy(name, values), [load_workload(s) for s in specs], args.objective, reference)
        tuned[name], gains[name] = values, round(1 / score - 1, 4)
        print(f"{name}: {values} training gain vs defaults {gains[name]:+.1%}", flush=True)
    command = "python -m gpuos.agents.baselines " + " ".join(sys.argv[1:] if argv is None else argv)
    print(save_tuned(args.objective, tuned, specs, command.strip(), gains))


if __name__ == "__main__":
    main()
