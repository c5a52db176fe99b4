"""What a search optimises: one metric of a simulation run per objective, lower is better.

Every metric counts GPU jobs only (CPU-only pods stay out) and is defined in
:mod:`gpuos.scheduler.sim.metrics`. "The latency class" is the LS and Guaranteed GPU jobs; in a
trace without any, the latency objectives fall back to all GPU jobs.

- ``mean_jct``: mean completion time of the GPU jobs that finished (seconds).
- ``slo_miss``: share of the latency class that missed its SLO (unfinished jobs miss), plus
  ``SLO_MISS_FLOOR``.
- ``latency_wait_p99``: 99th percentile queueing delay of the latency class (seconds; a job
  never started counts its wait up to the end of the run), plus ``WAIT_FLOOR``.
- ``slowdown``: mean bounded slowdown of GPU jobs, max(1, JCT / max(duration, 10 s)).
- ``idle_while_waiting``: time-averaged share of healthy GPU capacity left unallocated while a
  GPU job that an empty cluster could take waits (FGD's measure), plus ``IDLE_FLOOR``.
- ``fragmentation``: time-averaged share of GPU capacity left unusable by fragmentation (FGD's
  measure against the trace's own request mix), plus ``FRAGMENTATION_FLOOR``.
- ``makespan``: first arrival to last completion (seconds), the cost of draining the workload.
  Reported, but not a guard (``Objective.guard``): a policy that serves short jobs first may
  well finish the last job later, and that is no loss to any user.

The floors keep a ratio of two near-zero values from turning noise into a huge score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.sim import SimConfig, SimResult, Trace, run_simulation
from gpuos.scheduler.sim.engine import Decide

# A fragmentation share this small is noise (one half-used GPU for a moment).
FRAGMENTATION_FLOOR = 0.005
# One missed SLO in a latency class of about a hundred jobs: below it, misses are noise.
SLO_MISS_FLOOR = 0.01
# Seconds added to the latency class's p99 wait. Scores are ratios, and on many 300-job windows
# the best policy starts every latency job at once: with a 1 s floor a 200 s wait scored 1/200
# and such windows decided every search. Half a minute is what a latency job barely notices
# against its pod's start-up time.
WAIT_FLOOR = 30.0
# The same share as fragmentation's floor, for the same reason.
IDLE_FLOOR = 0.005
HORIZON_FACTOR = 3.0


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    measure: Callable[[SimResult], float]
    # Whether a candidate searched for another objective must not lose on this one.
    guard: bool = True


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("mean_jct", "mean JCT of GPU jobs (s)", lambda r: r.gpu_jct_mean),
        Objective(
            "slo_miss", f"share of the latency class missing its SLO (+{SLO_MISS_FLOOR} floor)",
            lambda r: 1.0 - r.slo_attainment + SLO_MISS_FLOOR,
        ),
        Objective(
            "latency_wait_p99", f"p99 queueing delay of the latency class (s, +{WAIT_FLOOR:g} floor)",
            lambda r: r.latency_wait_p99 + WAIT_FLOOR,
        ),
        Objective("slowdown", "mean bounded slowdown of GPU jobs", lambda r: r.slowdown_mean),
        Objective(
            "idle_while_waiting", f"unallocated GPU share while GPU jobs wait (+{IDLE_FLOOR} floor)",
            lambda r: r.idle_while_waiting + IDLE_FLOOR,
        ),
        Objective(
            "fragmentation", f"time-averaged fragmented GPU share (+{FRAGMENTATION_FLOOR} floor)",
            lambda r: r.fragmentation + FRAGMENTATION_FLOOR,
        ),
        Objective("makespan", "first arrival to last completion (s)", lambda r: r.makespan, guard=False),
    )
}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}") from None


def measure_all(result: SimResult) -> dict[str, float]:
    """Every objective's metric for one run."""
    return {name: o.measure(result) for name, o in OBJECTIVES.items()}


@dataclass(frozen=True)
class TraceRun:
    """What one simulation of one trace measured, plus what the validity checks need."""

    metrics: dict[str, float]
    jobs: int
    finished: int
    never_started: int
    max_wait: float
    wall_seconds: float
    # Jain's index over tenants of their GPU jobs' service ratio (tenant fairness).
    jain: float = 1.0
    # The longest queueing delay of a GPU job that started, and the GPU jobs that never did.
    gpu_max_wait: float = 0.0
    gpu_never_started: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "metrics": self.metrics, "jobs": self.jobs, "finished": self.finished,
            "never_started": self.never_started, "max_wait": self.max_wait, "wall_seconds": self.wall_seconds,
            "jain": self.jain, "gpu_max_wait": self.gpu_max_wait, "gpu_never_started": self.gpu_never_started,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TraceRun:
        return cls(
            {k: float(v) for k, v in data["metrics"].items()}, int(data["jobs"]), int(data["finished"]),
            int(data["never_started"]), float(data["max_wait"]), float(data["wall_seconds"]),
            float(data["jain"]), float(data["gpu_max_wait"]), int(data["gpu_never_started"]),
        )


def horizon(trace: Trace) -> float:
    """Simulated time after which a run stops: the last arrival plus ``HORIZON_FACTOR`` times the
    time the whole cluster needs for all the work, plus the longest job. A policy that thrashes
    (preempting and resuming without end) would otherwise never finish; stopped there, its
    unfinished jobs fail the starvation check."""
    capacity = sum(len(n.gpus) for n in trace.nodes) or 1
    work = sum(j.duration * j.request.compute_milli / 1000 for j in trace.jobs)
    last = max((j.arrival for j in trace.jobs), default=0.0)
    longest = max((j.duration for j in trace.jobs), default=0.0)
    return last + HORIZON_FACTOR * work / capacity + 2 * longest


def simulate(trace: Trace, policy: str | Policy, config: SimConfig | None = None,
             decide: Decide | None = None) -> TraceRun:
    """Run ``policy`` over ``trace`` up to :func:`horizon` and measure every objective (raises
    SimulationError on a bad decision). ``config`` sets the simulator's costs (e.g. interference
    or preemption cost, to check a result holds under other models); its horizon, when it sets
    none, is :func:`horizon`. ``decide`` makes the rounds' decisions in place of the framework
    here (a candidate's process, agents/sandbox.py)."""
    config = config or SimConfig()
    if config.horizon == math.inf:
        config = replace(config, horizon=horizon(trace))
    result = run_simulation(trace, policy, config=config, decide=decide)
    waits = [r.first_start - r.job.arrival for r in result.outcome.records if r.first_start is not None]
    never = sum(1 for r in result.outcome.records if r.first_start is None)
    return TraceRun(
        measure_all(result), result.jobs, result.finished, never, max(waits, default=0.0), result.wall_seconds,
        result.jain, result.gpu_max_wait, result.gpu_never_started,
    )
