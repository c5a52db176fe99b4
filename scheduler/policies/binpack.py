"""Bin-packing placement: consolidate onto the nodes and GPUs already in use.

GPU packing as in the FGD paper's baselines and Kubernetes' bin-packing scoring: prefer the node
with the most GPUs already busy, and on it a GPU already shared, so that idle nodes stay whole
for large jobs (and could be powered down). Arrival order.
"""

from __future__ import annotations

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import MILLI, GpuView, JobView, NodeView, Snapshot


@register
class BinPacking(Policy):
    name = "binpack"
    description = "most-used node first, then an already shared GPU"
    first_fit = False
    scores_node_state_only = True

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        used_gpus = sum(1 for g in node.gpus if g.jobs)
        used_here = sum(MILLI - g.milli_free for g in gpus)
        return used_gpus * 10 * MILLI + used_here
