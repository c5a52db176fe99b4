"""One world: a trace replayed through gpuosd (simulated GPUs, real processes) and through the
simulator gives the same start order, the same placements and the same job completion times,
up to timing noise, for every registered policy (CI runs one of each family: see BY_DEFAULT).

The excerpts are 100 jobs of seeded synthetic traces (labelled synthetic: no real system made
them) chosen to exercise every sharing kind and preemption: ``bursty`` has whole-GPU jobs of
1-8 GPUs and MPS shares on 8 A100s; ``llm-decode`` has MIG slices, MPS shares and time-sharers
on 2 H100s. Both are compressed to seconds (arrivals and durations divided by a time scale;
each duration then kept within [MIN_WORK, MAX_WORK] seconds so that no job is shorter than the
noise of starting a process, nor the run longer than CI allows). The same compressed trace, as
gpuosd receives it (QoS in the API's two classes), is what the simulator runs.

What must differ, and how the simulator models it: a start takes ``START_LATENCY`` seconds
before a job's work begins (spawning its supervisor and process); MPS neighbours do not slow
each other on simulated GPUs (interference 0); a preempted job resumes from its checkpoint
(preemption cost 0 beyond the start). What stays timing noise: rounds that coalesce within
50 ms, the 50 ms reap tick, turns of whole quanta where the simulator shares time fluidly.

Tolerances, stated (TOLERANCE): the start orders agree up to pairs of jobs whose simulated
starts lie within ORDER_NOISE seconds of each other, with at most a stated share of the other
pairs ordered differently; at least a stated share of the jobs whose first placement both sides
know land on the same GPUs with the same partition (most misses are swaps between GPUs that came
free within the noise); mean JCT within a stated relative error. Looser for preemptive policies.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuos.client import Client
from gpuos.jobs import Qos
from gpuos.scheduler import Policy, available, get_policy
from gpuos.scheduler.sim import SimConfig, Trace, load_trace, parse_gpus
from gpuos.scheduler.sim.engine import Simulator, resolve_policy
from gpuos.scheduler.sim.traces import placeable, scale, window

MIN_WORK, MAX_WORK = 0.5, 2.0
START_LATENCY = 0.3
STOP_LATENCY = 0.08
ROUND_GAP = 0.05
ORDER_NOISE = 0.5
# (order disagreements at most, placement agreement at least, relative JCT error at most), for
# policies that place only and for those that also preempt: a preemption's timing decides which
# job a later round preempts, so noise compounds there (measured figures in bench/RESULTS.md).
TOLERANCE = {False: (0.15, 0.15, 0.35), True: (0.2, 0.1, 0.6)}


def preempts(policy: str) -> bool:
    return type(get_policy(policy)).victims is not Policy.victims


CLUSTER = "4xH100-80GB"
# (trace, jobs taken, time scale): whole-GPU jobs of 1-4 GPUs and MPS shares from one, MIG
# slices, MPS shares and time-sharers from the other, merged by arrival on one machine.
PARTS = (
    ("synthetic:bursty?n=60&seed=11&load=0.5", 50, 2000.0),
    ("synthetic:llm-decode?n=60&seed=11&load=0.5", 50, 60.0),
)


def excerpt() -> Trace:
    """The compressed 100-job excerpt, as gpuosd receives it."""
    jobs = []
    for k, (source, count, time_scale) in enumerate(PARTS):
        part = scale(window(load_trace(source), 0.0, count), time_scale)
        jobs += [
            dataclasses.replace(
                j,
                id=f"{k}-{j.id}",
                duration=min(MAX_WORK, max(MIN_WORK, j.duration)),
                # The API has two classes; the trace's other two arrive as the one they rank with.
                qos=Qos.LS.value if Qos(j.qos).latency_sensitive else Qos.BE.value,
            )
            for j in part.jobs
        ]
    kept, _ = placeable(Trace("one-world excerpt", parse_gpus(CLUSTER), tuple(jobs), "synthetic"))
    return kept


@dataclass(frozen=True)
class Run:
    """Per job (by trace job id): first start, finish (None if unfinished), first placement."""

    starts: dict[str, float]
    finishes: dict[str, float | None]
    placements: dict[str, tuple[tuple[int, ...], str]]
    preemptions: int


def simulated(trace: Trace, policy: str) -> Run:
    config = SimConfig(interference=0.0, preemption_cost=0.0, start_latency=START_LATENCY, stop_latency=STOP_LATENCY,
                       round_gap=ROUND_GAP)
    sim = Simulator(trace, resolve_policy(policy, trace), config=config)
    placements: dict[str, tuple[tuple[int, ...], str]] = {}
    start = sim._start

    def recording(place, now):  # type: ignore[no-untyped-def]
        start(place, now)
        placements.setdefault(place.job_id, (place.gpus, f"mig:{place.mig_profile}" if place.mig_profile
                                             else place.sharing or "exclusive"))

    sim._start = recording  # type: ignore[method-assign]
    outcome = sim.run()
    return Run(
        {r.job.id: r.first_start for r in outcome.records if r.first_start is not None},
        {r.job.id: r.finish for r in outcome.records},
        placements,
        sum(r.preemptions for r in outcome.records),
    )


def replayed(client: Client, trace: Trace) -> Run:
    from gpuos.cli.replay import replay

    result = replay(client, trace, time_scale=1.0)
    return Run(
        {r.job.id: r.first_start for r in result.jobs if r.first_start is not None},
        {r.job.id: r.finish if r.state == "SUCCEEDED" else None for r in result.jobs},
        {r.job.id: (r.devices, r.partition) for r in result.jobs if r.devices},
        sum(r.preemptions for r in result.jobs),
    )


@dataclass(frozen=True)
class Comparison:
    order_disagreements: float  # share of pairs ordered differently beyond the noise
    placement_agreement: float
    placements_compared: int
    jct_sim: float
    jct_daemon: float

    @property
    def jct_error(self) -> float:
        return abs(self.jct_daemon - self.jct_sim) / self.jct_sim


def compare(trace: Trace, sim: Run, daemon: Run) -> Comparison:
    both = sorted(set(sim.starts) & set(daemon.starts))
    pairs = disagree = 0
    for a, b in itertools.combinations(both, 2):
        if abs(sim.starts[a] - sim.starts[b]) <= ORDER_NOISE:
            continue
        pairs += 1
        if (sim.starts[a] < sim.starts[b]) != (daemon.starts[a] < daemon.starts[b]):
            disagree += 1
    known = [j for j in sim.placements if j in daemon.placements]
    same = sum(sim.placements[j] == daemon.placements[j] for j in known)
    arrival = {j.id: j.arrival for j in trace.jobs}

    def mean_jct(run: Run) -> float:
        done = [f - arrival[j] for j, f in run.finishes.items() if f is not None]
        return sum(done) / max(1, len(done))

    return Comparison(disagree / max(1, pairs), same / max(1, len(known)), len(known), mean_jct(sim), mean_jct(daemon))


@pytest.fixture
def gpuosd(short_dir: Path) -> Iterator[Client]:
    """A fresh in-process gpuosd on the excerpt's cluster for each policy, so that no policy's
    run starts with what another left behind (idle MPS daemons, a longer event log)."""
    from tests.conftest import serve

    for daemon in serve(short_dir, sim_gpus=CLUSTER):
        with Client(socket=daemon.config.socket) as client:
            yield client


# Found when the order x placement combinations joined the registry (issue 12) and not yet
# explained: SRTF with a scored placement replays with a mean JCT 5-6x the simulator's through
# gpuosd (12.3-14.1 s against 2.26 s), while plain SRTF, best-fit, FGD and the priority and
# Tiresias combinations agree. Strict: the day they agree, this list must shrink.
KNOWN_DISAGREEMENTS = frozenset({"srtf+bestfit", "srtf+fgd"})


# Each replay takes about 30 s of wall time, so CI cannot afford all twenty. By default it runs
# one policy of each way the framework decides differently beyond queue order: preemption by
# priority (priority), least-attained service with periodic rounds (tiresias), time-slicing
# (gandiva), and an order x placement-by-scoring combination (tiresias+fgd). Queue order alone
# (fifo), order by the user's estimate (sjf), placement by scoring alone (fgd) and fairness
# across tenants (drf) ran by default until CI's time went to the kernels, Kubernetes and
# closed-loop tests; they agreed within tolerance there (bench/RESULTS.md, "One world").
# GPUOS_ONE_WORLD=all runs every registered policy, the known disagreements included.
BY_DEFAULT = frozenset({"priority", "tiresias", "gandiva", "tiresias+fgd"})


def _cases() -> list[object]:
    every = os.environ.get("GPUOS_ONE_WORLD") == "all"
    return [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="known daemon/simulator gap, see above"))
            if p in KNOWN_DISAGREEMENTS else p for p in sorted(available())
            if every or p in BY_DEFAULT]


@pytest.mark.parametrize("policy", _cases())
def test_a_replay_through_gpuosd_matches_the_simulator(gpuosd: Client, policy: str) -> None:
    trace = excerpt()
    gpuosd.set_policy(policy)
    result = compare(trace, simulated(trace, policy), replayed(gpuosd, trace))
    print(f"{policy}: {result}", file=sys.stderr)
    order, placement, jct = TOLERANCE[preempts(policy)]
    assert result.order_disagreements <= order, result
    assert result.placements_compared >= 10 and result.placement_agreement >= placement, result
    assert result.jct_error <= jct, result
