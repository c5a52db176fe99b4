"""Gandiva-style time-sharing with packing (Xiao et al., "Gandiva: Introspective Cluster
Scheduling for Deep Learning", OSDI 2018).

Gandiva over-subscribes GPUs by suspending and resuming jobs at iteration boundaries: when jobs
wait, running jobs that have had their time slice are suspended so the waiting ones get a turn
(round-robin), and it packs jobs that fit together onto the same GPUs. Here: queue in arrival
order; place shares onto the GPU they fill best and whole-GPU jobs onto the nodes already most
used (packing, which also keeps whole nodes free for large jobs); a waiting job suspends jobs
that have run at least one quantum, longest-running first. Gandiva's migration and
introspective profiling are left out (the snapshot has no utilisation feedback).
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.preemption import victims_to_fit
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import MILLI, GpuView, JobView, NodeView, Snapshot


@register
class Gandiva(Policy):
    name = "gandiva"
    description = "time-slicing by suspend/resume in quanta, packing shares onto used GPUs"
    provenance = "Gandiva, OSDI'18 (Xiao et al.), time-slicing and packing"
    first_fit = False
    scores_node_state_only = True
    # A time slice of one minute: long against suspend/resume cost, short against job lengths.
    slice_seconds = 60.0
    period = 60.0

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        busy = sum(1 for g in node.gpus if g.jobs)
        if job.request.gpu_milli and gpus:
            # Best fit on the GPU: the least share left over after this job.
            return 10 * MILLI - (gpus[0].milli_free - job.request.gpu_milli) + busy
        return float(busy)

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        now = snap.now
        return victims_to_fit(
            job, snap,
            eligible=lambda r: r.started_at is not None and now - r.started_at >= self.slice_seconds,
            preference=lambda r: r.started_at or 0.0,
        )

    def quantum(self, job: JobView, snap: Snapshot) -> float:
        return self.slice_seconds
