"""Tiresias discretised two-dimensional LAS (Gu et al., "Tiresias: A GPU Cluster Manager for
Distributed Deep Learning", NSDI 2019).

2D-LAS ranks jobs by attained service in GPU-seconds (GPUs x time run). Discretised: jobs sit in
K queues split at ``thresholds``; a job moves down a queue once its service passes the next
threshold; queues are served in order, FIFO (by arrival) within a queue, and a waiting job of a
higher queue preempts running jobs of lower queues. Starvation avoidance (the paper's
promotion rule): a job that has waited longer than ``promote_knob`` x the time it has run goes
back to the highest queue.

A running job is preempted only after it has held its GPUs for ``min_lease`` seconds since it
last started. Without it, an overloaded cluster thrashes: every waiting job passes the promotion
test, each promoted job preempts a demoted one a round later, and jobs spend their turns paying
restart costs (the paper's testbed restarts from checkpoints too, and leases GPUs per job).
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.preemption import victims_to_fit
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import JobView, Snapshot


@register
class Tiresias(Policy):
    name = "tiresias"
    description = "discretised 2D-LAS on attained GPU-seconds, with promotion against starvation"
    # Queue boundaries in GPU-seconds: Q0 below one GPU-hour, Q1 below ten, Q2 beyond.
    thresholds: tuple[float, ...] = (3600.0, 36000.0)
    promote_knob = 8.0
    min_lease = 600.0
    # Demotions happen as time passes, so rounds must too.
    period = 60.0

    def queue(self, job: JobView, now: float, waiting: bool = False) -> int:
        """The job's queue (0 is served first); a ``waiting`` job may be promoted to 0."""
        service = job.attained(now)
        if waiting and service > 0:
            gpus = job.request.compute_milli / 1000 or 1.0
            ran = service / gpus
            waited = now - job.submitted_at - ran
            if waited >= self.promote_knob * ran:
                return 0
        return sum(1 for t in self.thresholds if service >= t)

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (self.queue(j, snap.now, waiting=True), j.submitted_at, j.id))

    def leased(self, job: JobView, now: float) -> bool:
        """Whether ``job`` has run long enough since it last started to be preempted."""
        return job.started_at is None or now - job.started_at >= self.min_lease

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        mine = self.queue(job, snap.now, waiting=True)
        return victims_to_fit(
            job, snap,
            eligible=lambda r: self.queue(r, snap.now) > mine and self.leased(r, snap.now),
            # Lowest queue first; within it the most recent arrival loses least.
            preference=lambda r: (-self.queue(r, snap.now), -r.submitted_at),
        )
