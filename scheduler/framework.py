"""The scheduling loop: one place where a policy's answers turn into decisions.

Capacity is checked here, not in policies, so no policy (hand-written or evolved) can
over-commit a GPU's memory, compute share or MIG slices.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from gpuos.jobs import Resources
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.snapshot import MILLI, Decision, GpuView, JobView, NodeView, Place, Preempt, Snapshot

MIG_COMPUTE_SLICES = 7


def demand(request: Resources, gpu: GpuView) -> tuple[int, int]:
    """(compute milli, memory bytes) that ``request`` takes on ``gpu``."""
    if request.mig_profile:
        profile = next((p for p in gpu.mig_profiles if p.name == request.mig_profile), None)
        if profile is None:
            return MILLI + 1, gpu.memory_total + 1
        return (MILLI * profile.slices) // MIG_COMPUTE_SLICES, profile.memory_bytes
    if request.gpu_milli:
        memory = request.memory_bytes or (gpu.memory_total * request.gpu_milli) // MILLI
        return request.gpu_milli, memory
    return MILLI, request.memory_bytes or gpu.memory_total


def gpu_fits(request: Resources, gpu: GpuView) -> bool:
    """Whether ``gpu``, as it stands, can take one GPU's worth of ``request``."""
    if not gpu.healthy:
        return False
    if request.gpu_types and gpu.model not in request.gpu_types:
        return False
    milli, memory = demand(request, gpu)
    if request.mig_profile:
        profile = next((p for p in gpu.mig_profiles if p.name == request.mig_profile), None)
        if profile is None:
            return False
        # A GPU in MIG mode hosts only MIG instances, and MIG needs the GPU free of other work.
        if gpu.mig_slices_used == 0 and not gpu.idle:
            return False
        return gpu.mig_slices_used + profile.slices <= MIG_COMPUTE_SLICES and memory <= gpu.memory_free
    if gpu.mig_slices_used:
        return False
    if not request.gpu_milli:
        return gpu.idle and memory <= gpu.memory_free
    return milli <= gpu.milli_free and memory <= gpu.memory_free


def options(job: JobView, node: NodeView) -> Iterator[tuple[GpuView, ...]]:
    """Every distinct way ``node`` can host ``job``: one GPU for a share, k free GPUs for k GPUs."""
    if job.cpu_milli > node.cpu_milli_free or job.host_memory > node.host_memory_free:
        return
    request = job.request
    if request.gpus == 0 and not request.gpu_milli and not request.mig_profile:
        yield ()
        return
    fitting = [g for g in node.gpus if gpu_fits(request, g)]
    if request.gpu_milli or request.mig_profile:
        for gpu in fitting:
            yield (gpu,)
    elif len(fitting) >= request.gpus:
        # Whole free GPUs are interchangeable for the job; offer the lowest-indexed set.
        yield tuple(fitting[: request.gpus])


def _take(job: JobView, node: NodeView, gpus: tuple[GpuView, ...]) -> tuple[NodeView, Place]:
    """The node after ``job`` is placed on ``gpus``, and the decision that records it."""
    taken: dict[int, GpuView] = {}
    milli = memory = 0
    for gpu in gpus:
        milli, memory = demand(job.request, gpu)
        profile_slices = 0
        if job.request.mig_profile:
            profile_slices = next(p.slices for p in gpu.mig_profiles if p.name == job.request.mig_profile)
        taken[gpu.index] = replace(
            gpu,
            milli_free=gpu.milli_free - milli,
            memory_free=gpu.memory_free - memory,
            mig_slices_used=gpu.mig_slices_used + profile_slices,
            jobs=gpu.jobs + (job.id,),
        )
    new_node = replace(
        node,
        gpus=tuple(taken.get(g.index, g) for g in node.gpus),
        cpu_milli_free=node.cpu_milli_free - job.cpu_milli,
        host_memory_free=node.host_memory_free - job.host_memory,
    )
    place = Place(job.id, node.name, tuple(g.index for g in gpus), milli, memory, job.request.mig_profile)
    return new_node, place


def schedule(snap: Snapshot, policy: Policy) -> list[Decision]:
    """One scheduling round: place what fits in the policy's order, preempt where it asks."""
    decisions: list[Decision] = []
    nodes = list(snap.nodes)
    preempted: set[str] = set()
    running = {j.id for j in snap.running}
    for job in policy.order(snap.pending, snap):
        best: tuple[float, int, tuple[GpuView, ...]] | None = None
        for i, node in enumerate(nodes):
            for gpus in options(job, node):
                if not policy.fits(job, node, gpus, snap):
                    continue
                if policy.first_fit:
                    best = (0.0, i, gpus)
                    break
                value = policy.score(job, node, gpus, snap)
                if best is None or value > best[0]:
                    best = (value, i, gpus)
            if best is not None and policy.first_fit:
                break
        if best is not None:
            _, i, gpus = best
            nodes[i], place = _take(job, nodes[i], gpus)
            decisions.append(place)
            continue
        for victim in policy.victims(job, snap):
            # Only running jobs can be preempted, and each only once per round.
            if victim in running and victim not in preempted:
                preempted.add(victim)
                decisions.append(Preempt(victim))
        if policy.strict_order:
            break
    return decisions
