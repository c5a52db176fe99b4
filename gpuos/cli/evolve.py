"""``gpuosctl evolve``: search for a scheduling policy against the simulator (no daemon needed).

``--engine gp`` (offline genetic programming) and ``--engine tune`` (a human policy's constants)
run here; ``--engine openevolve`` drives an LLM through OpenEvolve (``pip install gpuos[adrs]``).
Progress goes to stderr; the final report (a table of the best candidate against FIFO,
random-fit and the best human policy on held-out traces) to stdout; ``-o json`` prints it as
JSON. Exit codes: 0 done, 1 the search or its result failed, 2 bad arguments.

``--trace EXPORT`` (a history written by ``gpuosctl trace export``) fits the policy to one's own
cluster: the search trains on the history's older part and is judged on the newer
(:func:`gpuos.agents.workloads.history_plan`), against the human baselines tuned on the older
part; ``--verify POLICY.py --trace EXPORT`` judges a file the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from gpuos.cli.args import Parser, non_negative_int, positive_int, seed


def add_evolve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evolve", help="search for a scheduling policy in the simulator (ADRS)",
        description="Evolve a policy on training traces and verify it on held-out traces. Traces are "
                    "workload specs (trace|gpus=..|start=..|jobs=..|load=..), comma-separated, or 'training' / "
                    "'held-out' for the built-in sets (gpuos.agents.workloads).",
    )
    p.add_argument("--objective", default="mean_jct",
                   help="mean_jct, slo_miss, latency_wait_p99, slowdown, idle_while_waiting, fragmentation or makespan")
    p.add_argument("--traces", default=None, help="training traces (default: the built-in training set)")
    p.add_argument("--held-out", default=None, help="held-out traces for the report ('' to skip; default: the "
                                                    "built-in held-out set)")
    p.add_argument("--engine", choices=("gp", "tune", "openevolve"), default="gp")
    p.add_argument("--iterations", type=positive_int, default=10, help="generations (gp, tune) or LLM iterations")
    p.add_argument("--population", type=positive_int, default=16, help="candidates per generation (gp, tune)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--jobs", type=non_negative_int, default=0, help="parallel evaluations (default: all local cores)")
    p.add_argument("--backend", choices=("process", "ray"), default="process")
    p.add_argument("--tune-policy", default="tiresias", help="policy whose constants --engine tune searches")
    p.add_argument("--name", default="", help="name of the resulting policy (default evolved-<objective>)")
    p.add_argument("--warm-start", action="append", default=[], metavar="REPORT_JSON",
                   help="gp: also start from the best genome of an earlier run (its report.json); repeatable")
    p.add_argument("--run-dir", default="", help="directory for state, report and plots (required to search)")
    p.add_argument("--verify", default="", metavar="POLICY_FILE",
                   help="no search: judge this policy file by the held-out protocol (gpuos.agents.verify) on "
                        "--trace (default: the built-in held-out set)")
    p.add_argument("--trace", action="append", default=[], metavar="FILE",
                   help="an exported history (gpuosctl trace export): a search trains on its older 60%% and "
                        "is judged on the newer 40%% against baselines tuned on the older part, and --verify "
                        "judges on the newer part; with --verify also a trace of one's own (CSV path or name, "
                        "cut into windows), a workload spec, or 'held-out' (repeatable)")
    p.add_argument("--baseline-trials", type=positive_int, default=12,
                   help="with --trace EXPORT: trials per tunable baseline when tuning it on the training part")
    p.add_argument("--no-robustness", action="store_true",
                   help="with --verify: skip the reruns at other interference and preemption costs")
    p.add_argument("--resume", action="store_true", help="continue the search in --run-dir")
    p.add_argument("--emit", default="", help="also write the best policy, with its provenance header, here")
    p.add_argument("--api-base", default=None, help="openevolve: OpenAI-compatible endpoint")
    p.add_argument("--model", default=None, help="openevolve: model name")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")


def _traces(text: str, default: tuple[str, ...], builtin: dict[str, tuple[str, ...]]) -> list[str]:
    if not text:
        return []
    if text in builtin:
        return list(builtin[text])
    # Commas separate traces, but a spec's cluster (gpus=1x8xG2,1x4xT4) has commas too: split
    # only where the next item does not start with a digit.
    return [t.strip() for t in re.split(r",(?!\d)", text) if t.strip()] or list(default)


# Every engine scores candidates in the simulator (numpy); openevolve also drives an LLM.
SEARCH_NEEDS = {"gp": ("sim", ("numpy",)), "tune": ("sim", ("numpy",)), "openevolve": ("adrs", ("openevolve", "numpy"))}


def run_evolve(args: argparse.Namespace) -> int:
    import os

    from gpuos import extras

    extra, modules = SEARCH_NEEDS["gp" if args.verify else args.engine]
    try:
        extras.require("the policy search" if extra == "sim" else "--engine openevolve", extra, modules)
    except extras.MissingExtra as exc:
        print(f"gpuosctl evolve: {exc}", file=sys.stderr)
        return 1
    from gpuos.agents.objectives import OBJECTIVES
    from gpuos.agents.workloads import HELD_OUT, TRAINING

    if args.objective not in OBJECTIVES:
        print(f"gpuosctl evolve: unknown objective {args.objective!r}; known: {', '.join(OBJECTIVES)}", file=sys.stderr)
        return 2
    builtin = {"training": TRAINING, "held-out": HELD_OUT}
    traces = _traces("training" if args.traces is None else args.traces, TRAINING, builtin)
    held_out = _traces("held-out" if args.held_out is None else args.held_out, HELD_OUT, builtin)
    if set(traces) & set(held_out):
        print("gpuosctl evolve: a held-out trace is also a training trace; held-out traces must stay unseen",
              file=sys.stderr)
        return 2
    tuned = None
    if any(_is_history(t) for t in args.trace) or (args.trace and not args.verify):
        plan = _history_plan(args)
        if plan is None:
            return 2
        tuned = _tune_on(plan.training, args)
        if args.verify:
            return _verify(args, list(plan.held_out), args.verify, tuned)
        traces, held_out = list(plan.training), list(plan.held_out)
    if args.verify:
        from gpuos.agents.workloads import windows_of
        from gpuos.errors import GpuosError

        try:
            specs = [w for t in args.trace for w in windows_of(t)] if args.trace else held_out
        except (GpuosError, OSError, ValueError) as exc:
            print(f"gpuosctl evolve: --trace: {exc}", file=sys.stderr)
            return 2
        return _verify(args, specs, args.verify)
    if not args.run_dir:
        print("gpuosctl evolve: --run-dir is required for a search", file=sys.stderr)
        return 2
    if args.engine == "openevolve":
        return _run_openevolve(args, traces, held_out)
    from gpuos.agents.search import RunConfig, emit, format_report, search

    try:
        warm_start = [json.loads(Path(r).read_text())["best"]["genome"] for r in args.warm_start]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"gpuosctl evolve: --warm-start needs an earlier run's report.json: {exc!r}", file=sys.stderr)
        return 2
    config = RunConfig(
        objective=args.objective, engine=args.engine, traces=traces, held_out=held_out,
        iterations=args.iterations, population=args.population, seed=args.seed,
        jobs=args.jobs or os.cpu_count() or 1, backend=args.backend, tune_policy=args.tune_policy, name=args.name,
        warm_start=warm_start, tuned=tuned,
    )
    try:
        report = search(config, args.run_dir, resume=args.resume)
    except (FileExistsError, ValueError, RuntimeError) as exc:
        print(f"gpuosctl evolve: {exc}", file=sys.stderr)
        return 1
    if args.emit:
        stored = RunConfig(**report["config"])
        argv = sys.argv[1:]
        argv = argv[1:] if argv[:1] == ["evolve"] else argv
        emit(report, stored, Path(args.run_dir), "gpuosctl evolve " + shlex.join(argv), Path(args.emit))
    if args.output == "json":
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
        print(f"run directory: {args.run_dir} (report.md, score.png, heldout.png, best.py)")
    held = report.get("held_out") or {}
    return 0 if not held or held.get("valid") else 1


def _is_history(text: str) -> bool:
    from gpuos.scheduler.sim.traces import history_header

    return "|" not in text and history_header(Path(text)) is not None


def _history_plan(args: argparse.Namespace) -> Any:
    """The time-ordered plan (gpuos.agents.workloads.history_plan) of the one exported history
    in ``--trace``, or None after saying on stderr why the arguments do not allow one."""
    from gpuos.agents.workloads import history_plan
    from gpuos.errors import GpuosError

    def refuse(message: str) -> None:
        print(f"gpuosctl evolve: {message}", file=sys.stderr)

    if args.verify and len(args.trace) != 1:
        refuse("--trace: an exported history is judged alone (its own baselines are tuned on its older part); "
               "give it as the only --trace")
        return None
    if len(args.trace) != 1 or not _is_history(args.trace[0]):
        refuse(f"--trace: a search takes one exported history (gpuosctl trace export -o FILE), not "
               f"{', '.join(args.trace)}; other training traces go in --traces")
        return None
    if not args.verify and (args.traces is not None or args.held_out is not None):
        refuse("--traces/--held-out: not with --trace EXPORT; the history's time-ordered split chooses both")
        return None
    if not args.verify and args.engine == "openevolve":
        refuse("--engine openevolve: not with --trace EXPORT (its evaluator tunes no baselines on a history); "
               "use --engine gp")
        return None
    try:
        return history_plan(args.trace[0])
    except (GpuosError, OSError, ValueError) as exc:
        refuse(f"--trace: {getattr(exc, 'problem', exc)}")
        return None


def _tune_on(specs: tuple[str, ...], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The tunable baselines' constants tuned for the objective on ``specs`` (a history's training part)."""
    from gpuos.agents.baselines import tune_all

    print(f"gpuosctl evolve: tuning the human baselines on the history's {len(specs)} training windows "
          f"({args.baseline_trials} trials each)", file=sys.stderr)
    return tune_all(specs, args.objective, trials=args.baseline_trials, seed=args.seed)


def _verify(args: argparse.Namespace, specs: list[str], path: str | Path,
            tuned: dict[str, dict[str, float]] | None = None) -> int:
    """Judge the policy file at ``path`` on ``specs`` by the held-out protocol and print the report
    (``tuned``: the tunable baselines' constants, when tuned on a history's training part)."""
    from gpuos.agents.verify import format_verdict, verify

    try:
        source = Path(path).read_text()
    except OSError as exc:
        print(f"gpuosctl evolve: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    report = verify(source, args.objective, specs, filename=str(path),
                    robustness=not getattr(args, "no_robustness", False), tuned=tuned)
    print(json.dumps(report, indent=1) if args.output == "json" else format_verdict(report))
    return 0 if report.get("valid") else 1


def _run_openevolve(args: argparse.Namespace, traces: list[str], held_out: list[str]) -> int:
    try:
        from gpuos.agents import openevolve_engine
    except ImportError as exc:
        print(f"gpuosctl evolve: the openevolve engine is unavailable: {exc}", file=sys.stderr)
        return 1
    try:
        best = openevolve_engine.run(
            objective=args.objective, traces=traces, iterations=args.iterations, run_dir=args.run_dir,
            api_base=args.api_base, model=args.model, resume=args.resume,
        )
    except ModuleNotFoundError as exc:
        print(f"gpuosctl evolve: --engine openevolve needs the openevolve package (pip install 'gpuos[adrs]'): "
              f"{exc}", file=sys.stderr)
        return 1
    except (FileExistsError, ValueError, RuntimeError) as exc:
        print(f"gpuosctl evolve: {exc}", file=sys.stderr)
        return 1
    print(f"best program: {best}")
    return _verify(args, held_out, best) if held_out else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m gpuos.cli.evolve ...``: the same as ``gpuosctl evolve ...``."""
    parser = Parser(prog="gpuosctl")
    add_evolve_parser(parser.add_subparsers(dest="cmd", required=True))
    return run_evolve(parser.parse_args(["evolve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
