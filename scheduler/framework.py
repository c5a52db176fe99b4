"""The scheduling loop: one place where a policy's answers turn into decisions.

Capacity is checked here, not in policies, so no policy (hand-written or evolved) can
over-commit a GPU's memory, compute share or MIG slices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields, replace

from gpuos.jobs import EXECUTOR, TIMESLICE, Resources
from gpuos.mig import Instance, MigProfile, find_slot
from gpuos.scheduler.index import group_states, need
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.snapshot import (
    MAX_EXECUTOR_JOBS,
    MAX_TIMESLICE_JOBS,
    MILLI,
    CapacityIndex,
    Decision,
    GpuView,
    JobView,
    NodeView,
    Place,
    Preempt,
    Shape,
    Share,
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
    if request.timeslice or request.executor:
        # Turns (and an executor's atoms) share time, not space: the job's weight does not use up
        # the GPU's compute share.
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
    if request.executor:
        return EXECUTOR
    return "mps" if request.gpu_milli else ""


def flexible(request: Resources) -> bool:
    """Whether the policy chooses how a job with ``request`` shares its GPU (``Policy.share``): a
    fraction whose user pinned no mode (no MIG profile, no time-slicing, no explicit MPS)."""
    return bool(request.gpu_milli) and not request.sharing and not request.mig_profile


def covering_profile(request: Resources, gpu: GpuView) -> MigProfile | None:
    """The smallest MIG profile of ``gpu`` with at least fraction ``request``'s compute and memory."""
    milli, memory = demand(request, gpu)
    covering = [p for p in gpu.mig_profiles
                if p.slices * MILLI >= milli * MIG_COMPUTE_SLICES and p.memory_bytes >= memory]
    return min(covering, key=lambda p: (p.slices, p.memory_bytes), default=None)


def shared_as(request: Resources, gpu: GpuView, share: Share) -> Resources:
    """What flexible ``request`` takes of ``gpu`` when it shares it as ``share``: the one place a
    policy's choice becomes a request, which the framework checks capacity against and the model
    checks the placement by. A turn holds the memory the MPS share would; a GPU with no covering
    MIG profile takes the job as an MPS client."""
    if share is Share.TIMESLICE:
        return replace(request, memory_bytes=demand(request, gpu)[1], sharing=TIMESLICE)
    if share is Share.MIG:
        profile = covering_profile(request, gpu)
        if profile is not None:
            return replace(request, memory_bytes=0, mig_profile=profile.name)
    return request


def placed_request(request: Resources, place: Place, gpu: GpuView) -> Resources:
    """The request ``place`` holds its job by on ``gpu``: the job's own, or, for a flexible job
    its policy placed by turns or a MIG slice, that choice (:func:`shared_as`)."""
    if flexible(request) and place.sharing in (Share.TIMESLICE.value, Share.MIG.value):
        return shared_as(request, gpu, Share(place.sharing))
    return request


def gpu_fits(request: Resources, gpu: GpuView) -> bool:
    """Whether ``gpu``, as it stands, can take one GPU's worth of ``request``."""
    if not gpu.healthy:
        return False
    if request.gpu_types and gpu.model not in request.gpu_types:
        return False
    milli, memory = demand(request, gpu)
    if memory > gpu.memory_free and not _oversubscribes(request, memory, gpu):
        return False
    sharing = sharing_of(request)
    # A GPU is shared one way at a time: MIG slices, MPS clients, or time-sharers.
    if not gpu.idle and gpu.sharing != sharing:
        return False
    if sharing == "mig":
        return find_slot(gpu.mig_profiles, gpu.mig_instances, request.mig_profile) is not None
    if sharing == "timeslice":
        return len(gpu.jobs) < MAX_TIMESLICE_JOBS
    if sharing == EXECUTOR:
        return len(gpu.jobs) < MAX_EXECUTOR_JOBS
    if sharing == "mps":
        return milli <= gpu.milli_free
    return gpu.idle


def _oversubscribes(request: Resources, memory: int, gpu: GpuView) -> bool:
    """Whether a time-sharer's ``memory`` limit, more than ``gpu`` has free, still fits by the
    GPU's oversubscription: at most the whole GPU itself, and the sharers' limits together at most
    ``oversubscription`` x its memory (what must fit at once is only the resident set)."""
    if gpu.oversubscription <= 1 or not request.timeslice or memory > gpu.memory_total:
        return False
    return memory <= gpu.memory_free + int((gpu.oversubscription - 1) * gpu.memory_total)


def resumes_on(job: JobView, node: NodeView, gpu: GpuView) -> bool:
    """Whether ``job`` may run on ``gpu`` of ``node`` as far as suspension goes: a job that is not
    suspended, anywhere; a waiting suspended one (its memory on its node's host), only on a GPU of
    its ``suspended_model`` on its node, and only its own GPU unless the node restores across GPUs
    (and that GPU can suspend and restore)."""
    if not job.suspended:
        return True
    if job.suspended_model and gpu.model != job.suspended_model:
        return False
    where = job.suspended_gpu
    if where is None:
        return True
    return node.name == where[0] and (gpu.index == where[1] or (node.cross_gpu_restore and gpu.suspend))


def options(job: JobView, node: NodeView,
            choose: Callable[[GpuView], Resources] | None = None) -> Iterator[tuple[GpuView, ...]]:
    """Every distinct way ``node`` can host ``job``: one GPU for a share, k free GPUs for k GPUs.
    ``choose``, for a flexible job, gives what it would take of each GPU (its policy's choice)."""
    if job.cpu_milli > node.cpu_milli_free or job.host_memory > node.host_memory_free:
        return
    request = job.request
    if request.gpus == 0 and not request.gpu_milli and not request.mig_profile:
        yield ()
        return
    if job.suspended_gpu is not None and job.suspended and node.name != job.suspended_gpu[0]:
        return
    if choose is not None:
        fitting = [g for g in node.gpus if gpu_fits(choose(g), g)]
    else:
        fitting = [g for g in node.gpus if gpu_fits(request, g)]
    if job.suspended:
        fitting = [g for g in fitting if resumes_on(job, node, g)]
    if request.timeslice and any(g.oversubscription > 1 for g in fitting):
        # Oversubscription is the fallback: GPUs where the time-sharer's memory fits beside the
        # others' come first, so a first-fit policy stacks sharers beyond a GPU's memory (and pays
        # for moving memory at every turn) only when no GPU has the room.
        fitting.sort(key=lambda g: demand(choose(g) if choose is not None else request, g)[1] > g.memory_free)
    if request.gpu_milli or request.mig_profile or request.timeslice or request.executor:
        # GPUs that differ only in index are interchangeable: offer the lowest-indexed one.
        seen: set[tuple[object, ...]] = set()
        for gpu in fitting:
            state = (gpu.model, gpu.memory_total, gpu.memory_free, gpu.milli_free, gpu.sharing,
                     gpu.mig_profiles, gpu.mig_instances, gpu.jobs, gpu.oversubscription)
            if state in seen:
                continue
            seen.add(state)
            yield (gpu,)
    elif len(fitting) >= request.gpus:
        # Whole free GPUs are interchangeable for the job; offer the lowest-indexed set.
        yield tuple(fitting[: request.gpus])


# take copies views field by field; a field added to GpuView or NodeView must be copied there.
_VIEW_FIELDS = (
    ("index", "model", "memory_total", "memory_free", "milli_free", "healthy", "uuid", "mig_profiles",
     "mig_slices_used", "jobs", "sharing", "mig_instances", "suspend", "oversubscription", "memory_suspended"),
    ("name", "gpus", "cpu_milli_free", "host_memory_free", "cross_gpu_restore"),
)
assert tuple(tuple(f.name for f in fields(view)) for view in (GpuView, NodeView)) == _VIEW_FIELDS, (
    "GpuView or NodeView gained a field: copy it in take"
)


def take(job: JobView, node: NodeView, gpus: tuple[GpuView, ...],
          request: Resources | None = None) -> tuple[NodeView, Place]:
    """The node after ``job`` is placed on ``gpus`` holding ``request`` (default: its own), and the
    decision that records it."""
    taken: dict[int, GpuView] = {}
    milli = memory = 0
    slot = -1
    request = job.request if request is None else request
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
        # Built field by field, not with dataclasses.replace: this runs for every placement
        # and replace() costs twice as much (see _VIEW_FIELDS).
        taken[gpu.index] = GpuView(
            index=gpu.index,
            model=gpu.model,
            memory_total=gpu.memory_total,
            memory_free=gpu.memory_free - memory,
            milli_free=gpu.milli_free - milli,
            healthy=gpu.healthy,
            uuid=gpu.uuid,
            mig_profiles=gpu.mig_profiles,
            mig_slices_used=gpu.mig_slices_used + profile_slices,
            jobs=gpu.jobs + (job.id,),
            sharing=sharing,
            mig_instances=instances,
            suspend=gpu.suspend,
            oversubscription=gpu.oversubscription,
            memory_suspended=gpu.memory_suspended,
        )
    new_node = NodeView(
        name=node.name,
        gpus=tuple([taken.get(g.index, g) for g in node.gpus]),
        cpu_milli_free=node.cpu_milli_free - job.cpu_milli,
        # A suspended job's memory leaves the host as it is restored (the model charges it there).
        host_memory_free=node.host_memory_free - job.host_memory
        + (job.suspended_bytes if job.suspended and job.suspended_gpu is not None else 0),
        cross_gpu_restore=node.cross_gpu_restore,
    )
    if request.timeslice or request.executor:
        milli = request.gpu_milli or MILLI  # the job's weight in turns (or among the executor's equals)
    place = Place(job.id, node.name, tuple(g.index for g in gpus), milli, memory, request.mig_profile, slot, sharing)
    return new_node, place


class _Choices:
    """``Policy.share`` for one job, asked once per GPU and kept: the GPU the framework offers and
    the one it takes are held alike even by a policy that would not answer alike twice."""

    __slots__ = ("policy", "snap", "job", "asked")

    def __init__(self, policy: Policy, snap: Snapshot, job: JobView) -> None:
        self.policy, self.snap, self.job = policy, snap, job
        self.asked: dict[tuple[str, int], Resources] = {}

    def on(self, node: NodeView) -> Callable[[GpuView], Resources]:
        def choose(gpu: GpuView) -> Resources:
            key = (node.name, gpu.index)
            found = self.asked.get(key)
            if found is None:
                share = self.policy.share(self.job, gpu, self.snap)
                if not isinstance(share, Share):
                    raise ValueError(f"policy {self.policy.name}: share() answered {share!r}, not a Share")
                found = self.asked[key] = shared_as(self.job.request, gpu, share)
            return found

        return choose


class _Round:
    """The nodes of one round grouped by state, for policies that score state alone.

    Groups come from the snapshot (the index keeps them as nodes change; without it they are
    built here); nodes that this round changes or reserves leave their group, and a changed one
    stands alone. The lowest-positioned node of a group stands for it: scores are equal within
    a group and the framework keeps the first best in node order, so the group's other nodes
    could never win.
    """

    def __init__(self, snap: Snapshot, index: CapacityIndex | None) -> None:
        self.index = index
        if index is not None:
            self.members, self.states = index.groups()
        else:
            self.members, self.states = group_states(snap.nodes)
        self.left: set[int] = set()  # positions that left their group this round
        self.left_by_state: Counter[int] = Counter()
        self.changed: list[int] = []
        self.reserved: set[int] = set()
        self._position: dict[str, int] | None = None
        self._nodes = snap.nodes
        # groups() by the job's (bound, least value) until a node leaves: a long queue of alike
        # jobs on a full cluster then costs a lookup per job, not a pass over every group.
        self._found: dict[tuple[int, int], list[tuple[int, int, list[int] | None]]] = {}

    def leave(self, position: int, changed: bool) -> None:
        self._found.clear()
        if position not in self.left:
            self.left.add(position)
            self.left_by_state[self.states[position]] += 1
        if changed and position not in self.changed:
            self.changed.append(position)

    def reserve(self, name: str) -> None:
        """Node ``name`` is being freed for a preemptor: no group offers it for the rest of the round."""
        if self._position is None:
            # Built only when a round preempts: most never do.
            self._position = {n.name: i for i, n in enumerate(self._nodes)}
        at = self._position.get(name)
        if at is not None:
            self.reserved.add(at)
            self.leave(at, changed=False)

    def groups(self, job: JobView) -> list[tuple[int, int, list[int] | None]]:
        """(first position, nodes, the group's positions or None for a lone node) for every group
        that may host ``job``, in node order."""
        need_of = need(job)
        found = self._found.get(need_of)
        if found is not None:
            return found
        found = self._found[need_of] = []
        key, least = need_of
        index = self.index
        # No node of the snapshot may host the job: only nodes changed this round could.
        hopeless = index is not None and index.first(key, least, 0) >= index.n
        for state, group in () if hopeless else self.members.items():
            if index is not None and index.bound(key, group[0]) < least:
                continue
            count = len(group) - self.left_by_state.get(state, 0)
            if count <= 0:
                continue
            k = 0
            while group[k] in self.left:
                k += 1
            found.append((group[k], count, group))
        found.extend((i, 1, None) for i in self.changed if i not in self.reserved)
        found.sort(key=lambda entry: entry[0])
        return found

    def nth(self, group: list[int] | None, first: int, n: int) -> int:
        """The ``n``-th node (from 0, in node order) still in the group that starts at ``first``."""
        if group is None:
            return first
        for i in group:
            if i not in self.left:
                if n == 0:
                    return i
                n -= 1
        raise AssertionError("a group has fewer nodes than it counted")


def schedule(snap: Snapshot, policy: Policy) -> list[Decision]:
    """One scheduling round: place what fits in the policy's order, preempt where it asks."""
    decisions: list[Decision] = []
    nodes = list(snap.nodes)
    preempted: set[str] = set()
    # Built only when a policy asks to preempt: most rounds never do.
    running: dict[str, JobView] | None = None
    # Nodes whose capacity a preempting job is freeing this round: later jobs in the order must
    # not take it, or the preemptor finds it gone next round and preempts again (thrashing).
    reserved: set[str] = set()
    # The index (when it describes these nodes) only skips nodes that cannot fit; a round only
    # takes capacity, so bounds from the snapshot stay upper bounds for the whole round.
    index = snap.index if snap.index is not None and snap.index.nodes is snap.nodes else None
    if snap.index is not None:
        # The policy sees the snapshot without the index: it is the model's and mutable (even
        # its reads update it), so a policy, an evolved or hostile one too, can't corrupt it.
        snap = replace(snap, index=None)
    # Scoring every node costs a score per node per job; a policy that reads only node state
    # needs one per distinct state (on a large, mostly idle cluster: a handful, not thousands).
    by_state = _Round(snap, index) if policy.scores_node_state_only and not policy.first_fit else None
    # (node, request shape) pairs with no way to place: a round only takes capacity, so a shape
    # that found no room on a node finds none later in the round either. A queue of many alike
    # jobs (a flood of submits, a trace's repeated shapes) then costs a lookup per job, not a
    # fit test per GPU.
    no_room: set[tuple[int, Resources, int, int]] = set()
    # Asked only of a policy that overrides share(): the default keeps every fraction an MPS client.
    chooses = type(policy).share is not Policy.share
    if type(policy).order is Policy.order and snap.pending_by_age is not None:
        ordered: Sequence[JobView] = snap.pending_by_age  # what Policy.order answers, unsorted
    else:
        ordered = policy.order(snap.pending, snap)
    # Shapes no node can take for the rest of the round (every node lacked room, or the index
    # ruled it out). A job of such a shape only reaches victims(), so for a policy that never
    # preempts it can be passed over: with 10,000 alike jobs waiting on a full cluster, the
    # round visits one, not 10,000.
    dead: set[Shape] | None = set() if type(policy).victims is Policy.victims else None
    # And once every job still to come has a dead shape the round is over: counted from the
    # model's shape counts, which describe the order only when it is the queue itself.
    left = _shape_counts(snap, ordered) if dead is not None else None
    alive = len(ordered)
    # Node positions by name, built only for a suspended job, which may resume on its node alone.
    positions: dict[str, int] | None = None
    for job in ordered:
        shape = (job.request, job.cpu_milli, job.host_memory)
        if dead is not None:
            if shape in dead:  # (a strict order never gets here: it stopped at that shape's first job)
                continue
            if left is not None:
                left[shape] -= 1
                alive -= 1
        choices = _Choices(policy, snap, job) if chooses and flexible(job.request) else None
        # A suspended job resumes on its own node (options() keeps to the GPUs it may use): it
        # tries that node alone, and what it finds there says nothing of its shape elsewhere, so
        # it neither fills the no-room memo nor marks its shape dead.
        pinned = job.suspended and job.suspended_gpu is not None
        groups = by_state.groups(job) if by_state is not None and choices is None and not pinned else None
        if pinned:
            if positions is None:
                positions = {n.name: p for p, n in enumerate(nodes)}
            at = positions.get(job.suspended_gpu[0]) if job.suspended_gpu is not None else None
            candidates: Iterable[int] = () if at is None else (at,)
        elif groups is not None:
            candidates = [first for first, _, _ in groups]
        elif choices is not None:
            # The index bounds a job by its own request, and the no-room memo by its shape; a
            # chosen mode may fit where the request would not, and may differ between alike jobs.
            candidates = range(len(nodes))
        else:
            candidates = index.candidates(job) if index is not None else range(len(nodes))
        best: tuple[float, int, tuple[GpuView, ...]] | None = None
        # With policy.picks: every feasible option, as (position, options of that node or its group).
        feasible: list[tuple[int, list[tuple[GpuView, ...]]]] = []
        # No candidate offered the shape an option (a chosen sharing mode is never ruled out).
        full = choices is None and not pinned
        for i in candidates:
            node = nodes[i]
            if node.name in reserved or (choices is None and (i, *shape) in no_room):
                continue
            offered = False
            fitting: list[tuple[GpuView, ...]] = []
            for gpus in options(job, node, None if choices is None else choices.on(node)):
                offered = True
                if not policy.fits(job, node, gpus, snap):
                    continue
                if policy.first_fit:
                    best = (0.0, i, gpus)
                    break
                if policy.picks:
                    fitting.append(gpus)
                    continue
                value = policy.score(job, node, gpus, snap)
                if best is None or value > best[0]:
                    best = (value, i, gpus)
            if fitting:
                feasible.append((i, fitting))
            if not offered and choices is None and not pinned:
                no_room.add((i, *shape))
            elif offered:
                full = False
            if best is not None and policy.first_fit:
                break
        if feasible:
            best = _pick(policy, job, snap, feasible, groups, by_state)
        if best is not None:
            _, i, gpus = best
            chosen = None if choices is None else choices.on(nodes[i])(gpus[0])
            nodes[i], place = take(job, nodes[i], gpus, chosen)
            if by_state is not None:
                by_state.leave(i, changed=True)
            decisions.append(place)
            continue
        if full and dead is not None:
            dead.add(shape)
            if left is not None:
                alive -= left[shape]
                if alive <= 0:
                    break
        for victim in policy.victims(job, snap):
            if running is None:
                running = {j.id: j for j in snap.running}
            # Only running jobs can be preempted, and each only once per round.
            if victim in running and victim not in preempted:
                preempted.add(victim)
                reserved.add(running[victim].node)
                if by_state is not None:
                    by_state.reserve(running[victim].node)
                decisions.append(Preempt(victim))
        if policy.strict_order:
            break
    return decisions


def _shape_counts(snap: Snapshot, ordered: Sequence[JobView]) -> dict[Shape, int] | None:
    """How many jobs of ``ordered`` have each shape, from the model's counts (no pass over the
    queue); None unless ``ordered`` is the snapshot's queue itself, in some order the model keeps."""
    shapes = snap.pending_shapes
    if shapes is None or (ordered is not snap.pending and ordered is not snap.pending_by_age):
        return None
    if sum(shapes.values()) != len(ordered):
        return None  # not counts of this queue (a snapshot put together by hand)
    return dict(shapes)


def _pick(
    policy: Policy,
    job: JobView,
    snap: Snapshot,
    feasible: list[tuple[int, list[tuple[GpuView, ...]]]],
    groups: list[tuple[int, int, list[int] | None]] | None,
    by_state: _Round | None,
) -> tuple[float, int, tuple[GpuView, ...]]:
    """The option ``policy.pick`` names, counting each node of a group as the group's first."""
    counts = dict.fromkeys((first for first, _ in feasible), 1)
    members: dict[int, list[int] | None] = {}
    if groups is not None:
        for first, count, group in groups:
            counts[first] = count
            members[first] = group
    total = sum(counts[i] * len(opts) for i, opts in feasible)
    n = policy.pick(job, total, snap)
    if not 0 <= n < total:
        raise ValueError(f"policy {policy.name}: pick() chose option {n} of {total}")
    for first, opts in feasible:
        size = counts[first] * len(opts)
        if n < size:
            node_n, option = divmod(n, len(opts))
            if by_state is None or node_n == 0:
                return 0.0, first, opts[option]
            # Another node of the group (unchanged this round, so as in the snapshot): the same
            # option on it is the GPUs at the same positions.
            i = by_state.nth(members.get(first), first, node_n)
            at = {g.index: k for k, g in enumerate(snap.nodes[first].gpus)}
            return 0.0, i, tuple(snap.nodes[i].gpus[at[g.index]] for g in opts[option])
        n -= size
    raise AssertionError("unreachable: n < total")


def replay_decisions(snapshots: Iterable[Snapshot], policy: Policy) -> list[list[Decision]]:
    """The decisions ``policy`` makes for each of ``snapshots`` (recorded by the daemon or the
    simulator), for checking that both sides decide alike."""
    return [schedule(snap, policy) for snap in snapshots]
