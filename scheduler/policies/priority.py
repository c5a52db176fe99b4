"""Strict priority with preemption: latency-sensitive (LS) work before best-effort (BE).

The QoS model of production GPU clusters (Alibaba's trace classes LS/Guaranteed > Burstable >
BE; Kubernetes priority preemption): queue by QoS class, then priority, then arrival; an LS job
that cannot fit preempts BE jobs, the most recently started first (they lose the least work),
on the node that needs the fewest of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.jobs import Qos
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.preemption import victims_to_fit
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import JobView, Snapshot


def rank(job: JobView) -> int:
    return Qos.rank_of(job.qos)


@register
class StrictPriority(Policy):
    name = "priority"
    description = "LS before BE, then priority and arrival; LS preempts BE"
    provenance = "strict QoS priority with preemption (Kubernetes priority classes)"

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (-rank(j), -j.priority, j.submitted_at, j.id))

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        if rank(job) < Qos.LS.rank:
            return ()
        return victims_to_fit(
            job, snap,
            eligible=lambda r: rank(r) == Qos.BE.rank,
            preference=lambda r: -(r.started_at or 0.0),
        )
