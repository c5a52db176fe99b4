"""Dominant resource fairness across tenants (Ghodsi et al., "Dominant Resource Fairness: Fair
Allocation of Multiple Resource Types", NSDI 2011).

A tenant's dominant share is its largest share of any one resource (GPU, CPU, host memory) of
the cluster. DRF serves the tenant with the least dominant share next (progressive filling), so
dominant shares equalise; with GPUs as the only resource it is max-min fairness. The queue
order replays progressive filling: take the next job of the tenant with the least dominant
share, count that job as granted, repeat. Within a tenant jobs go in arrival order.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import JobView, Snapshot


def usage(job: JobView) -> tuple[float, float, float]:
    """(GPUs, CPU milli, host memory) a job holds or asks for."""
    return job.request.compute_milli / 1000 if (job.request.gpus or job.request.gpu_milli) else 0.0, \
        float(job.cpu_milli), float(job.host_memory)


def capacity(snap: Snapshot) -> tuple[float, float, float]:
    """Cluster totals: healthy GPUs, and CPU and host memory (free plus held by running jobs)."""
    gpus = float(sum(1 for n in snap.nodes for g in n.gpus if g.healthy))
    cpu = float(sum(n.cpu_milli_free for n in snap.nodes))
    memory = float(sum(n.host_memory_free for n in snap.nodes))
    for job in snap.running:
        _, c, m = usage(job)
        cpu += c
        memory += m
    return gpus, cpu, memory


def dominant(held: tuple[float, float, float], total: tuple[float, float, float]) -> float:
    return max((h / t if t > 0 else 0.0) for h, t in zip(held, total, strict=True))


@register
class DominantResourceFairness(Policy):
    name = "drf"
    description = "tenant with the least dominant share first (DRF; max-min on GPUs alone)"
    provenance = "DRF, NSDI'11 (Ghodsi et al.)"

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        total = capacity(snap)
        held: dict[str, list[float]] = {}
        for job in snap.running:
            h = held.setdefault(job.tenant, [0.0, 0.0, 0.0])
            for k, value in enumerate(usage(job)):
                h[k] += value
        queues: dict[str, list[JobView]] = {}
        for job in sorted(pending, key=lambda j: (j.submitted_at, j.id), reverse=True):
            queues.setdefault(job.tenant, []).append(job)  # reversed, so pop() gives the oldest
        heap = []
        for tenant in queues:
            h = held.setdefault(tenant, [0.0, 0.0, 0.0])
            heap.append((dominant((h[0], h[1], h[2]), total), tenant))
        heapq.heapify(heap)
        ordered: list[JobView] = []
        while heap:
            _, tenant = heapq.heappop(heap)
            job = queues[tenant].pop()
            ordered.append(job)
            h = held[tenant]
            for k, value in enumerate(usage(job)):
                h[k] += value
            if queues[tenant]:
                heapq.heappush(heap, (dominant((h[0], h[1], h[2]), total), tenant))
        return ordered
