"""What a search optimises: one metric of a simulation run per objective, lower is better.

- ``mean_jct``: mean job completion time over all jobs (seconds).
- ``p99_latency``: 99th percentile JCT of the latency class (LS, Guaranteed); all jobs when a
  trace has none.
- ``fragmentation``: time-averaged share of GPU capacity left unusable by fragmentation (FGD's
  measure against the trace's own request mix), plus a small floor so near-zero values do not
  turn noise into huge ratios.
- ``makespan``: first arrival to last completion (seconds), the cost of draining the workload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.sim import SimConfig, SimResult, Trace, run_simulation
from gpuos.scheduler.sim.traces import LATENCY_CLASSES

# A fragmentation share this small is noise (one half-used GPU for a moment).
FRAGMENTATION_FLOOR = 0.005
HORIZON_FACTOR = 3.0


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    measure: Callable[[SimResult], float]


def _p99_latency(r: SimResult) -> float:
    latency = [c for c in r.classes if c.qos in LATENCY_CLASSES and c.finished]
    if not latency:
        return r.overall.jct_p99
    # Weight classes by size: the LS class dominates every trace that has one.
    return max(latency, key=lambda c: c.finished).jct_p99


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("mean_jct", "mean JCT over all jobs (s)", lambda r: r.overall.jct_mean),
        Objective("p99_latency", "p99 JCT of the latency class (s)", _p99_latency),
        Objective(
            "fragmentation", "time-averaged fragmented GPU share (+0.005 floor)",
            lambda r: r.fragmentation + FRAGMENTATION_FLOOR,
        ),
        Objective("makespan", "first arrival to last completion (s)", lambda r: r.makespan),
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

    def to_json(self) -> dict[str, object]:
        return {
            "metrics": self.metrics, "jobs": self.jobs, "finished": self.finished,
            "never_started": self.never_started, "max_wait": self.max_wait, "wall_seconds": self.wall_seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TraceRun:
        return cls(
            {k: float(v) for k, v in data["metrics"].items()}, int(data["jobs"]), int(data["finished"]),
            int(data["never_started"]), float(data["max_wait"]), float(data["wall_seconds"]),
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


def simulate(trace: Trace, policy: str | Policy) -> TraceRun:
    """Run ``policy`` over ``trace`` up to :func:`horizon` and measure every objective (raises
    SimulationError on a bad decision)."""
    result = run_simulation(trace, policy, config=SimConfig(horizon=horizon(trace)))
    waits = [r.first_start - r.job.arrival for r in result.outcome.records if r.first_start is not None]
    never = sum(1 for r in result.outcome.records if r.first_start is None)
    return TraceRun(
        measure_all(result), result.jobs, result.finished, never, max(waits, default=0.0), result.wall_seconds
    )
