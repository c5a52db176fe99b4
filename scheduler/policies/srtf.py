"""Shortest remaining time first, on the user's estimate, with preemption.

SRTF (Schrage, 1968) runs the job with the least remaining work and preempts a running job
whose remaining work is larger. Remaining = estimate - time already run (attained GPU-seconds
over GPUs held); the true remaining time is never known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.preemption import victims_to_fit
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import JobView, Snapshot


def remaining(job: JobView, now: float) -> float:
    if job.estimated_seconds <= 0:
        return math.inf
    gpus = job.request.compute_milli / 1000 or 1.0
    return max(0.0, job.estimated_seconds - job.attained(now) / gpus)


@register
class ShortestRemainingTimeFirst(Policy):
    name = "srtf"
    description = "least estimated remaining time first; preempts jobs with more left"
    provenance = "SRTF (Schrage, 1968), on users' estimates"
    # A running job is preempted only if it has this many times the waiting job's work left:
    # only jobs with clearly more left are worth a checkpoint-restore.
    margin = 2.0

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (remaining(j, snap.now), j.submitted_at, j.id))

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        mine = remaining(job, snap.now)
        if mine == math.inf:
            return ()
        return victims_to_fit(
            job, snap,
            eligible=lambda r: remaining(r, snap.now) > self.margin * mine,
            preference=lambda r: -remaining(r, snap.now),
        )
