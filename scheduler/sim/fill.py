"""The FGD paper's fill-up experiment (Weng et al., USENIX ATC 2023, section 6).

Tasks drawn from a trace (a seeded shuffle, resampled once the trace runs out) arrive one by one
and never leave; each is placed by the policy if it fits anywhere and dropped otherwise. As the
arrived GPU demand grows past the cluster's capacity, a policy that fragments less leaves less
GPU capacity unallocated. Each step is one call of :func:`gpuos.scheduler.schedule` with the
task as the only pending job, so the policy runs exactly as in the daemon.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.sim.engine import Simulator, resolve_policy
from gpuos.scheduler.sim.traces import Trace
from gpuos.scheduler.snapshot import MILLI, JobView, Place, Snapshot


@dataclass(frozen=True)
class FillResult:
    policy: str
    arrived: tuple[float, ...]  # arrived GPU demand, share of capacity, after each task
    allocated: tuple[float, ...]  # allocated GPU share after each task
    fragmented: tuple[float, ...]  # FGD fragmentation share after each task
    failed: int

    def unallocated_at(self, arrived: float) -> float:
        """Unallocated GPU share once the arrived demand first reaches ``arrived``."""
        for a, alloc in zip(self.arrived, self.allocated, strict=True):
            if a >= arrived:
                return 1.0 - alloc
        return 1.0 - self.allocated[-1]


def fill_cluster(trace: Trace, policy: Policy, seed: int = 0, until: float = 1.3) -> FillResult:
    """Feed ``trace``'s tasks until the arrived GPU demand is ``until`` x capacity."""
    policy = resolve_policy(policy, trace)
    sim = Simulator(trace, policy, seed=seed)  # for its node state and accounting
    rng = random.Random(f"fill/{seed}")
    order = list(trace.jobs)
    rng.shuffle(order)
    capacity = sim.capacity * MILLI
    arrived_milli = 0
    arrived: list[float] = []
    allocated: list[float] = []
    fragmented: list[float] = []
    failed = 0
    step = 0
    while arrived_milli < until * capacity:
        if step and step % len(order) == 0:
            rng.shuffle(order)
        job = order[step % len(order)]
        step += 1
        arrived_milli += job.request.compute_milli if (job.request.gpus or job.request.gpu_milli) else 0
        view = JobView(
            id=f"{job.id}#{step}",
            request=job.request,
            tenant=job.tenant,
            qos=job.qos,
            priority=job.priority,
            submitted_at=float(step),
            cpu_milli=job.cpu_milli,
            host_memory=job.host_memory,
        )
        # The model's nodes with this one task waiting; tasks placed stay for good.
        nodes = sim.state.node_tuple()
        decisions = [d for d in _schedule_one(Snapshot(float(step), nodes, (view,), (), sim.state.index), policy)]
        if decisions:
            sim.state.submit(view)
            sim.state.place(decisions[0], float(step))
        else:
            failed += 1
        arrived.append(arrived_milli / capacity)
        allocated.append(sim._alloc_total / capacity)
        fragmented.append(sim._frag_total / capacity)
    return FillResult(policy.name, tuple(arrived), tuple(allocated), tuple(fragmented), failed)


def _schedule_one(snap: Snapshot, policy: Policy) -> list[Place]:
    from gpuos.scheduler.framework import schedule

    return [d for d in schedule(snap, policy) if isinstance(d, Place)]
