"""The evaluator: how good a candidate policy is, against the best human policy on each trace.

``evaluate(program_path)`` loads the traces here, runs the candidate in its own process
(:mod:`gpuos.agents.sandbox`: it receives snapshots and returns decisions; the simulator, the
metrics and this scoring stay here) and the baselines in this process, and returns
OpenEvolve-compatible metrics:

- ``combined_score``: geometric mean over traces of best-baseline metric / candidate metric for
  the objective (higher is better; 1.0 ties the best baseline on every trace), times a guard
  penalty for losing more than 2% on any other guard objective (every objective but makespan)
  against the same baseline; 0.0 when the candidate is invalid;
- ``primary_score`` (without the guard), ``guard_penalty``, ``guard/<metric>``, ``valid``
  (1.0/0.0), ``error`` (text, only when invalid), ``<trace>/<metric>`` raw candidate metrics,
  ``<trace>/score`` the ratio;
- ``artifacts``: text for the next proposal: per-trace table, violations, baselines.

The baselines (:func:`gpuos.agents.baselines.baseline_set`) are every hand-made policy with its
published constants, the order x placement combinations, and the policies whose constants were
tuned for the objective on the training traces.

What the candidate sees is masked (:mod:`gpuos.agents.masking`): job ids salted and estimate
noise drawn from a secret the candidate never holds, and the baselines run on the same masked
traces. The secret lives in the cache directory (``cache_dir``, file mode 0600), so one
evaluation campaign (an OpenEvolve run, a search) keeps one secret and its cached baselines; a
new cache directory is a new secret.

Validity (any failure scores 0 with a readable error, see :mod:`gpuos.agents.validity`): the
candidate must load under the sandbox rules, must not crash, hang past the timeout or exceed
the memory limit, every decision must pass the parent's cluster model (an over-commit raises
``SimulationError``), it must not starve GPU jobs (finish as many jobs as FIFO, and no GPU job
waits past the bound), its tenant fairness must stay within a bound of the human policies', and
user priority must be monotone (the priority probes, asked of the candidate's process). Runs
stop at a simulated-time horizon (:func:`gpuos.agents.objectives.horizon`); baselines that leave
jobs unfinished there are not eligible as the best baseline.

Configuration when called with the path alone (OpenEvolve): the JSON file named by
``$GPUOS_ADRS_CONFIG`` with keys ``objective``, ``traces``, ``stage1_traces``, ``timeout``,
``memory``, ``cache_dir`` (all optional). Baselines are cached on disk, keyed by a hash of the
scheduler's and the agents' source and by the secret's digest, because OpenEvolve may run each
evaluation in a fresh process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from gpuos import scheduler as scheduler_package
from gpuos.agents.baselines import Constants, baseline_set
from gpuos.agents.masking import Secret
from gpuos.agents.objectives import OBJECTIVES, TraceRun, get_objective, simulate
from gpuos.agents.sandbox import DEFAULT_MEMORY, DEFAULT_TIMEOUT, run_candidate
from gpuos.agents.validity import fairness_problem, starvation_bound, starvation_problem
from gpuos.agents.workloads import STAGE1, TRAINING, load_workload
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.sim import Trace

TRIVIAL = ("fifo", "random-fit")
# Losing more than this much on a guard objective starts to cost score.
GUARD_TOLERANCE = 0.98
GUARD_POWER = 2.0
CONFIG_ENV = "GPUOS_ADRS_CONFIG"


def guard_objectives(objective: str) -> list[str]:
    """The objectives that guard ``objective``: every other guard (makespan is reported, not guarded)."""
    return [m for m, o in OBJECTIVES.items() if o.guard and m != objective]


Baseline = Callable[[], "str | Policy"]


def baseline_makers(objective: str, tuned: Constants | None = None) -> dict[str, Baseline]:
    """The baselines for ``objective`` by name (with ``tuned``, the tunable ones take those
    constants: :func:`gpuos.agents.baselines.baseline_set`), each as a maker of a fresh policy
    (policies may keep per-run state, so no instance is shared by two runs)."""
    makers: dict[str, Baseline] = {}
    for entry in baseline_set(objective, tuned):
        if isinstance(entry, str):
            makers[entry] = partial(str, entry)
        else:
            makers[entry.name] = type(entry)
    return makers


@lru_cache(maxsize=128)
def load_trace_cached(spec: str, secret: Secret | None = None) -> Trace:
    return load_workload(spec, secret)


@dataclass(frozen=True)
class Baselines:
    """Each baseline policy's run on each trace."""

    runs: dict[str, dict[str, TraceRun]]  # trace -> policy -> run

    def eligible(self, trace: str) -> dict[str, TraceRun]:
        """The runs that finished as many jobs as FIFO (a policy that thrashed past the horizon
        has a mean over fewer jobs, which would flatter it)."""
        runs = self.runs[trace]
        fifo = runs["fifo"]
        return {p: r for p, r in runs.items() if r.finished >= fifo.finished} or runs

    def best(self, trace: str, objective: str) -> tuple[str, float]:
        """(policy, value) of the best eligible baseline for ``objective`` on ``trace``."""
        runs = self.eligible(trace)
        return min(((p, r.metrics[objective]) for p, r in runs.items()), key=lambda pv: (pv[1], pv[0]))

    def single_best(self, objective: str) -> tuple[str, float]:
        """(policy, score) of the one baseline that does best over all traces here: the highest
        geometric mean of best-per-trace / policy, among the policies eligible on every trace
        (the usual reading of "the best human baseline"; :meth:`best` picks per trace)."""
        traces = list(self.runs)
        common = set.intersection(*(set(self.eligible(t)) for t in traces)) if traces else set()
        scored = []
        for policy in sorted(common):
            ratios = [self.best(t, objective)[1] / self.runs[t][policy].metrics[objective]
                      if self.runs[t][policy].metrics[objective] > 0 else 1.0 for t in traces]
            scored.append((geomean(ratios), policy))
        if not scored:
            raise ValueError("no baseline policy is eligible on every trace")
        score, policy = min(scored, key=lambda sp: (-sp[0], sp[1]))
        return policy, score

    def starvation_bound(self, trace: str) -> float:
        return starvation_bound(self.eligible(trace), self.runs[trace]["fifo"])

    def to_json(self) -> dict[str, Any]:
        return {t: {p: r.to_json() for p, r in by.items()} for t, by in self.runs.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Baselines:
        return cls({t: {p: TraceRun.from_json(r) for p, r in by.items()} for t, by in data.items()})


_BASELINES: dict[tuple[str, str, str], TraceRun] = {}


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the scheduler's and the agents' source: baselines cached on disk under another
    hash are never reused, so a change to a policy or the simulator cannot leave stale numbers."""
    digest = hashlib.sha256()
    for root in (Path(scheduler_package.__file__).parent, Path(__file__).parent):
        for path in sorted([*root.rglob("*.py"), *root.rglob("*.json")]):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_file(cache_dir: Path, spec: str, policy: str, secret: Secret | None) -> Path:
    tag = secret.digest if secret else "public"
    key = hashlib.sha256(f"{code_version()}|{spec}|{policy}|{tag}".encode()).hexdigest()[:24]
    return cache_dir / f"{key}.json"


def _baseline_run(spec: str, objective: str, name: str, secret: Secret | None,
                  tuned: Constants | None = None) -> TraceRun:
    return simulate(load_trace_cached(spec, secret), baseline_makers(objective, tuned)[name]())


def compute_baselines(specs: Sequence[str], objective: str = "mean_jct", *, secret: Secret | None = None,
                      cache_dir: str | Path | None = None, policies: Sequence[str] | None = None,
                      jobs: int = 1, tuned: Constants | None = None) -> Baselines:
    """Run every baseline for ``objective`` (or only ``policies`` of them; with ``tuned``, the
    tunable ones with those constants) on every trace, masked with ``secret``, in ``jobs``
    processes; memoised in this process and, with ``cache_dir``, on disk (keyed by
    :func:`code_version` and the secret's digest), since OpenEvolve may call each evaluation afresh."""
    makers = baseline_makers(objective, tuned)
    names = list(policies or makers)
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(makers)}")
    cache = Path(cache_dir) if cache_dir else None
    tag = secret.digest if secret else "public"
    missing: list[tuple[str, str]] = []
    for spec in specs:
        for name in names:
            key = (spec, name, tag)
            if key in _BASELINES:
                continue
            stored = _cache_file(cache, spec, name, secret) if cache else None
            if stored is not None and stored.is_file():
                _BASELINES[key] = TraceRun.from_json(json.loads(stored.read_text()))
            else:
                missing.append((spec, name))
    if jobs > 1 and len(missing) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(missing))) as pool:
            done = list(pool.map(_baseline_run, *zip(*[(s, objective, n, secret, tuned) for s, n in missing],
                                                      strict=True)))
    else:
        done = [_baseline_run(s, objective, n, secret, tuned) for s, n in missing]
    for (spec, name), run in zip(missing, done, strict=True):
        _BASELINES[(spec, name, tag)] = run
        if cache is not None:
            stored = _cache_file(cache, spec, name, secret)
            stored.parent.mkdir(parents=True, exist_ok=True)
            temp = stored.with_suffix(f".{os.getpid()}.tmp")
            temp.write_text(json.dumps(run.to_json()))
            temp.replace(stored)
    return Baselines({spec: {n: _BASELINES[(spec, n, tag)] for n in names} for spec in specs})


def geomean(values: Sequence[float]) -> float:
    """Geometric mean; 0.0 for no values or any value <= 0."""
    if not values or min(values) <= 0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def violations(runs: dict[str, TraceRun], baselines: Baselines, inversions: Sequence[str] = ()) -> list[str]:
    """Starvation, tenant fairness and priority inversions (the sandbox and the parent's cluster
    model catch the rest)."""
    found = list(inversions)
    for trace, run in runs.items():
        fifo = baselines.runs[trace]["fifo"]
        eligible = baselines.eligible(trace)
        for problem in (starvation_problem(run, fifo, baselines.starvation_bound(trace), trace),
                        fairness_problem(run, eligible, trace=trace)):
            if problem:
                found.append(problem)
    return found


def score_runs(runs: dict[str, TraceRun], baselines: Baselines, objective: str,
               inversions: Sequence[str] = ()) -> dict[str, Any]:
    """The metrics dict for a candidate whose runs all completed (validity checks included)."""
    get_objective(objective)
    problems = violations(runs, baselines, inversions)
    metrics: dict[str, Any] = {}
    primary: list[float] = []
    guards: dict[str, list[float]] = {m: [] for m in guard_objectives(objective)}
    lines = [f"{'trace':<70}{'metric':>14}{'candidate':>12}{'best human':>12}{'policy':>12}{'score':>8}"]
    for trace, run in runs.items():
        for metric, value in run.metrics.items():
            metrics[f"{trace}/{metric}"] = value
        ref_policy, best = baselines.best(trace, objective)
        ratio = best / run.metrics[objective] if run.metrics[objective] > 0 else 1.0
        metrics[f"{trace}/score"] = ratio
        primary.append(ratio)
        ref = baselines.runs[trace][ref_policy]
        for m in guards:
            guards[m].append(ref.metrics[m] / run.metrics[m] if run.metrics[m] > 0 else 1.0)
        lines.append(f"{trace:<70}{objective:>14}{run.metrics[objective]:>12.4g}{best:>12.4g}{ref_policy:>12}{ratio:>8.3f}")
    primary_score = geomean(primary)
    penalty = 1.0
    for m, ratios in guards.items():
        r = geomean(ratios)
        metrics[f"guard/{m}"] = r
        penalty *= min(1.0, r / GUARD_TOLERANCE) ** GUARD_POWER
    metrics.update(primary_score=primary_score, guard_penalty=penalty)
    artifacts = {"per_trace": "\n".join(lines)}
    if problems:
        metrics.update(combined_score=0.0, valid=0.0, error="; ".join(problems))
        artifacts["violations"] = "\n".join(problems)
    else:
        metrics.update(combined_score=primary_score * penalty, valid=1.0)
    metrics["artifacts"] = artifacts
    return metrics


def invalid(error: str, kind: str = "crash") -> dict[str, Any]:
    return {"combined_score": 0.0, "valid": 0.0, "error": error, "artifacts": {"violations": f"{kind}: {error}"}}


def load_config() -> dict[str, Any]:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return {}
    return dict(json.loads(Path(path).read_text()))


def evaluate_source(
    source: str, *, objective: str = "mean_jct", traces: Sequence[str] = TRAINING, filename: str = "<candidate>",
    timeout: float = DEFAULT_TIMEOUT, memory: int = DEFAULT_MEMORY, baselines: Baselines | None = None,
    cache_dir: str | Path | None = None, secret: Secret | None = None,
) -> dict[str, Any]:
    """Score the candidate policy in ``source`` on ``traces`` (workload specs) for ``objective``,
    masked with ``secret`` (default: the one kept in ``cache_dir``, else a fresh one; pass the
    secret ``baselines`` were computed with)."""
    specs = list(traces)
    if secret is None:
        secret = Secret.load_or_create(cache_dir) if cache_dir else Secret.fresh()
    loaded = [load_trace_cached(s, secret) for s in specs]
    base = baselines or compute_baselines(specs, objective, secret=secret, cache_dir=cache_dir)
    outcome = run_candidate(source, loaded, filename=filename, timeout=timeout, memory=memory, probe=True)
    if not outcome.ok:
        return invalid(outcome.error, outcome.kind)
    runs = {t: TraceRun.from_json(r) for t, r in outcome.runs.items()}
    return score_runs(runs, base, objective, outcome.inversions)


def evaluate(
    program_path: str | Path, *, objective: str | None = None, traces: Sequence[str] | None = None,
    stage: str = "full",
) -> dict[str, Any]:
    """Score the candidate policy file at ``program_path`` (see the module docstring).

    ``stage="quick"`` runs the small first-stage scenario; ``"full"`` the training traces (or
    ``traces``). Unset arguments come from ``$GPUOS_ADRS_CONFIG``, then the defaults.
    """
    config = load_config()
    objective = objective or config.get("objective", "mean_jct")
    if traces is None:
        traces = config.get("stage1_traces", STAGE1) if stage == "quick" else config.get("traces", TRAINING)
    try:
        source = Path(program_path).read_text()
    except OSError as exc:
        return invalid(f"cannot read candidate: {exc}")
    return evaluate_source(
        source, objective=str(objective), traces=list(traces or ()), filename=str(program_path),
        timeout=float(config.get("timeout", DEFAULT_TIMEOUT)), memory=int(config.get("memory", DEFAULT_MEMORY)),
        cache_dir=config.get("cache_dir") or Path(tempfile.gettempdir()) / "gpuos-adrs-baselines",
    )


def evaluate_stage1(program_path: str | Path) -> dict[str, Any]:
    """The quick first stage: one small synthetic scenario, well under a second."""
    return evaluate(program_path, stage="quick")


def evaluate_stage2(program_path: str | Path) -> dict[str, Any]:
    """The full stage on the training traces."""
    return evaluate(program_path, stage="full")
