"""Agents on GPUs: what job groups and deduplication save, against the same jobs submitted plainly.

    python bench/agents.py [--part sim|daemon|all] [--groups 300] [--daemon-groups 24] [--seed 0] [--policy fifo]

The agentic workload of scheduler/sim/agentic.py (group sizes, duplicate rate and per-member
success from arXiv 2509.00997, arrivals from the Azure LLM inference trace 2023) runs twice in
the same run: (a) with its groups and dedupe keys honoured (a success ends its group, budgets
stop members, a duplicate takes its original's outcome), and (b) submitted plainly (every member
runs to its end). Printed: GPU-seconds spent and time to first success per group, with the
ratio plain / grouped.

Parts: ``sim`` drives the simulator; ``daemon`` replays a small workload of the same generator
(``--daemon-groups`` groups of 2-6 members on DAEMON_GPUS, member run times log-normal around
``member_seconds`` with sigma 0.5, compressed ``member_seconds`` times so a median member works
1 s) through a gpuosd subprocess (simulated GPUs, real processes; gpuos/cli/replay.py), grouped
and plainly, and prints beside it the simulator's figures for the same compressed jobs with
tests/test_one_world.py's model of the daemon's latencies (one world). Figures are in trace
seconds. ``all`` runs both.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpuos.scheduler.sim import SimConfig, run_simulation  # noqa: E402
from gpuos.scheduler.sim.agentic import AgenticParams, generate, labels, plainly  # noqa: E402
from gpuos.scheduler.sim.metrics import AgenticStats, agentic_stats  # noqa: E402
from gpuos.scheduler.sim.traces import scale  # noqa: E402

DAEMON_GPUS = "4xH100-80GB"


def sim_half(params: AgenticParams, seed: int, policy: str) -> tuple[AgenticStats, AgenticStats, float]:
    """(grouped, plain, seconds) for the workload through the simulator."""
    trace = generate(params, seed=seed)
    started = time.perf_counter()
    grouped = run_simulation(trace, policy, seed=seed)
    plain = run_simulation(plainly(trace), policy, seed=seed)
    assert grouped.agentic is not None
    return grouped.agentic, agentic_stats(plain.outcome.records, labels(trace)), time.perf_counter() - started


def one_world() -> SimConfig:
    """The simulator as tests/test_one_world.py models gpuosd: start and stop latencies, 50 ms
    rounds, no MPS interference on simulated GPUs, resumes from a checkpoint."""
    from tests.test_one_world import ROUND_GAP, START_LATENCY, STOP_LATENCY

    return SimConfig(interference=0.0, preemption_cost=0.0, start_latency=START_LATENCY,
                     stop_latency=STOP_LATENCY, round_gap=ROUND_GAP)


def daemon_half(groups: int, seed: int, policy: str) -> int:
    """The small workload through gpuosd, grouped and plainly, beside the simulator's run of it."""
    from gpuos.cli.replay import outcome, replay
    from gpuos.client import Client
    from tests.conftest import DaemonProcess, _kill_leftover_jobs

    params = AgenticParams(groups=groups, group_size=4, member_sigma=0.5, gpus=DAEMON_GPUS)
    trace = generate(params, seed=seed)
    # Compressed here, not by the replay, so the simulator runs exactly what gpuosd receives.
    compressed = scale(trace, params.member_seconds)
    plain = plainly(compressed)
    named = labels(compressed)
    started = time.perf_counter()
    sim_grouped = run_simulation(compressed, policy, seed=seed, config=one_world())
    sim_plain = run_simulation(plain, policy, seed=seed, config=one_world())
    assert sim_grouped.agentic is not None
    sim_seconds = time.perf_counter() - started
    base = Path(tempfile.mkdtemp(prefix="gpuos-a", dir="/tmp"))
    daemon = DaemonProcess(base, "--sim-gpus", DAEMON_GPUS).start()
    try:
        with Client(socket=daemon.socket) as client:
            client.set_policy(policy)
            started = time.perf_counter()
            grouped_run = replay(client, compressed)
            plain_run = replay(client, plain)
            wall = time.perf_counter() - started
    finally:
        daemon.stop()
        _kill_leftover_jobs(daemon.state)
        shutil.rmtree(base, ignore_errors=True)
    d_grouped = agentic_stats(outcome(grouped_run).records)
    d_plain = agentic_stats(outcome(plain_run).records, named)
    header = (f"{groups} groups ({len(compressed.jobs)} jobs), seed {seed}, policy {policy}, {DAEMON_GPUS}, "
              f"compressed {params.member_seconds:g}x; figures in compressed seconds")
    print(table(f"gpuosd | {header} | {wall:.1f} s", d_grouped, d_plain))
    print(table(f"simulator, same jobs (one world) | {sim_seconds:.1f} s", sim_grouped.agentic,
                agentic_stats(sim_plain.outcome.records, named)))
    print(one_world_table(d_grouped, sim_grouped.agentic))
    return 0


def one_world_table(daemon: AgenticStats, sim: AgenticStats) -> str:
    """gpuosd against the simulator, grouped: where the two worlds differ."""
    rows = [
        ("GPU-seconds spent", daemon.gpu_seconds, sim.gpu_seconds),
        ("time to first success, mean (s)", daemon.first_success_mean, sim.first_success_mean),
        ("groups with a success", daemon.groups_succeeded, sim.groups_succeeded),
        ("members stopped by their group", daemon.stopped, sim.stopped),
        ("duplicates absorbed", daemon.duplicates, sim.duplicates),
    ]
    lines = ["one world, grouped", f"{'':34}{'gpuosd':>12}{'simulator':>12}{'gpuosd/sim':>15}"]
    for name, a, b in rows:
        ratio = f"{a / b:.2f}x" if b and a == a and b == b else "-"
        lines.append(f"{name:34}{a:>12.2f}{b:>12.2f}{ratio:>15}")
    return "\n".join(lines)


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
    parser.add_argument("--daemon-groups", type=int, default=24, help="groups of the daemon half's workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", default="fifo")
    args = parser.parse_args(argv)
    params = AgenticParams(groups=args.groups)
    if args.part in ("sim", "all"):
        grouped, plain, seconds = sim_half(params, args.seed, args.policy)
        print(table(f"simulator | {args.groups} groups, seed {args.seed}, policy {args.policy}, {params.gpus} "
                    f"| {seconds:.1f} s", grouped, plain))
    if args.part in ("daemon", "all"):
        return daemon_half(args.daemon_groups, args.seed, args.policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
