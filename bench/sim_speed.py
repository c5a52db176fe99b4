"""Simulator speed: wall time to replay traces with a simple policy (FIFO), one core.

    python bench/sim_speed.py [--repeat 3] [--large 100000]

Cases: the 8,152-task alibaba-gpu-2023 default trace on its full 1,213-node cluster (loading
excluded), the same trace under FGD (a scoring policy that looks at every feasible node), and
the seeded ``synthetic:large`` trace (100,000 jobs at 0.8 load on 512 A100s). Reports the best
of ``--repeat`` runs and the scheduling rounds per second.
"""

from __future__ import annotations

import argparse
import platform
import time

from gpuos.scheduler.sim import load_trace, run_simulation


def best(trace: str, policy: str, repeat: int) -> tuple[float, int, float]:
    loaded = load_trace(trace)
    load_start = time.perf_counter()
    load_trace(trace)
    load_seconds = time.perf_counter() - load_start
    times = []
    rounds = 0
    for _ in range(repeat):
        result = run_simulation(loaded, policy)
        times.append(result.wall_seconds)
        rounds = result.rounds
    return min(times), rounds, load_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--large", type=int, default=100_000)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'trace':<42}{'policy':<8}{'jobs':>8}{'sim s':>9}{'rounds/s':>10}{'load s':>8}")
    cases = [
        ("alibaba-gpu-2023", "fifo", args.repeat),
        ("alibaba-gpu-2023", "fgd", 1),
        (f"synthetic:large?n={args.large}", "fifo", 1),
    ]
    for trace, policy, repeat in cases:
        seconds, rounds, load_seconds = best(trace, policy, repeat)
        jobs = len(load_trace(trace).jobs)
        print(f"{trace:<42}{policy:<8}{jobs:>8}{seconds:>9.2f}{rounds / seconds:>10.0f}{load_seconds:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
