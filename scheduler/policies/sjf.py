"""Shortest job first, on the user's own estimate (non-preemptive).

The classic SJF rule (minimises mean completion time when sizes are known); gpuos never knows
true durations, so it ranks by ``estimated_seconds`` as users of Slurm-style schedulers give
it. Jobs without an estimate go last, in arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import JobView, Snapshot


def estimate(job: JobView) -> float:
    return job.estimated_seconds if job.estimated_seconds > 0 else math.inf


@register
class ShortestJobFirst(Policy):
    name = "sjf"
    description = "shortest user estimate first, first fit, no preemption"
    provenance = "SJF, on users' estimates"

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (estimate(j), j.submitted_at, j.id))
