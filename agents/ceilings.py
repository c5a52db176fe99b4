"""Clairvoyant ceilings: how far a queue order could go if it knew every job's true duration.

A ceiling is not a baseline (no scheduler knows durations); it says how much headroom an
objective leaves, so a search looks for gains where there are some. The policies stay ordinary
policies: they learn the truth only through the trace, whose estimates :func:`clairvoyant` sets
to the true durations, and run in the simulator like any other.

- ``mean_jct``, ``slowdown``: SRTF on true remaining time (optimal for mean flow time on one
  machine, the classic bound).
- the latency-class objectives (``slo_miss``, ``latency_wait_p99``): the latency class first, then
  true SRTF within a class; a latency job preempts best-effort work at once.
- the placement objectives (``idle_while_waiting``, ``fragmentation``): true SRTF with FGD
  placement, the best placement the repository has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from gpuos.agents.objectives import TraceRun, simulate
from gpuos.jobs import LATENCY_CLASSES
from gpuos.scheduler import get_policy
from gpuos.scheduler.policies.srtf import ShortestRemainingTimeFirst, remaining
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.preemption import victims_to_fit
from gpuos.scheduler.sim import Trace
from gpuos.scheduler.snapshot import JobView, Snapshot


def clairvoyant(trace: Trace) -> Trace:
    """``trace`` with every user's estimate replaced by the job's true duration."""
    jobs = tuple(replace(j, estimate=j.duration) for j in trace.jobs)
    return Trace(f"{trace.name} (clairvoyant)", trace.nodes, jobs, trace.source)


def _latency(job: JobView) -> bool:
    return job.qos in LATENCY_CLASSES


class LatencyFirstSrtf(ShortestRemainingTimeFirst):
    """The latency class first, then least remaining time; latency work preempts best effort."""

    name = "ceiling-latency-srtf"
    description = "latency class first, then SRTF; latency jobs preempt best-effort ones"

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (not _latency(j), remaining(j, snap.now), j.submitted_at, j.id))

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        if not _latency(job):
            return super().victims(job, snap)
        mine = remaining(job, snap.now)
        return victims_to_fit(
            job, snap,
            eligible=lambda r: not _latency(r) or (mine < math.inf and remaining(r, snap.now) > self.margin * mine),
            preference=lambda r: (_latency(r), -remaining(r, snap.now)),
        )


def ceiling_policy(objective: str) -> Policy:
    """The clairvoyant policy whose run on :func:`clairvoyant` traces is ``objective``'s ceiling."""
    if objective in ("slo_miss", "latency_wait_p99", "p99_latency"):
        return LatencyFirstSrtf()
    if objective in ("idle_while_waiting", "fragmentation"):
        return get_policy("srtf+fgd")
    return get_policy("srtf")


def ceiling(trace: Trace, objective: str) -> TraceRun:
    """The ceiling run for ``objective`` on ``trace`` (every objective is measured in it)."""
    return simulate(clairvoyant(trace), ceiling_policy(objective))
