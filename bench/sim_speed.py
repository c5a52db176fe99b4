"""Simulator speed: wall time of every built-in policy on the full alibaba-gpu-2023 cluster, one core.

    python bench/sim_speed.py [--repeat 3] [--large 100000] [--write]

Cases: the 8,152-task alibaba-gpu-2023 default pod list on its full 1,213-node cluster under
every registered built-in policy, and the seeded ``synthetic:large`` trace (100,000 jobs at 0.8
load on 512 A100s) under FIFO. Each time is given against FIFO's on the alibaba trace in the
same run (the FIFO cases are the best of ``--repeat`` runs, the rest single runs; loading is
excluded).
The target is at most 10 s per case. ``--write`` replaces the "Simulator speed" section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path

from gpuos.scheduler import available
from gpuos.scheduler.sim import load_trace, run_simulation

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 10.0
FULL = "alibaba-gpu-2023"


def best(trace: str, policy: str, repeat: int) -> tuple[float, int, float]:
    """(fastest simulation seconds, rounds, trace load seconds)."""
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


def built_in() -> list[str]:
    """Registered policies that ship with gpuos (not ones a package adds by entry point)."""
    return [name for name, cls in available().items() if cls.__module__.startswith("gpuos.scheduler.policies.")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each FIFO case (best kept)")
    parser.add_argument("--large", type=int, default=100_000, help="jobs in the synthetic:large case")
    parser.add_argument("--policy", action="append", default=[], help="only these policies (with FIFO)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    print(f"machine: {machine}")
    policies = args.policy or built_in()
    large = f"synthetic:large?n={args.large}"
    cases = [(FULL, "fifo", args.repeat)] + [(FULL, p, 1) for p in policies if p != "fifo"] + [(large, "fifo", args.repeat)]
    rows = [
        "| trace | policy | jobs | sim s | x FIFO | rounds/s | load s | at most 10 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print(f"{'trace':<30}{'policy':<22}{'jobs':>8}{'sim s':>8}{'x FIFO':>8}{'rounds/s':>10}{'load s':>8}")
    fifo = 0.0
    for trace, policy, repeat in cases:
        seconds, rounds, load_seconds = best(trace, policy, repeat)
        if (trace, policy) == (FULL, "fifo"):
            fifo = seconds
        jobs = len(load_trace(trace).jobs)
        ratio = seconds / fifo
        print(f"{trace:<30}{policy:<22}{jobs:>8}{seconds:>8.2f}{ratio:>8.1f}{rounds / seconds:>10.0f}"
              f"{load_seconds:>8.2f}", flush=True)
        met = "yes" if seconds <= TARGET_SECONDS else "**no**"
        rows.append(f"| {trace} | {policy} | {jobs:,} | {seconds:.2f} | {ratio:.1f} | {rounds / seconds:,.0f} | "
                    f"{load_seconds:.2f} | {met} |")
    if args.write:
        write(ROOT / "bench" / "RESULTS.md", rows, machine, args.repeat, args.large)


def write(path: Path, rows: list[str], machine: str, repeat: int, large: int) -> None:
    section = "\n".join([
        "## Simulator speed (bench/sim_speed.py)",
        "",
        f"`.venv/bin/python bench/sim_speed.py --write` ({machine}, one core; the FIFO cases best of "
        f"{repeat} runs, the rest single runs; trace loading excluded from \"sim s\"; \"x FIFO\" is the time over FIFO's "
        "on alibaba-gpu-2023 in the same run). alibaba-gpu-2023 runs on its full 1,213-node cluster; "
        f"synthetic:large is {large:,} seeded jobs (not a real trace) on 512 A100s at load 0.8.",
        "",
        *rows,
        "",
    ])
    text = path.read_text()
    pattern = re.compile(r"## Simulator speed \(bench/sim_speed.py\)\n.*?(?=\n## )", re.S)
    if not pattern.search(text):
        sys.exit("bench/RESULTS.md has no Simulator speed section to replace")
    path.write_text(pattern.sub(lambda _: section.rstrip("\n") + "\n", text, count=1))


if __name__ == "__main__":
    main()
