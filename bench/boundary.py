"""What the process boundary costs: a policy simulated in this process vs the same policy as a
candidate in its own process (agents/sandbox.py: snapshots out, decisions back, seccomp on).

    python bench/boundary.py [--spec SPEC] [--repeat 3]

Prints wall seconds for each way and the per-round overhead; the metrics must be identical.
"""

from __future__ import annotations

import argparse
import sys
import time

from gpuos.agents.objectives import simulate
from gpuos.agents.sandbox import run_candidate
from gpuos.agents.workloads import load_workload
from gpuos.scheduler.sim import run_simulation

SOURCES = {
    "fifo": "from gpuos.scheduler.policies.fifo import Fifo\nPOLICY = Fifo\n",
    "fgd": "from gpuos.scheduler.policies.fgd import Fgd\nPOLICY = Fgd\n",
    "srtf": "from gpuos.scheduler.policies.srtf import ShortestRemainingTimeFirst\nPOLICY = ShortestRemainingTimeFirst\n",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="synthetic:bursty?n=300&seed=11|gpus=2x8xA100-80GB|load=1.2")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    trace = load_workload(args.spec)
    print(f"{args.spec}: best of {args.repeat}")
    print(f"{'policy':<8}{'rounds':>8}{'in process s':>14}{'boundary s':>12}{'ratio':>8}{'per round ms':>14}  same metrics")
    for name, source in SOURCES.items():
        rounds = run_simulation(trace, name).rounds
        local = remote = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            mine = simulate(trace, name)
            local = min(local, time.perf_counter() - started)
            started = time.perf_counter()
            outcome = run_candidate(source, [trace], timeout=600.0)
            remote = min(remote, time.perf_counter() - started)
        if not outcome.ok:
            print(f"{name}: {outcome.error}")
            return 1
        same = outcome.runs[trace.name]["metrics"] == mine.metrics
        print(f"{name:<8}{rounds:>8}{local:>14.3f}{remote:>12.3f}{remote / local:>8.1f}"
              f"{(remote - local) / rounds * 1000:>14.2f}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
