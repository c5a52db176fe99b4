"""Agents on GPUs: what job groups and deduplication save, against the same jobs submitted plainly.

    python bench/agents.py [--part sim|daemon|all] [--groups 300] [--seed 0] [--policy fifo]

The agentic workload of scheduler/sim/agentic.py (group sizes, duplicate rate and per-member
success from arXiv 2509.00997, arrivals from the Azure LLM inference trace 2023) runs twice in
the same run: (a) with its groups and dedupe keys honoured (a success ends its group, budgets
stop members, a duplicate takes its original's outcome), and (b) submitted plainly (every member
runs to its end). Printed: GPU-seconds spent and time to first success per group, with the
ratio plain / grouped.

Parts: ``sim`` drives the simulator; ``daemon`` (the same jobs through gpuosd) is not built yet.
"""

from __future__ import annotations

import argparse
import sys
import time

from gpuos.scheduler.sim import run_simulation
from gpuos.scheduler.sim.agentic import AgenticParams, generate, labels, plainly
from gpuos.scheduler.sim.metrics import AgenticStats, agentic_stats


def sim_half(params: AgenticParams, seed: int, policy: str) -> tuple[AgenticStats, AgenticStats, float]:
    """(grouped, plain, seconds) for the workload through the simulator."""
    trace = generate(params, seed=seed)
    started = time.perf_counter()
    grouped = run_simulation(trace, policy, seed=seed)
    plain = run_simulation(plainly(trace), policy, seed=seed)
    assert grouped.agentic is not None
    return grouped.agentic, agentic_stats(plain.outcome.records, labels(trace)), time.perf_counter() - started


def daemon_half(params: AgenticParams, seed: int, policy: str) -> int:
    print("daemon half: not built yet (the same jobs through gpuosd with and without groups)")
    return 2


def table(title: str, grouped: AgenticStats, plain: AgenticStats) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b and a == a and b == b else "-"

    rows = [
        ("GPU-seconds spent", grouped.gpu_seconds, plain.gpu_seconds, "{:.0f}"),
        ("time to first success, mean (s)", grouped.first_success_mean, plain.first_success_mean, "{:.1f}"),
        ("time to first success, p50 (s)", grouped.first_success_p50, plain.first_success_p50, "{:.1f}"),
        ("groups with a success", grouped.groups_succeeded, plain.groups_succeeded, "{:.0f}"),
        ("members stopped by their group", grouped.stopped, plain.stopped, "{:.0f}"),
        ("duplicates absorbed", grouped.duplicates, plain.duplicates, "{:.0f}"),
    ]
    lines = [title, f"{'':34}{'grouped':>12}{'plain':>12}{'plain/grouped':>15}"]
    for name, a, b, fmt in rows:
        lines.append(f"{name:34}{fmt.format(a):>12}{fmt.format(b):>12}{ratio(b, a):>15}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("sim", "daemon", "all"), default="sim")
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", default="fifo")
    args = parser.parse_args(argv)
    params = AgenticParams(groups=args.groups)
    if args.part in ("sim", "all"):
        grouped, plain, seconds = sim_half(params, args.seed, args.policy)
        print(table(f"simulator | {args.groups} groups, seed {args.seed}, policy {args.policy}, {params.gpus} "
                    f"| {seconds:.1f} s", grouped, plain))
    if args.part in ("daemon", "all"):
        return daemon_half(params, args.seed, args.policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
