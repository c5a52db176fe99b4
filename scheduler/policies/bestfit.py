"""Best-fit placement: the option that leaves the least free GPU capacity behind.

The "Best-fit" baseline of the FGD paper (Weng et al., USENIX ATC 2023), after Kubernetes'
most-allocated scoring: among nodes that fit, choose the one with the least remaining GPU
capacity after placement, and on it the GPU with the least remaining share. Arrival order.
"""

from __future__ import annotations

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import MILLI, GpuView, JobView, NodeView, Snapshot


@register
class BestFit(Policy):
    name = "best-fit"
    description = "least free GPU capacity left on the node (then on the GPU)"
    provenance = "Best-fit, the baseline of FGD (USENIX ATC'23), after Kubernetes' MostAllocated"
    first_fit = False
    scores_node_state_only = True

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        take = job.request.gpu_milli or MILLI
        node_left = sum(g.milli_free for g in node.gpus if g.healthy) - take * len(gpus)
        gpu_left = min((g.milli_free - take for g in gpus), default=0)
        # Node leftover dominates; the GPU leftover breaks ties between GPUs of one node.
        return -(node_left * 2 * MILLI + gpu_left)
