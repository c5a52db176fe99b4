"""The scheduling loop: one place where a policy's answers turn into decisions.

Capacity is checked here, not in policies, so no policy (hand-written or evolved) can
over-commit a GPU's memory, compute share or MIG slices.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from gpuos.jobs import Resources
from gpuos.partitions.mig import Instance, find_slot
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.snapshot import (
    MAX_TIMESLICE_JOBS,
    MILLI,
    Decision,
    GpuView,
    JobView,
    NodeView,
    Place,
    Preempt,
    Snapshot,
)

MIG_COMPUTE_SLICES = 7
# A time-shared job that names no memory gets this share of the GPU's memory.
TIMESLICE_DEFAULT_MEMORY_SHARE = 4


def demand(request: Resources, gpu: GpuView) -> tuple[int, int]:
    """(compute milli, memory bytes) that ``request`` takes on ``gpu``."""
    if request.mig_profile:
        profile = next((p for p in gpu.mig_profiles if p.name == request.mig_profile), None)
        if profile is None:
            return MILLI + 1, gpu.memory_total + 1
        return (MILLI * profile.slices) // MIG_COMPUTE_SLICES, profile.memory_bytes
    if request.timeslice:
        # Turns share time, not space: the job's weight does not use up the GPU's compute share.
        return 0, request.memory_bytes or gpu.memory_total // TIMESLICE_DEFAULT_MEMORY_SHARE
    if request.gpu_milli:
        memory = request.memory_bytes or (gpu.memory_total * request.gpu_milli) // MILLI
        return request.gpu_milli, memory
    return MILLI, request.memory_bytes or gpu.memory_total


def sharing_of(request: Resources) -> str:
    """How a job with ``request`` shares the GPU it lands on."""
    if request.mig_profile:
        return "mig"
    if request.timeslice:
        return "timeslice"
    return "mps" if request.gpu_milli else ""


def gpu_fits(request: Resources, gpu: GpuView) -> bool:
    """Whether ``gpu``, as it stands, can take one GPU's worth of ``request``."""
    if not gpu.healthy:
        return False
    if request.gpu_types and gpu.model not in request.gpu_types:
        return False
    milli, memory = demand(request, gpu)
    if memory > gpu.memory_free:
        return False
    sharing = sharing_of(request)
    # A GPU is shared one way at a time: MIG slices, MPS clients, or time-sharers.
    if not gpu.idle and gpu.sharing != sharing:
        return False
    if sharing == "mig":
        return find_slot(gpu.mig_profiles, gpu.mig_instances, request.mig_profile) is not None
    if sharing == "timeslice":
        return len(gpu.jobs) < MAX_TIMESLICE_JOBS
    if sharing == "mps":
        return milli <= gpu.milli_free
    return gpu.idle


def options(job: JobView, node: NodeView) -> Iterator[tuple[GpuView, ...]]:
    """Every distinct way ``node`` can host ``job``: one GPU for a share, k free GPUs for k GPUs."""
    if job.cpu_milli > node.cpu_milli_free or job.host_memory > node.host_memory_free:
        return
    request = job.request
    if request.gpus == 0 and not request.gpu_milli and not request.mig_profile:
        yield ()
        return
    fitting = [g for g in node.gpus if gpu_fits(request, g)]
    if request.gpu_milli or request.mig_profile or request.timeslice:
        # GPUs that differ only in index are interchangeable: offer the lowest-indexed one.
        seen: set[tuple[object, ...]] = set()
        for gpu in fitting:
            state = (gpu.model, gpu.memory_total, gpu.memory_free, gpu.milli_free, gpu.sharing,
                     gpu.mig_profiles, gpu.mig_instances, gpu.jobs)
            if state in seen:
                continue
            seen.add(state)
            yield (gpu,)
    elif len(fitting) >= request.gpus:
        # Whole free GPUs are interchangeable for the job; offer the lowest-indexed set.
        yield tuple(fitting[: request.gpus])


def _take(job: JobView, node: NodeView, gpus: tuple[GpuView, ...]) -> tuple[NodeView, Place]:
    """The node after ``job`` is placed on ``gpus``, and the decision that records it."""
    taken: dict[int, GpuView] = {}
    milli = memory = 0
    slot = -1
    request = job.request
    sharing = sharing_of(request)
    for gpu in gpus:
        milli, memory = demand(request, gpu)
        profile_slices = 0
        instances = gpu.mig_instances
        if request.mig_profile:
            profile_slices = next(p.slices for p in gpu.mig_profiles if p.name == request.mig_profile)
            found = find_slot(gpu.mig_profiles, instances, request.mig_profile)
            assert found is not None, "options() offered a GPU without room for the slice"
            slot = found
            instances = (*instances, Instance(request.mig_profile, slot))
        taken[gpu.index] = replace(
            gpu,
            milli_free=gpu.milli_free - milli,
            memory_free=gpu.memory_free - memory,
            mig_slices_used=gpu.mig_slices_used + profile_slices,
            jobs=gpu.jobs + (job.id,),
            sharing=sharing,
            mig_instances=instances,
        )
    new_node = replace(
        node,
        gpus=tuple(taken.get(g.index, g) for g in node.gpus),
        cpu_milli_free=node.cpu_milli_free - job.cpu_milli,
        host_memory_free=node.host_memory_free - job.host_memory,
    )
    if request.timeslice:
        milli = request.gpu_milli or MILLI  # the job's weight in turns
    place = Place(job.id, node.name, tuple(g.index for g in gpus), milli, memory, request.mig_profile, slot, sharing)
    return new_node, place


def schedule(snap: Snapshot, policy: Policy) -> list[Decision]:
    """One scheduling round: place what fits in the policy's order, preempt where it asks."""
    decisions: list[Decision] = []
    nodes = list(snap.nodes)
    preempted: set[str] = set()
    running = {j.id: j for j in snap.running}
    # Nodes whose capacity a preempting job is freeing this round: later jobs in the order must
    # not take it, or the preemptor finds it gone next round and preempts again (thrashing).
    reserved: set[str] = set()
    # The index (when it describes these nodes) only skips nodes that cannot fit; a round only
    # takes capacity, so bounds from the snapshot stay upper bounds for the whole round.
    index = snap.index if snap.index is not None and snap.index.nodes is snap.nodes else None
    # (node, request shape) pairs with no way to place: a round only takes capacity, so a shape
    # that found no room on a node finds none later in the round either. A queue of many alike
    # jobs (a flood of submits, a trace's repeated shapes) then costs a lookup per job, not a
    # fit test per GPU.
    no_room: set[tuple[int, Resources, int, int]] = set()
    for job in policy.order(snap.pending, snap):
        shape = (job.request, job.cpu_milli, job.host_memory)
        best: tuple[float, int, tuple[GpuView, ...]] | None = None
        for i in index.candidates(job) if index is not None else range(len(nodes)):
            node = nodes[i]
            if node.name in reserved or (i, *shape) in no_room:
                continue
            offered = False
            for gpus in options(job, node):
                offered = True
                if not policy.fits(job, node, gpus, snap):
                    continue
                if policy.first_fit:
                    best = (0.0, i, gpus)
                    break
                value = policy.score(job, node, gpus, snap)
                if best is None or value > best[0]:
                    best = (value, i, gpus)
            if not offered:
                no_room.add((i, *shape))
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
                reserved.add(running[victim].node)
                decisions.append(Preempt(victim))
        if policy.strict_order:
            break
    return decisions


def replay_decisions(snapshots: Iterable[Snapshot], policy: Policy) -> list[list[Decision]]:
    """The decisions ``policy`` makes for each of ``snapshots`` (recorded by the daemon or the
    simulator), for checking that both sides decide alike."""
    return [schedule(snap, policy) for snap in snapshots]
