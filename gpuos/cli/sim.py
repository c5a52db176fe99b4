"""``gpuosctl sim``: replay a trace through one or more policies in the simulator, locally.

It needs no daemon: the simulator runs the same policy code that gpuosd does.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from gpuos.cli import output
from gpuos.cli.args import non_negative_float, positive_float, positive_int, seed, start_fraction


def add_sim_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sim", help="replay a trace under policies in the simulator (no daemon needed)",
        description="Replay TRACE under each --policy and print a table per policy (with --plot PATH, a PNG "
                    "too). Traces: "
                    "alibaba-gpu-2023[:variant], alibaba-genai-2026, synthetic:llm-decode|bursty|large?n=&seed=, "
                    "or a path to a pod-list/request CSV.",
    )
    p.add_argument("--trace", required=True, help="trace name or CSV path")
    p.add_argument("--policy", action="append", default=[], help="policy name (repeatable; default fifo)")
    p.add_argument("--gpus", default=None, help="cluster instead of the trace's, e.g. 4x8xH100-80GB,2x2xT4")
    p.add_argument("--seed", type=seed, default=0)
    add_window_arguments(p)
    p.add_argument("--plot", metavar="PATH", default="",
                   help="write a PNG of each run to PATH (with several policies, the policy name is added); "
                        "no plot without it")
    # Gone since plots became opt-in; kept only to say so instead of argparse's bare "unrecognized".
    p.add_argument("--no-plot", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--interference", type=non_negative_float, default=None,
                   help="MPS colocation: a share runs at 1 / (1 + X x its neighbours' GPU share) "
                        "(calibration in docs/scheduler.md, What sharing costs)")
    p.add_argument("--context-switch", type=non_negative_float, default=None, metavar="S",
                   help="seconds lost per time-slice quantum to switching contexts")
    p.add_argument("--preemption-cost", type=non_negative_float, default=None, metavar="S",
                   help="seconds of extra work a preempted job does when it resumes (checkpoint-restart)")
    p.add_argument("--suspend", action="store_true",
                   help="GPUs can suspend jobs to host memory: a preempted single-GPU job is suspended (where "
                        "its policy says so) and pays bytes over --host-link-gbps to leave and to come back, "
                        "instead of --preemption-cost")
    p.add_argument("--oversubscription", type=positive_float, default=None, metavar="X",
                   help="with --suspend: time-sharers' memory limits may add up to X times a GPU's memory")
    p.add_argument("--cross-gpu-restore", action="store_true",
                   help="with --suspend: a suspended job may come back on another GPU of its model")
    p.add_argument("--host-link-gbps", type=positive_float, default=None, metavar="GB/S",
                   help="host link bandwidth for suspend and restore (default 25, a PCIe Gen4 x16 figure)")
    p.add_argument("--failures-per-gpu-hour", type=non_negative_float, default=None,
                   help="inject GPU failures at this rate")
    p.add_argument("--horizon", type=positive_float, default=None, help="stop at this simulated time, in seconds")


def add_window_arguments(p: argparse.ArgumentParser) -> None:
    """--start and --jobs, the trace window that sim and replay share (traces.window)."""
    p.add_argument("--start", type=start_fraction, default=0.0, metavar="F",
                   help="skip the first F (0 <= F < 1) of the trace's jobs, in arrival order")
    p.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                   help="replay only N jobs (from --start); arrivals shift so the first is at 0")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def result_dict(result: Any) -> dict[str, Any]:
    data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "outcome"}
    data["classes"] = [dataclasses.asdict(c) for c in result.classes]
    return data


# The simulator's metrics use numpy; only the plot needs matplotlib (runs without --plot need none).
SIM_MODULES = ("numpy",)
PLOT_MODULES = ("matplotlib",)


def run_sim(args: argparse.Namespace) -> int:
    from gpuos import extras

    if args.no_plot:
        print("gpuosctl sim: --no-plot is gone: no plot is written unless you pass --plot PATH", file=sys.stderr)
        return 2
    try:
        extras.require("the simulator", "sim", SIM_MODULES)
        if args.plot:
            extras.require("the plot", "sim", PLOT_MODULES)
    except extras.MissingExtra as exc:
        hint = " (or leave out --plot)" if exc.modules == PLOT_MODULES else ""
        print(f"gpuosctl sim: {exc}{hint}", file=sys.stderr)
        return 1
    from gpuos.errors import GpuosError, InvalidArgument
    from gpuos.scheduler.registry import get_policy
    from gpuos.scheduler.sim import SimConfig, SimulationError, load_trace, run_simulation
    from gpuos.scheduler.sim.traces import window

    overrides = {
        key: value for key, value in (
            ("interference", args.interference),
            ("context_switch", args.context_switch),
            ("preemption_cost", args.preemption_cost),
            ("failures_per_gpu_hour", args.failures_per_gpu_hour),
            ("horizon", args.horizon),
            ("suspend", args.suspend or None),
            ("oversubscription", args.oversubscription),
            ("cross_gpu_restore", args.cross_gpu_restore or None),
            ("host_link_bytes_per_s", None if args.host_link_gbps is None else args.host_link_gbps * 1e9),
        ) if value is not None
    }
    policies = args.policy or ["fifo"]
    try:
        config = SimConfig(**overrides)
    except InvalidArgument as exc:
        # A combination of flags the model refuses: a bad command line, named by its flag.
        print(f"gpuosctl sim: --{exc.field.replace('_', '-')}: {exc.problem}", file=sys.stderr)
        return 2
    try:
        for name in policies:
            get_policy(name)  # an unknown name fails before the trace is read
        trace = window(load_trace(args.trace, seed=args.seed), args.start, args.jobs)
    except (GpuosError, KeyError, ValueError, OSError) as exc:
        print(f"gpuosctl sim: {exc}", file=sys.stderr)
        return 1
    results = []
    for name in policies:
        try:
            result = run_simulation(trace, name, gpus=args.gpus, seed=args.seed, config=config)
        except (SimulationError, GpuosError, ValueError) as exc:
            print(f"gpuosctl sim: {name}: {exc}", file=sys.stderr)
            return 1
        results.append(result)
        plot = ""
        if args.plot:
            path = args.plot
            if len(policies) > 1:
                stem = Path(args.plot)
                path = str(stem.with_name(f"{stem.stem}-{_slug(name)}{stem.suffix or '.png'}"))
            plot = str(result.plot(path))
        if args.output != "json":
            print(result.table())
            if plot:
                print(f"plot: {plot}")
            print()
    if args.output == "json":
        print(output.dumps([result_dict(r) for r in results]))
    return 0
