"""Why a pending job was not placed in a round: one typed reason per job, as Kubernetes gives a
pending pod its Unschedulable condition.

Pure functions of the round's snapshot, its policy and the decisions the round made; nothing
here touches the cluster, so the daemon and the simulator can ask alike. Reasons are judged
against the cluster as the round left it (its placements taken), in this order:

1. no healthy GPU of the requested type;
2. no GPU here is large enough at all (memory per GPU, GPUs on one node);
3. no GPU offers the requested MIG profile;
4. preemptions are under way for this job;
5. every GPU that could take it is busy (with what it needs and the most that is free), or, for
   a MIG slice, every MIG layout is full;
6. where it fits, the room is being freed for another job's preemption;
7. the policy's filter refused every place it fits;
8. an earlier job blocks it under the policy's strict order;
9. none of these: it fits now and the next round should place it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuos.jobs import Resources
from gpuos.mig import find_slot
from gpuos.scheduler.framework import demand, options, placed_request, sharing_of, take
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.snapshot import (
    MAX_EXECUTOR_JOBS,
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
from gpuos.units import format_bytes

# Jobs explained per round, in the policy's order; later ones only learn their queue position.
# A round's cost must not grow with a deep queue, and a job thousands deep waits mostly for
# the ones ahead of it anyway.
EXPLAIN_LIMIT = 1000
# GPUs named one by one in a message before the rest are summed up.
NAMED_GPUS = 4

_SHARED_AS = {"": "held whole", "mps": "shared by MPS", "timeslice": "time-sliced", "executor": "shared by an executor",
              "mig": "in MIG mode"}


class WaitKind(str, enum.Enum):
    NO_GPU_TYPE = "no-gpu-type"
    TOO_LARGE = "too-large"
    NO_MIG_PROFILE = "no-mig-profile"
    PREEMPTING = "preempting"
    MIG_FULL = "mig-full"
    BUSY = "busy"
    HELD = "held-for-preemptor"
    POLICY_FILTER = "policy-filter"
    STRICT_ORDER = "strict-order"
    FITS_NOW = "fits-now"
    NOT_EXAMINED = "not-examined"


@dataclass(frozen=True, slots=True)
class WaitReason:
    """Why a job is still pending after a round: ``kind`` for scripts, ``message`` for people."""

    kind: WaitKind
    message: str


@dataclass(frozen=True)
class WaitReasons:
    """The reasons of one round. Jobs past the examined ones get their queue position only."""

    examined: Mapping[str, WaitReason] = field(default_factory=dict)
    # 1-based position in the policy's order of each pending job that was not examined.
    unexamined: Mapping[str, int] = field(default_factory=dict)

    def get(self, job_id: str) -> WaitReason | None:
        """Why ``job_id`` waits, or None when the round placed it (or never saw it)."""
        reason = self.examined.get(job_id)
        if reason is not None:
            return reason
        position = self.unexamined.get(job_id)
        if position is None:
            return None
        return WaitReason(WaitKind.NOT_EXAMINED, f"not examined this round (queue position {position})")

    def __len__(self) -> int:
        return len(self.examined) + len(self.unexamined)


def explain(snap: Snapshot, policy: Policy, decisions: Sequence[Decision], limit: int = EXPLAIN_LIMIT) -> WaitReasons:
    """Why each pending job of ``snap`` that ``decisions`` (``policy``'s round) did not place waits."""
    placed = {d.job_id for d in decisions if isinstance(d, Place)}
    order = policy.order(snap.pending, snap)
    if len(placed) == len(order):
        return WaitReasons()
    after = _after(snap, decisions)
    multi = len(after) > 1
    running = {j.id: j for j in snap.running}
    unattributed = [d.job_id for d in decisions if isinstance(d, Preempt) and d.job_id in running]
    # Node name -> the job whose preemptions free room there (the framework keeps it for that job).
    held_for: dict[str, str] = {}
    # Many pending jobs share a request shape, and what a shape finds depends only on the nodes.
    shapes: dict[object, _ShapeFit] = {}
    examined: dict[str, WaitReason] = {}
    unexamined: dict[str, int] = {}
    first_blocked: JobView | None = None
    for position, job in enumerate(order, 1):
        if job.id in placed:
            continue
        if position > limit:
            unexamined[job.id] = position
            continue
        shape = (job.request, job.cpu_milli, job.host_memory)
        # A suspended job may resume in fewer places than its shape: it finds its own.
        key = (shape, job.suspended_gpu, job.suspended_model) if job.suspended else shape
        fit = shapes.get(key)
        if fit is None:
            fit = shapes[key] = _fit(job, snap.nodes, after, multi)
        reason = fit.never
        if reason is None and unattributed:
            # The framework preempts a victim for the first job in its order that names it, so
            # asking the (pure) policy again in the same order finds whom each victim is for.
            mine = [v for v in policy.victims(job, snap) if v in unattributed]
            if mine:
                unattributed = [v for v in unattributed if v not in mine]
                for victim in mine:
                    held_for.setdefault(running[victim].node, job.id)
                reason = WaitReason(WaitKind.PREEMPTING, f"preempting {_names(mine)} to make room; waiting for "
                                    f"{'it' if len(mine) == 1 else 'them'} to stop")
        if reason is None:
            reason = fit.busy or _where_it_fits(job, fit.fitting, after, held_for, policy, snap, multi)
        if reason is None:
            if policy.strict_order and first_blocked is not None:
                reason = WaitReason(WaitKind.STRICT_ORDER, f"behind job {first_blocked.id}, which policy "
                                    f"{policy.name} places first (strict order)")
            else:
                reason = WaitReason(WaitKind.FITS_NOW, "fits now; the next round should place it")
        if first_blocked is None:
            first_blocked = job
        examined[job.id] = reason
    return WaitReasons(examined, unexamined)


@dataclass(frozen=True, slots=True)
class _ShapeFit:
    """What one request shape finds in a round: why it never fits, or why it fits nowhere now
    (``busy``), or the places it fits (``fitting``: node position and GPUs)."""

    never: WaitReason | None
    busy: WaitReason | None
    fitting: tuple[tuple[int, tuple[GpuView, ...]], ...]


def _fit(job: JobView, nodes: Sequence[NodeView], after: Sequence[NodeView], multi: bool) -> _ShapeFit:
    never = _never_fits(job.request, nodes)
    if never is not None:
        return _ShapeFit(never, None, ())
    fitting = tuple((i, gpus) for i, node in enumerate(after) for gpus in options(job, node))
    if not fitting and job.suspended and job.suspended_gpu is not None:
        node, index = job.suspended_gpu
        return _ShapeFit(None, WaitReason(WaitKind.BUSY, f"suspended to host memory from GPU {index} of {node}; "
                                          f"waits for room to resume there"), ())
    return _ShapeFit(None, None if fitting else _busy(job, after, multi), fitting)


def _after(snap: Snapshot, decisions: Iterable[Decision]) -> tuple[NodeView, ...]:
    """The nodes with the round's placements taken (preempted jobs still hold theirs until they stop)."""
    nodes = list(snap.nodes)
    by_name = {n.name: i for i, n in enumerate(nodes)}
    jobs = {j.id: j for j in snap.pending}
    for d in decisions:
        if isinstance(d, Place) and d.job_id in jobs and d.node in by_name:
            i = by_name[d.node]
            node = nodes[i]
            gpus = {g.index: g for g in node.gpus}
            taken = tuple(gpus[k] for k in d.gpus)
            request = placed_request(jobs[d.job_id].request, d, taken[0]) if taken else None
            nodes[i], _ = take(jobs[d.job_id], node, taken, request)
    return tuple(nodes)


def _wants_gpu(request: Resources) -> bool:
    return bool(request.gpus or request.gpu_milli or request.mig_profile)


def _types(request: Resources) -> str:
    return " or ".join(request.gpu_types)


def _never_fits(request: Resources, nodes: Sequence[NodeView]) -> WaitReason | None:
    """Why no GPU here could take ``request`` even if all were idle, or None if some could."""
    if not _wants_gpu(request):
        return None
    typed = [g for n in nodes for g in n.gpus if not request.gpu_types or g.model in request.gpu_types]
    healthy = [g for g in typed if g.healthy]
    if not healthy:
        what = f"of type {_types(request)}" if request.gpu_types else "here"
        unhealthy = f" ({len(typed)} {'is' if len(typed) == 1 else 'are'} unhealthy)" if typed else ""
        return WaitReason(WaitKind.NO_GPU_TYPE, f"no healthy GPU {what}{unhealthy}")
    kind = f"{_types(request)} " if request.gpu_types else ""
    if request.mig_profile:
        if not any(p.name == request.mig_profile for g in healthy for p in g.mig_profiles):
            return WaitReason(WaitKind.NO_MIG_PROFILE,
                              f"no healthy {kind}GPU offers MIG profile {request.mig_profile}")
        return None
    large = [g for g in healthy if demand(request, g)[1] <= g.memory_total]
    if not large:
        need = demand(request, healthy[0])[1]
        biggest = max(g.memory_total for g in healthy)
        return WaitReason(WaitKind.TOO_LARGE, f"needs {format_bytes(need)} per GPU; the largest healthy {kind}GPU "
                          f"has {format_bytes(biggest)}")
    if _whole(request) and request.gpus > 1:
        keep = {id(g) for g in large}
        most = max(sum(1 for g in n.gpus if id(g) in keep) for n in nodes)
        if most < request.gpus:
            return WaitReason(WaitKind.TOO_LARGE, f"needs {request.gpus} GPUs on one node; the most healthy {kind}"
                              f"GPUs large enough on one node is {most}")
    return None


def _whole(request: Resources) -> bool:
    return not (request.gpu_milli or request.mig_profile or request.timeslice or request.executor)


def _candidates(request: Resources, node: NodeView) -> list[GpuView]:
    """GPUs of ``node`` that could take ``request`` if they were idle."""
    out = []
    for g in node.gpus:
        if not g.healthy or (request.gpu_types and g.model not in request.gpu_types):
            continue
        if request.mig_profile:
            if any(p.name == request.mig_profile for p in g.mig_profiles):
                out.append(g)
        elif demand(request, g)[1] <= g.memory_total:
            out.append(g)
    return out


def _busy(job: JobView, nodes: Sequence[NodeView], multi: bool) -> WaitReason:
    """What ``job`` lacks on every node, where nothing has room for it."""
    request = job.request
    roomy = [n for n in nodes if job.cpu_milli <= n.cpu_milli_free and job.host_memory <= n.host_memory_free]
    if not roomy:
        wants = []
        if job.cpu_milli > max(n.cpu_milli_free for n in nodes):
            wants.append(f"{job.cpu_milli / MILLI:g} CPUs (the most free on one node is "
                         f"{max(n.cpu_milli_free for n in nodes) / MILLI:g})")
        if job.host_memory > max(n.host_memory_free for n in nodes):
            wants.append(f"{format_bytes(job.host_memory)} of host memory (the most free on one node is "
                         f"{format_bytes(max(n.host_memory_free for n in nodes))})")
        return WaitReason(WaitKind.BUSY, "needs " + " and ".join(wants or ["CPUs and host memory together"]))
    gpus = [(n, g) for n in roomy for g in _candidates(request, n)]
    sharing = sharing_of(request)
    # A GPU is shared one way at a time: those shared another way are out until they empty.
    same = [(n, g) for n, g in gpus if g.idle or g.sharing == sharing]
    other = [g for _, g in gpus if not (g.idle or g.sharing == sharing)]
    others = f"; {_shared_otherwise(other)}" if other else ""
    if not gpus:
        return WaitReason(WaitKind.BUSY, "the GPUs it can use are on nodes without the CPUs or host memory it needs")
    if not same:
        return WaitReason(WaitKind.BUSY, f"every GPU that could take it is in use another way: {_shared_otherwise(other)}")
    if request.mig_profile:
        full = [f"{_gpu(n, g, multi)} has {', '.join(i.profile for i in g.mig_instances) or 'no slices'}"
                for n, g in same if find_slot(g.mig_profiles, g.mig_instances, request.mig_profile) is None]
        text = f"every MIG layout is full: no GPU has room for a {request.mig_profile} slice"
        if full:
            text += " (" + _some(full) + ")"
        return WaitReason(WaitKind.MIG_FULL, text + others)
    if sharing == "":
        idle = max((sum(1 for m, g in same if m is n and g.idle) for n in roomy), default=0)
        busy = [g for _, g in same if not g.idle]
        held = f"; {len(busy)} held whole" if busy else ""
        need = "an idle GPU" if request.gpus == 1 else f"{request.gpus} idle GPUs on one node"
        return WaitReason(WaitKind.BUSY, f"needs {need}; the most idle on one node is {idle}{held}{others}")
    if sharing == "timeslice":
        return _slots_or_memory(request, same, MAX_TIMESLICE_JOBS, "on a time-sliced GPU", "time-slice", others)
    if sharing == "executor":
        return _slots_or_memory(request, same, MAX_EXECUTOR_JOBS, "in a GPU's kernel executor", "executor", others)
    # MPS: the GPU that comes closest to the job's compute and memory together.
    def closeness(gpu: GpuView) -> float:
        milli, memory = demand(request, gpu)
        return min(gpu.milli_free / max(milli, 1), gpu.memory_free / max(memory, 1))

    g = max((g for _, g in same), key=closeness)
    milli, memory = demand(request, g)
    return WaitReason(WaitKind.BUSY, f"needs {format_bytes(memory)} and {milli / MILLI:g} GPU; the most free on "
                      f"one GPU is {format_bytes(g.memory_free)} / {g.milli_free / MILLI:g} GPU{others}")


def _where_it_fits(job: JobView, fitting: Sequence[tuple[int, tuple[GpuView, ...]]], nodes: Sequence[NodeView],
                   held_for: Mapping[str, str], policy: Policy, snap: Snapshot, multi: bool) -> WaitReason | None:
    """Why ``job`` was not placed where it has room, or None when nothing there stops it."""
    free = [(i, gpus) for i, gpus in fitting if nodes[i].name not in held_for]
    if not free:
        # The framework keeps a preemptor's node from later jobs, or it would find the freed room
        # taken next round and preempt again.
        preemptors = sorted({held_for[nodes[i].name] for i, _ in fitting})
        return WaitReason(WaitKind.HELD, f"the room it fits is being freed for job {_names(preemptors)}, "
                          f"which is preempting to run")
    if not any(policy.fits(job, nodes[i], gpus, snap) for i, gpus in free):
        places = [", ".join(_gpu(nodes[i], g, multi) for g in gpus) or nodes[i].name for i, gpus in free]
        return WaitReason(WaitKind.POLICY_FILTER, f"fits on {_some(places)}, but policy {policy.name}'s filter "
                          f"refused {'it' if len(places) == 1 else 'each'}")
    return None


def _shared_otherwise(gpus: Sequence[GpuView]) -> str:
    """``gpus`` counted by how they are shared: ``1 GPU time-sliced, 2 GPUs in MIG mode``."""
    ways: dict[str, int] = {}
    for g in gpus:
        way = _SHARED_AS.get(g.sharing, g.sharing)
        ways[way] = ways.get(way, 0) + 1
    return ", ".join(f"{_count(k)} {way}" for way, k in ways.items())


def _gpu(node: NodeView, gpu: GpuView, multi: bool) -> str:
    return f"{node.name}/GPU {gpu.index}" if multi else f"GPU {gpu.index}"


def _count(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _some(items: Sequence[str]) -> str:
    if len(items) <= NAMED_GPUS:
        return "; ".join(items)
    return "; ".join(items[:NAMED_GPUS]) + f" and {len(items) - NAMED_GPUS} more"


def _names(ids: Sequence[str]) -> str:
    return ", ".join(ids[:NAMED_GPUS]) + (f" and {len(ids) - NAMED_GPUS} more" if len(ids) > NAMED_GPUS else "")


def _slots_or_memory(request: Resources, same: list[tuple[NodeView, GpuView]], limit: int, where: str, kind: str,
                     others: str) -> WaitReason:
    """Why a job that shares a GPU by a mode with a job limit per GPU (time-slicing, the kernel
    executor) waits: no GPU of that mode with the memory it needs, or every one full."""
    slots = [g for _, g in same if len(g.jobs) >= limit]
    open_ = [g for _, g in same if len(g.jobs) < limit]
    parts = []
    if open_:
        g = max(open_, key=lambda gpu: gpu.memory_free)
        parts.append(f"needs {format_bytes(demand(request, g)[1])} {where}; the most free on one GPU is "
                     f"{format_bytes(g.memory_free)}")
    if slots:
        parts.append(f"{kind} slots full ({limit} jobs) on {_count(len(slots))}")
    return WaitReason(WaitKind.BUSY, "; ".join(parts) + others)
