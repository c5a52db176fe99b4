"""Spread placement: put each job where the least is already running.

The opposite of bin-packing (Kubernetes' least-allocated scoring, and load balancing in general):
choose the node with the most free GPU capacity, and on it the least used GPU, which keeps
interference between colocated jobs low at the cost of fragmenting the cluster. Arrival order.
"""

from __future__ import annotations

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import MILLI, GpuView, JobView, NodeView, Snapshot


@register
class Spread(Policy):
    name = "spread"
    description = "node with the most free GPU capacity, then its least used GPU"
    first_fit = False
    scores_node_state_only = True

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        node_free = sum(g.milli_free for g in node.gpus if g.healthy and not g.jobs) + sum(
            g.milli_free for g in node.gpus if g.healthy and g.jobs and g.sharing == "mps"
        )
        gpu_free = min((g.milli_free for g in gpus), default=MILLI)
        return node_free * 2 * MILLI + gpu_free
