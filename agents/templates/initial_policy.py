"""The program OpenEvolve starts from: a gpuos scheduling policy whose decisions it may rewrite.

Only the code between the EVOLVE-BLOCK markers changes during a search (the run enforces it):
the queue order (which pending job to try first) and the placement score (which feasible
node and GPUs to take). The rest of the framework (capacity checks, preemption mechanics, the
simulator) is fixed, so every candidate is judged by the same rules.

A candidate sees only what the daemon knows when it decides: each job's request, QoS class,
priority, tenant, arrival time, attained service and the user's own runtime estimate
(``estimated_seconds``, 0 when none was given). It never sees a job's true duration.

Start: shortest estimate first with aging, best-fit placement.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler import GpuView, JobView, NodeView, Policy, Snapshot
from gpuos.scheduler.snapshot import MILLI


class CandidatePolicy(Policy):
    name = "openevolve-candidate"
    description = "policy under search by OpenEvolve"
    first_fit = False

    # EVOLVE-BLOCK-START
    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        """Try the job with the smallest key first."""
        return sorted(pending, key=lambda job: (self.urgency(job, snap), job.submitted_at, job.id))

    def urgency(self, job: JobView, snap: Snapshot) -> float:
        """Lower runs sooner: the estimated GPU-seconds still to serve, discounted by waiting."""
        estimate = job.estimated_seconds if job.estimated_seconds > 0 else 3600.0
        gpus = job.request.compute_milli / MILLI
        remaining = max(estimate * gpus - job.attained(snap.now), 0.0)
        waited = snap.now - job.submitted_at
        return remaining / (1.0 + waited / 600.0)

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        """Higher is better: leave the least free compute behind on the node, then on the GPU."""
        take = job.request.gpu_milli or MILLI
        node_left = sum(g.milli_free for g in node.gpus if g.healthy) - take * len(gpus)
        gpu_left = min((g.milli_free - take for g in gpus), default=0)
        return -(node_left * 2.0 * MILLI + gpu_left)

    # EVOLVE-BLOCK-END


POLICY = CandidatePolicy()
