"""What sharing costs, per policy: every policy across interference x preemption cost, against FIFO.

    python bench/sensitivity.py [--quick] [--policy P ...] [--include-slow] [--window SPEC]

The window (``WINDOW``) is 2,000 consecutive arrivals of the default Alibaba pod list (from 30% of
the way through it by arrival), on 2 nodes x 8 G2 GPUs, arrivals rescaled to an offered load of
1.0 (``gpuos.agents.workloads``). Each policy runs once per (interference, preemption cost) pair of
``INTERFERENCE`` x ``PREEMPTION_COST``; every other ``SimConfig`` field keeps its default. Each
figure is a ratio to FIFO in the same config (FIFO never preempts, so its own figures move only
with interference; they are printed as seconds). ``--quick`` runs a 150-job window of the test
excerpt's pod list on 8 GPUs over a 2 x 2 grid, for the smoke test.

Policies in ``SLOW`` are left out unless ``--include-slow`` (or ``--policy``) names them, and the
output says so: one run of theirs on this window takes minutes, not seconds.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass

from gpuos.agents.workloads import load_workload
from gpuos.scheduler import available
from gpuos.scheduler.sim import SimConfig, SimResult, Trace, run_simulation

WINDOW = "alibaba-gpu-2023|gpus=2x8xG2|start=0.3|jobs=2000|load=1.0"
INTERFERENCE = (0.1, 0.2, 0.3, 0.4, 0.5)
PREEMPTION_COST = (10.0, 30.0, 60.0, 120.0)
QUICK_WINDOW = "synthetic:bursty?n=120&seed=3|gpus=1x8xA100-80GB|load=1.5"
QUICK_INTERFERENCE = (0.1, 0.5)
QUICK_PREEMPTION_COST = (10.0, 120.0)
BASELINE = "fifo"
# Gandiva re-slices every 60 s and suspends a job each time another waits: on the 1,000-job
# half of this window one run took 15 s at a 10 s preemption cost and 84 s at 60 s (a job pays
# its whole slice back on every resume, so at a cost >= the slice it stops gaining ground).
SLOW = {"gandiva": "one run takes 15-85+ s on a 1,000-job window (a suspension a minute over days of simulated time)"}


@dataclass(frozen=True)
class Cell:
    """One policy in one config, as ratios to FIFO in that config."""

    jct_mean: float
    wait_p99: float
    unfinished: int


def ratio(value: float, baseline: float) -> float:
    """value / baseline; nan where the baseline is 0 (FIFO had no queueing there)."""
    return value / baseline if baseline > 0 else math.nan


def run_grid(trace: Trace, policies: list[str], interference: tuple[float, ...],
             costs: tuple[float, ...]) -> tuple[dict[tuple[str, float, float], Cell], dict[float, SimResult]]:
    """Every policy at every (interference, preemption cost); and FIFO's own result per interference."""
    cells: dict[tuple[str, float, float], Cell] = {}
    fifo: dict[float, SimResult] = {}
    for x in interference:
        for cost in costs:
            config = SimConfig(interference=x, preemption_cost=cost)
            base = run_simulation(trace, BASELINE, config=config)
            fifo.setdefault(x, base)
            for name in policies:
                r = base if name == BASELINE else run_simulation(trace, name, config=config)
                cells[(name, x, cost)] = Cell(
                    ratio(r.overall.jct_mean, base.overall.jct_mean),
                    ratio(r.overall.wait_p99, base.overall.wait_p99),
                    r.jobs - r.finished,
                )
            print(f"  interference {x:g}, preemption cost {cost:g} s: done", file=sys.stderr, flush=True)
    return cells, fifo


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def table(label: str, field: str, cells: dict[tuple[str, float, float], Cell], policies: list[str],
          interference: tuple[float, ...], costs: tuple[float, ...]) -> list[str]:
    """Rows are policies, columns interference values; each cell lists the ratio at each preemption cost."""
    costs_text = " / ".join(f"{c:g}" for c in costs)
    lines = [f"{label} / FIFO's, at preemption cost {costs_text} s:", "",
             "| policy | " + " | ".join(f"interference {x:g}" for x in interference) + " |",
             "|---|" + "---|" * len(interference)]
    for name in policies:
        row = []
        for x in interference:
            values = []
            for c in costs:
                cell = cells[(name, x, c)]
                text = _fmt(getattr(cell, field))
                values.append(text + (f" ({cell.unfinished} unfinished)" if cell.unfinished else ""))
            row.append(" / ".join(values))
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 150-job window and a 2 x 2 grid (smoke test)")
    parser.add_argument("--window", default="", help="workload spec instead of the default window")
    parser.add_argument("--policy", action="append", default=[], help="only these policies (FIFO always runs)")
    parser.add_argument("--include-slow", action="store_true", help="also run the policies in SLOW")
    args = parser.parse_args(argv)
    window = args.window or (QUICK_WINDOW if args.quick else WINDOW)
    interference = QUICK_INTERFERENCE if args.quick else INTERFERENCE
    costs = QUICK_PREEMPTION_COST if args.quick else PREEMPTION_COST
    names = args.policy or list(available())
    left_out = [] if args.policy or args.include_slow else [n for n in names if n in SLOW]
    policies = sorted({BASELINE, *names} - set(left_out))

    command = "python bench/sensitivity.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    trace = load_workload(window)
    started = time.perf_counter()
    cells, fifo = run_grid(trace, policies, interference, costs)
    wall = time.perf_counter() - started

    print(f"Command: `{command.strip()}` ({platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, one core, {wall:.0f} s for the grid)")
    print(f"Window: `{window}` ({len(trace.jobs)} jobs, {sum(len(n.gpus) for n in trace.nodes)} GPUs)")
    print("FIFO's own mean JCT / p99 queueing (s) by interference: " + "; ".join(
        f"{x:g}: {r.overall.jct_mean:.0f} / {r.overall.wait_p99:.0f}" for x, r in fifo.items()))
    for name in left_out:
        print(f"Left out: {name} ({SLOW[name]}); add --include-slow to run it.")
    print()
    print("\n".join(table("mean JCT", "jct_mean", cells, policies, interference, costs)))
    print()
    print("\n".join(table("p99 queueing", "wait_p99", cells, policies, interference, costs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
