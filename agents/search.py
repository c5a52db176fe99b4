"""The offline search loop: run directory, resume, parallel evaluation, held-out report.

A run directory holds ``config.json`` (what was asked), ``baselines.json`` (the human
policies on the training traces, measured once), one ``gen-NNNN.json`` per finished
generation (every candidate evaluated in it, with per-trace scores, and the best so far),
``best.py`` (the best candidate on the training traces, as a policy file) and, at the end,
``report.json``, ``report.md``, ``score.png`` and ``heldout.png``. ``resume`` reloads the
generations already written and continues; each generation's random stream is derived from
(seed, generation), so a resumed run makes the same choices as one that never stopped.

Candidates are evaluated in parallel: a process pool over local cores by default, or a Ray
cluster (``backend="ray"``, only if ``ray`` is installed). Workers load a candidate's source
with the sandbox's restrictions and simulate it in-process; they hold only engine-made code, so
the subprocess-per-candidate isolation of :func:`gpuos.agents.evaluator.evaluate` is used for
the final held-out verification, which is what the report shows.
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gpuos.agents import gp
from gpuos.agents.evaluator import (
    Baselines,
    compute_baselines,
    invalid,
    load_trace_cached,
    score_runs,
)
from gpuos.agents.masking import Secret
from gpuos.agents.objectives import OBJECTIVES, TraceRun, simulate
from gpuos.agents.pareto import Scored, pareto_front, select_parent
from gpuos.agents.sandbox import CandidateRejected, load_policy_class
from gpuos.agents.validity import policy_order, priority_inversions
from gpuos.agents.verify import format_verdict, verify
from gpuos.agents.workloads import HELD_OUT, TRAINING
from gpuos.scheduler.framework import schedule
from gpuos.scheduler.sim import SimulationError

ELITE = 2
# Wall seconds one engine-made candidate may take over all training traces (a thrashing
# preemption rule can otherwise run to the horizon for minutes); the evaluator's child has the
# same kind of deadline.
CANDIDATE_SECONDS = 60.0


class OverBudget(Exception):
    """An in-process candidate ran past :data:`CANDIDATE_SECONDS`."""


@dataclass
class RunConfig:
    objective: str = "mean_jct"
    engine: str = "gp"  # gp | tune
    traces: list[str] = field(default_factory=lambda: list(TRAINING))
    held_out: list[str] = field(default_factory=lambda: list(HELD_OUT))
    iterations: int = 10  # generations
    population: int = 16
    seed: int = 0
    jobs: int = 2
    backend: str = "process"  # process | ray
    tune_policy: str = "tiresias"
    name: str = ""  # policy name of the result; default evolved-<objective>
    # gp: genomes (JSON) from earlier runs' reports that join the seeds in the first generation.
    warm_start: list[Any] = field(default_factory=list)
    # The tunable baselines' constants when tuned on a history's training part (gpuosctl evolve
    # --trace EXPORT); None: those tuned on the built-in training set (agents/tuned/).
    tuned: dict[str, dict[str, float]] | None = None

    @property
    def policy_name(self) -> str:
        return self.name or f"evolved-{self.objective.replace('_', '-')}"


class Engine(Protocol):
    def initial(self, rng: random.Random, n: int) -> list[Any]: ...
    def offspring(self, parents: Callable[[], Any], rng: random.Random) -> Any: ...
    def render(self, genome: Any, name: str, header: str = "", register: bool = False) -> str: ...
    def to_json(self, genome: Any) -> Any: ...
    def from_json(self, data: Any) -> Any: ...


class GpEngine:
    def __init__(self, warm_start: Sequence[gp.Genome] = ()) -> None:
        self.warm_start = list(warm_start)

    def initial(self, rng: random.Random, n: int) -> list[gp.Genome]:
        seeds = [*self.warm_start, *gp.SEEDS][:n]
        return seeds + [gp.random_genome(rng) for _ in range(n - len(seeds))]

    def offspring(self, parents: Callable[[], gp.Genome], rng: random.Random) -> gp.Genome:
        child = parents()
        if rng.random() < 0.5:
            child = gp.crossover(child, parents(), rng)
        if rng.random() < 0.8:
            child = gp.mutate(child, rng)
        return child

    def render(self, genome: gp.Genome, name: str, header: str = "", register: bool = False) -> str:
        return gp.render(genome, name, header, register)

    def to_json(self, genome: gp.Genome) -> Any:
        return genome.to_json()

    def from_json(self, data: Any) -> gp.Genome:
        return gp.Genome.from_json(data)


class TuneEngine:
    def __init__(self, space: gp.ParamSpace) -> None:
        self.space = space

    def initial(self, rng: random.Random, n: int) -> list[dict[str, float]]:
        return [dict(self.space.defaults)] + [self.space.sample(rng) for _ in range(n - 1)]

    def offspring(self, parents: Callable[[], dict[str, float]], rng: random.Random) -> dict[str, float]:
        return self.space.mutate(parents(), rng)

    def render(self, genome: dict[str, float], name: str, header: str = "", register: bool = False) -> str:
        return gp.render_tuned(self.space, genome, name, header, register)

    def to_json(self, genome: dict[str, float]) -> Any:
        return genome

    def from_json(self, data: Any) -> dict[str, float]:
        return {k: float(v) for k, v in data.items()}


def make_engine(config: RunConfig) -> Engine:
    if config.engine == "gp":
        return GpEngine([gp.Genome.from_json(g) for g in config.warm_start])
    if config.engine == "tune":
        if config.tune_policy not in gp.SPACES:
            raise ValueError(f"no parameter space for {config.tune_policy!r}; known: {', '.join(gp.SPACES)}")
        return TuneEngine(gp.SPACES[config.tune_policy])
    raise ValueError(f"unknown engine {config.engine!r} (gp, tune; openevolve runs through gpuosctl evolve)")


# -- evaluation in workers -----------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(specs: list[str], baselines: dict[str, Any], objective: str, secret: Secret) -> None:
    _WORKER.update(specs=specs, baselines=Baselines.from_json(baselines), objective=objective, secret=secret)


def evaluate_in_process(source: str, specs: Sequence[str], baselines: Baselines, objective: str,
                        secret: Secret | None = None) -> dict[str, Any]:
    """Score engine-made ``source`` here (sandbox rules for loading, no subprocess), on the traces
    masked with ``secret`` that ``baselines`` ran on."""
    try:
        cls = load_policy_class(source)
        inversions = priority_inversions(policy_order(cls()))
    except CandidateRejected as exc:
        return invalid(str(exc), "forbidden")
    except Exception as exc:  # noqa: BLE001 - a candidate's failure is its score, not ours
        return invalid(f"crash on the priority probes: {type(exc).__name__}: {exc}", "crash")
    runs: dict[str, TraceRun] = {}
    deadline = time.monotonic() + CANDIDATE_SECONDS

    def decide_in_time(policy: Any) -> Any:
        def decide(snap: Any) -> Any:
            if time.monotonic() > deadline:
                raise OverBudget(f"over its {CANDIDATE_SECONDS:g} s budget")
            return schedule(snap, policy)

        return decide

    for spec in specs:
        try:
            policy = cls()
            runs[spec] = simulate(load_trace_cached(spec, secret), policy, decide=decide_in_time(policy))
        except OverBudget as exc:
            return invalid(f"timeout on {spec}: {exc}", "timeout")
        except SimulationError as exc:
            return invalid(f"invalid on {spec}: {exc}", "invalid")
        except Exception as exc:  # noqa: BLE001 - a candidate's failure is its score, not ours
            return invalid(f"crash on {spec}: {type(exc).__name__}: {exc}", "crash")
    return score_runs(runs, baselines, objective, inversions)


def _worker_evaluate(source: str) -> dict[str, Any]:
    return evaluate_in_process(source, _WORKER["specs"], _WORKER["baselines"], _WORKER["objective"],
                               _WORKER["secret"])


class Evaluator:
    """Evaluates many sources at once: a local process pool, a Ray pool, or inline (jobs=1)."""

    def __init__(self, config: RunConfig, baselines: Baselines, secret: Secret) -> None:
        args = (list(config.traces), baselines.to_json(), config.objective, secret)
        self.inline: tuple[Any, ...] | None = None
        self.pool: Any = None
        if config.backend == "ray":
            try:
                from ray.util.multiprocessing import Pool  # type: ignore[import-not-found]
            except ImportError as exc:
                raise RuntimeError("backend 'ray' needs the ray package (pip install ray)") from exc
            self.pool = Pool(initializer=_init_worker, initargs=args)
        elif config.jobs > 1:
            self.pool = ProcessPoolExecutor(config.jobs, initializer=_init_worker, initargs=args)
        else:
            self.inline = args

    def map(self, sources: list[str]) -> Iterable[dict[str, Any]]:
        if self.inline is not None:
            _init_worker(*self.inline)
            return map(_worker_evaluate, sources)
        return self.pool.map(_worker_evaluate, sources)

    def close(self) -> None:
        if isinstance(self.pool, ProcessPoolExecutor):
            self.pool.shutdown()
        elif self.pool is not None:
            self.pool.close()


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class Candidate:
    key: str
    genome: Any
    combined: float
    per_trace: dict[str, float]
    error: str = ""
    generation: int = 0

    def scored(self) -> Scored:
        return Scored(self.key, self.combined, self.per_trace)


def _per_trace(metrics: dict[str, Any], specs: Sequence[str]) -> dict[str, float]:
    return {s: float(metrics.get(f"{s}/score", 0.0)) if metrics.get("valid") else 0.0 for s in specs}


class Progress:
    """A plain-text progress bar on stderr."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.done, self.stream, self.started = total, 0, stream or sys.stderr, time.monotonic()

    def step(self, note: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / max(1, self.total))
        elapsed = time.monotonic() - self.started
        self.stream.write(f"\r[{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} {note} "
                          f"{elapsed:.0f}s")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _generation_file(run_dir: Path, gen: int) -> Path:
    return run_dir / f"gen-{gen:04d}.json"


def search(config: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a search; write the run directory; return the final report."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.json"
    if saved.exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a search; pass resume or choose another run directory")
        stored = RunConfig(**json.loads(saved.read_text()))
        # Resuming may extend the search; everything else stays as the run began.
        stored.iterations = max(stored.iterations, config.iterations)
        stored.jobs, stored.backend = config.jobs, config.backend
        config = stored
    saved.write_text(json.dumps(asdict(config), indent=2) + "\n")
    engine = make_engine(config)
    # One secret per run (kept in the run directory), so a resumed run sees the same masked traces.
    secret = Secret.load_or_create(run_dir)
    base_file = run_dir / "baselines.json"
    if base_file.exists():
        baselines = Baselines.from_json(json.loads(base_file.read_text()))
    else:
        baselines = compute_baselines(config.traces, config.objective, secret=secret, tuned=config.tuned)
        base_file.write_text(json.dumps(baselines.to_json()) + "\n")
    archive: dict[str, Candidate] = {}
    history: list[dict[str, Any]] = []
    population: list[Any] = []
    start = 0
    while _generation_file(run_dir, start).exists():
        data = json.loads(_generation_file(run_dir, start).read_text())
        for c in data["evaluated"]:
            archive[c["key"]] = Candidate(c["key"], engine.from_json(c["genome"]), c["combined"], c["per_trace"],
                                          c.get("error", ""), c["generation"])
        history.append(data["best"])
        start += 1
    bar = Progress((config.iterations - start) * config.population) if progress else None
    evaluator = Evaluator(config, baselines, secret) if start < config.iterations else None
    try:
        for gen in range(start, config.iterations):
            rng = random.Random(f"{config.seed}/{gen}")
            population = _next_population(engine, archive, config, rng, gen)
            sources: dict[str, tuple[Any, str]] = {}
            for genome in population:
                source = engine.render(genome, config.policy_name)
                sources.setdefault(gp_key(source), (genome, source))
            fresh = [(k, g, s) for k, (g, s) in sources.items() if k not in archive]
            assert evaluator is not None
            results = evaluator.map([s for _, _, s in fresh])
            evaluated = []
            for (key, genome, _), metrics in zip(fresh, results, strict=True):
                cand = Candidate(key, genome, float(metrics["combined_score"]), _per_trace(metrics, config.traces),
                                 str(metrics.get("error", "")), gen)
                archive[key] = cand
                evaluated.append(cand)
                if bar:
                    best_now = max(c.combined for c in archive.values())
                    bar.step(f"gen {gen + 1}/{config.iterations} best {best_now:.3f}")
            if bar:
                for _ in range(config.population - len(fresh)):
                    bar.step(f"gen {gen + 1}/{config.iterations} (seen before)")
            best = max(archive.values(), key=lambda c: c.combined)
            summary = {"generation": gen, "best_key": best.key, "best_combined": best.combined,
                       "front": len(pareto_front([c.scored() for c in archive.values()]))}
            history.append(summary)
            _generation_file(run_dir, gen).write_text(json.dumps({
                "generation": gen,
                "evaluated": [{"key": c.key, "genome": engine.to_json(c.genome), "combined": c.combined,
                               "per_trace": c.per_trace, "error": c.error, "generation": c.generation}
                              for c in evaluated],
                "best": summary,
            }, indent=1) + "\n")
    finally:
        if evaluator is not None:
            evaluator.close()
    best = max(archive.values(), key=lambda c: c.combined)
    (run_dir / "best.py").write_text(engine.render(best.genome, config.policy_name))
    return finish(config, run_dir, engine, best, history, baselines)


def gp_key(source: str) -> str:
    import hashlib

    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _next_population(engine: Engine, archive: dict[str, Candidate], config: RunConfig, rng: random.Random,
                     gen: int) -> list[Any]:
    if not archive:
        return engine.initial(rng, config.population)
    ranked = sorted(archive.values(), key=lambda c: -c.combined)
    population = [c.genome for c in ranked[:ELITE]]
    scored = [c.scored() for c in archive.values()]
    by_key = {c.key: c for c in archive.values()}

    def parent() -> Any:
        return by_key[select_parent(scored, rng).key].genome

    tries = 0
    seen = {gp_key(engine.render(g, config.policy_name)) for g in population}
    while len(population) < config.population and tries < 20 * config.population:
        tries += 1
        child = engine.offspring(parent, rng)
        key = gp_key(engine.render(child, config.policy_name))
        if key in seen or key in archive:
            continue
        seen.add(key)
        population.append(child)
    return population


# -- held-out verification and the report ---------------------------------------------------------


def held_out_table(source: str, specs: Sequence[str], objective: str,
                   tuned: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The held-out protocol's report for ``source`` on ``specs`` (:func:`gpuos.agents.verify.verify`,
    with a fresh secret: the held-out traces are masked unlike anything the search saw)."""
    return verify(source, objective, specs, tuned=tuned)


def finish(config: RunConfig, run_dir: Path, engine: Engine, best: Candidate, history: list[dict[str, Any]],
           baselines: Baselines) -> dict[str, Any]:
    source = engine.render(best.genome, config.policy_name)
    held = held_out_table(source, config.held_out, config.objective, config.tuned) if config.held_out else {}
    report = {"config": asdict(config), "best": {"key": best.key, "training_combined": best.combined,
                                                  "training_per_trace": best.per_trace,
                                                  "genome": engine.to_json(best.genome)},
              "history": history, "held_out": held}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (run_dir / "report.md").write_text(format_report(report) + "\n")
    plot(report, run_dir)
    return report


def format_report(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [f"objective {cfg['objective']} | engine {cfg['engine']} | {cfg['iterations']} generations x "
             f"{cfg['population']} | seed {cfg['seed']}",
             f"training combined score (best baseline per trace = 1.0): {report['best']['training_combined']:.3f}"]
    if cfg["engine"] == "verify":
        lines = [f"objective {cfg['objective']}: verification of a policy file on held-out traces"]
    held = report.get("held_out") or {}
    if held:
        lines += ["", "held-out (traces no search saw):", format_verdict(held)]
    return "\n".join(lines)


def plot(report: dict[str, Any], run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = report["history"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["generation"] + 1 for h in history], [h["best_combined"] for h in history], marker="o")
    ax.axhline(1.0, color="grey", linestyle="--", label="best human policy")
    ax.set_xlabel("generation")
    ax.set_ylabel("best training score")
    ax.set_title(f"{report['config']['objective']}: best score per generation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "score.png", dpi=100)
    plt.close(fig)
    rows = (report.get("held_out") or {}).get("rows") or []
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [re.sub(r"\?n=\d+&", " ", r["trace"].split("|")[0]).replace("alibaba-", "").replace("synthetic:", "")
              for r in rows]
    width = 0.27
    for i, (key, label) in enumerate((("fifo", "FIFO"), ("ceiling", "clairvoyant"), ("candidate", "evolved"))):
        ax.bar([x + (i - 1) * width for x in range(len(rows))],
               [r["single_best"] / r[key] if r[key] else math.nan for r in rows], width, label=label)
    ax.axhline(1.0, color="grey", linestyle="--", label=f"single best ({held_policy(report)})")
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(f"single best / policy ({report['config']['objective']})")
    ax.set_title("held-out traces (higher is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "heldout.png", dpi=100)
    plt.close(fig)


def held_policy(report: dict[str, Any]) -> str:
    return str((report.get("held_out") or {}).get("single_best", "?"))


def emit(report: dict[str, Any], config: RunConfig, run_dir: Path, command: str, path: Path) -> Path:
    """Write the best candidate as a shippable policy file with a provenance header (the held-out
    verdict included: a file is shipped only when that verdict says so, see docs/adrs.md)."""
    engine = make_engine(config)
    genome = engine.from_json(report["best"]["genome"])
    held = report.get("held_out") or {}
    header = [
        f"Evolved policy {config.policy_name}: optimises {config.objective} ({OBJECTIVES[config.objective].description}).",
        "",
        f"Found by gpuos.agents ({config.engine} engine), run {run_dir.name}: {config.iterations} generations x "
        f"{config.population}, seed {config.seed}; selected by training score only.",
        f"Command: {command}",
        "Training traces (the only ones the search saw):",
        *[f"  {t}" for t in config.traces],
        f"Training score (geomean best-baseline-per-trace / evolved): {report['best']['training_combined']:.3f}",
    ]
    if held.get("rows"):
        header += ["Held-out verification (gpuos.agents.verify; traces no search saw):",
                   *(f"  {line}" for line in format_verdict(held).splitlines())]
    path.write_text(engine.render(genome, config.policy_name, "\n".join(header), register=True))
    return path
