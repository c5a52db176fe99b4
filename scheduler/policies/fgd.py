"""Fragmentation gradient descent (Weng et al., "Beware of Fragmentation: Scheduling
GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC 2023).

FGD places each task on the node and GPU where the expected fragmentation of the node grows
least: F_n(M) is the GPU capacity of node n that a task drawn from the target workload M could
not use (see :mod:`gpuos.scheduler.fragmentation`), and the score of an option is
-(F_n(M) after - F_n(M) before). The target workload is the distribution of task GPU requests;
the paper takes it from history. Given none, it is estimated from the jobs in the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler.fragmentation import Fragmentation, TaskClass, usable_free, workload
from gpuos.scheduler.framework import demand
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import GpuView, JobView, NodeView, Snapshot


@register
class Fgd(Policy):
    name = "fgd"
    description = "least growth of expected GPU fragmentation (FGD, ATC'23)"
    provenance = "FGD, USENIX ATC'23 (Weng et al.)"
    first_fit = False
    scores_node_state_only = True

    def __init__(self, workload: Sequence[TaskClass] | None = None) -> None:
        self.workload = tuple(workload) if workload is not None else None
        self._fixed = Fragmentation(self.workload) if self.workload is not None else None
        # One estimate per snapshot when the workload is not given.
        self._estimated: tuple[Snapshot | None, Fragmentation | None] = (None, None)

    def _measure(self, snap: Snapshot) -> Fragmentation:
        if self._fixed is not None:
            return self._fixed
        cached_snap, cached = self._estimated
        if cached_snap is snap and cached is not None:
            return cached
        jobs = (*snap.pending, *snap.running)
        measure = Fragmentation(workload((j.request, j.cpu_milli) for j in jobs))
        self._estimated = (snap, measure)
        return measure

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        frag = self._measure(snap)
        model = node.gpus[0].model if node.gpus else ""
        before = frag.of(model, usable_free(node), node.cpu_milli_free)
        taken = {g.index: demand(job.request, g)[0] for g in gpus}
        left = (g.milli_free - taken.get(g.index, 0) for g in node.gpus if g.healthy and g.sharing in ("", "mps"))
        frees = tuple(sorted(f for f in left if f > 0))
        after = frag.of(model, frees, node.cpu_milli_free - job.cpu_milli)
        return before - after


def given_workload(policy: Policy, classes: Sequence[TaskClass]) -> Policy:
    """``policy``, or, where it is an FGD given no target workload, the FGD that targets ``classes``
    (the simulator gives it the trace's request mix; a candidate's own process, which never holds
    the trace, is sent the mix)."""
    if isinstance(policy, Fgd) and policy.workload is None:
        # Its own class: a policy combining FGD placement with another order stays that policy.
        return type(policy)(workload=classes)
    return policy
