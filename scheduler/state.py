"""The cluster as the scheduler knows it: one model that the daemon and the simulator both drive.

The model holds the nodes (as the views a policy sees), the queue and the running jobs. Every
change goes through one of its operations: :meth:`ClusterState.submit`, :meth:`~ClusterState.place`,
:meth:`~ClusterState.finish`, :meth:`~ClusterState.requeue` (preemption and faults),
:meth:`~ClusterState.pause`, :meth:`~ClusterState.resume`, :meth:`~ClusterState.set_resident` and
:meth:`~ClusterState.drop_suspension` (suspend-to-host), :meth:`~ClusterState.set_health` and
:meth:`~ClusterState.set_foreign_instances`. Each checks the change against the cluster's rules
and raises :class:`StateError` for one that breaks them, so neither driver can corrupt it. The
snapshot is rebuilt only where something changed: the node tuple, the queue and the running
list are cached until an operation touches them.

Who drives it: the daemon's control loop (``gpuos/daemon/controller.py``) applies each decision
here as its process starts, stops, pauses or fails; the simulator (``scheduler/sim/engine.py``)
applies the same operations at simulated times and adds only what it alone knows, a job's true
remaining work.

Attained service, one definition for both: a running job earns, per second, the fraction of a
GPU's compute it holds on each of its GPUs:

- a whole GPU: 1 per GPU;
- an MPS share: its compute share (``gpu_milli`` / 1000);
- a MIG instance: its compute slices of 7 (a 3g slice: 3/7);
- a time-slice sharer: its turn's length over the turns of all sharers that take turns (only
  the top priority on a GPU does; a lower one earns 0 while it waits), which is what the daemon's
  turns give it on average;
- a job in a GPU's kernel executor: its weight over the weights of the top priority's jobs there
  (the executor's atoms go to the top priority present; a lower one earns 0 meanwhile);
- a paused job: 0.

A placement is checked and accounted by what it says, not by the job's request alone: a fraction
whose user pinned no mode may be placed by its policy's choice (``Policy.share``) as a time-slice
turn or a MIG slice, and then holds, earns and progresses as one (framework.placed_request).

Suspend-to-host, where a GPU can (``GpuView.suspend``): a preemption may suspend the job
(``requeue(..., suspended=True)``: it waits with its progress, its memory on its node's host, and
may resume only where framework.resumes_on says), and a paused job's memory may leave its GPU in
place (``set_resident``). A GPU's ``memory_free`` counts committed limits, which time-sharers of an
oversubscribed GPU may push below 0; ``memory_suspended`` says how much of it is on the host.

Sharing costs (:class:`Costs`) set how fast a job progresses, which only the simulator needs
(the daemon's jobs progress as fast as the hardware lets them): see :meth:`ClusterState.rate`.
When rounds run is :class:`Cadence`, the same rule for both drivers.

Job groups (gpuos/groups.py): the model knows each job's group from its view and keeps the
groups its driver records (:meth:`ClusterState.set_group`, :meth:`~ClusterState.drop_group`);
the snapshot shows each recorded group with its unfinished members and the GPU-seconds spent,
the recorded ``Group.spent`` (ended members) plus the unfinished members' service up to the
snapshot's time. Applying a group's rules (stopping siblings, budgets) is the driver's: the
daemon's store, the simulator's engine, both through gpuos/groups.py.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from gpuos.groups import Group
from gpuos.jobs import Resources
from gpuos.mig import Instance, fits_at
from gpuos.partitions.timeslice import turn_length
from gpuos.scheduler.framework import demand, gpu_fits, placed_request, resumes_on, sharing_of
from gpuos.scheduler.index import NodeIndex
from gpuos.scheduler.snapshot import (
    MILLI,
    NO_GROUPS,
    GpuView,
    GroupKey,
    GroupView,
    JobView,
    NodeView,
    Place,
    Shape,
    Snapshot,
    Stint,
    shape_of,
)


class StateError(RuntimeError):
    """An operation that breaks the cluster's rules (over-commit, unknown job, ...)."""


@dataclass(frozen=True)
class Costs:
    """What sharing costs, as the simulator charges it (sources in docs/scheduler.md).

    - ``interference``: an MPS share runs at 1 / (1 + interference x its neighbours' GPU share);
    - ``context_switch``: seconds lost per time-slice turn;
    - ``preemption_cost``: seconds of extra work a preempted job pays when it runs again
      (checkpoint and restart);
    - ``paused_memory``: the fraction of its memory a paused or waiting time-slice job keeps on
      the GPU: all of it where the GPU cannot suspend to host; where it can (GpuView.suspend),
      the driver moves a paused sharer's memory out (:meth:`ClusterState.set_resident`) and an
      oversubscribed GPU's time-sharers pay for the moves in their rate (:meth:`ClusterState.rate`);
    - ``start_latency``: seconds each start holds the GPU before the job's work begins (the
      daemon spawning its process: a fraction of a second, nothing against a trace's minutes, but
      what a replay compressed into seconds must count);
    - ``stop_latency``: seconds a preempted job holds its GPUs while its process stops;
    - ``host_link_bytes_per_s``: how fast suspend-to-host moves a job's memory each way, so a
      suspend or a restore of B bytes takes B / this (:meth:`transfer_seconds`). 25e9 is a PCIe
      Gen4 x16 link's achievable rate with pinned buffers (31.5 GB/s raw); the daemon's backend
      keeps a figure per GPU model (gpuos/devices/catalog.py, 12-50 GB/s);
    - ``atom_seconds``: how long one atom of a built-in kernel runs (kernels/atoms.py), the most a
      high-priority kernel job waits for the GPU in a kernel executor (charged once at its start
      beside other jobs there; see docs/scheduler.md).
    """

    interference: float = 0.36  # measured: two 50% MPS clients on an H100, 1.18-1.19x (docs/scheduler.md)
    context_switch: float = 0.001
    preemption_cost: float = 30.0
    paused_memory: float = 1.0
    start_latency: float = 0.0
    stop_latency: float = 0.0
    host_link_bytes_per_s: float = 25e9
    atom_seconds: float = 250e-6

    def transfer_seconds(self, nbytes: int) -> float:
        """Seconds a suspend (or a restore) of ``nbytes`` takes over the host link."""
        return nbytes / self.host_link_bytes_per_s if self.host_link_bytes_per_s > 0 else 0.0


@dataclass(frozen=True)
class Cadence:
    """When rounds run: after any change (a submit, a start, an end, a fault), and every
    ``period`` seconds while jobs wait and others run, for policies whose answers change with
    time alone (aging, demotion); ``period`` 0 means changes alone. The daemon also keeps
    ``min_gap`` between rounds so a burst of submits costs one round (the simulator, whose
    instants are exact, uses 0)."""

    period: float = 0.0
    min_gap: float = 0.0

    @classmethod
    def of(cls, period: float, min_gap: float = 0.0) -> Cadence:
        return cls(max(0.0, period), max(0.0, min_gap))

    def next_round(self, last: float, pending: bool, running: bool) -> float | None:
        """When a round is due with nothing changed, after one at ``last``; None: not until a change."""
        if self.period > 0 and pending and running:
            return last + self.period
        return None


@dataclass(slots=True)
class Holding:
    """A running job in the model: where it runs, since when, and the service it has earned."""

    view: JobView  # the job as it waited (its request, tenant, priority, ...)
    place: Place
    pos: int  # the node's position
    started_at: float
    since: float  # service is folded into ``attained`` up to here
    attained: float
    share: float = 0.0
    quantum: float = 0.0  # the policy's time-slice quantum (time-sliced jobs only)
    paused: bool = False
    # What the job holds its GPUs by: its request, or the mode its policy chose for it.
    request: Resources | None = None
    # False while it is suspended in place (set_resident): its memory, ``host_bytes`` of it, is
    # on its node's host, and its limit (``place.memory``) counts in its GPU's memory_suspended.
    resident: bool = True
    host_bytes: int = 0

    @property
    def held(self) -> Resources:
        return self.view.request if self.request is None else self.request


class QueueOrder:
    """The waiting jobs in the default queue order (Policy.order: submitted_at, then id) and
    counted by shape (snapshot.shape_of), kept as jobs come and go.

    Sorting 10,000 waiting jobs every round costs milliseconds, and most of a long queue neither
    moves nor changes between rounds: kept sorted, a new job costs a binary search (and, being
    the newest, usually an append), and a snapshot copies a list. The shape counts let a round
    stop once no shape still waiting can fit anywhere (framework.schedule).
    """

    __slots__ = ("_keys", "_views", "_shapes", "_unordered", "_tuple", "_counts")

    def __init__(self) -> None:
        self._keys: list[tuple[float, str]] = []
        self._views: list[JobView] = []
        self._shapes: dict[Shape, int] = {}
        # Jobs whose submitted_at is NaN, which no sorted list can hold in sorted()'s order.
        self._unordered = 0
        self._tuple: tuple[JobView, ...] | None = None
        self._counts: Mapping[Shape, int] | None = None

    def add(self, view: JobView) -> None:
        key = (view.submitted_at, view.id)
        if key[0] != key[0]:
            self._unordered += 1
        else:
            keys = self._keys
            i = len(keys) if not keys or keys[-1] < key else bisect_right(keys, key)
            keys.insert(i, key)
            self._views.insert(i, view)
        shape = shape_of(view)
        self._shapes[shape] = self._shapes.get(shape, 0) + 1
        self._tuple = self._counts = None

    def remove(self, view: JobView) -> None:
        key = (view.submitted_at, view.id)
        if key[0] != key[0]:
            self._unordered -= 1
        else:
            i = bisect_left(self._keys, key)
            del self._keys[i]
            del self._views[i]
        shape = shape_of(view)
        left = self._shapes[shape] - 1
        if left:
            self._shapes[shape] = left
        else:
            del self._shapes[shape]
        self._tuple = self._counts = None

    def by_age(self) -> tuple[JobView, ...] | None:
        """The waiting jobs in the default order (None while one has no orderable time)."""
        if self._unordered:
            return None
        if self._tuple is None:
            self._tuple = tuple(self._views)
        return self._tuple

    def shapes(self) -> Mapping[Shape, int]:
        """Waiting jobs by shape: a copy, so that a snapshot keeps the counts it was taken with."""
        if self._counts is None:
            self._counts = MappingProxyType(dict(self._shapes))
        return self._counts


NodeListener = Callable[[int, NodeView], None]


class ClusterState:
    """Nodes, queue and running jobs; see the module docstring."""

    def __init__(self, nodes: Sequence[NodeView], costs: Costs | None = None,
                 on_node: NodeListener | None = None) -> None:
        self.costs = costs or Costs()
        self.nodes: list[NodeView] = list(nodes)
        self.position = {n.name: i for i, n in enumerate(self.nodes)}
        self.index = NodeIndex(self.nodes)
        self.pending: dict[str, JobView] = {}
        self.running: dict[str, Holding] = {}
        # Each running job's current view, kept as it changes, so a snapshot copies a dict.
        self._views: dict[str, JobView] = {}
        # MIG instances that exist but no job of ours holds (made by an administrator): the
        # scheduler sees them as occupied. By (node position, GPU index).
        self._foreign: dict[tuple[int, int], tuple[Instance, ...]] = {}
        self._on_node = on_node
        self._nodes_tuple: tuple[NodeView, ...] | None = None
        self._pending_tuple: tuple[JobView, ...] | None = None
        # While the queue only grew since the last snapshot, its tuple is that snapshot's plus the
        # views appended (a dict keeps insertion order): joining them copies a tuple, which costs
        # a fifth of iterating a 10,000-job dict. None once a job left or changed in place.
        self._pending_base: tuple[JobView, ...] = ()
        self._appended: list[JobView] | None = []
        self._running_tuple: tuple[JobView, ...] | None = None
        # ``pending`` again, sorted and counted as it changes (every change to it goes to both).
        self._order = QueueOrder()
        # Recorded groups, and the unfinished (waiting or running) members of every group a job
        # names, recorded or not: the daemon may learn of a member before its group's record.
        self.groups: dict[GroupKey, Group] = {}
        self._members: dict[GroupKey, dict[str, None]] = {}

    # -- reading --------------------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        """What a policy sees at ``now``; running jobs' service grows from their views' rates."""
        nodes = self.node_tuple()
        if self._pending_tuple is None:
            if self._appended is None:
                self._pending_tuple = tuple(self.pending.values())
            else:
                self._pending_tuple = self._pending_base + tuple(self._appended)
            self._pending_base, self._appended = self._pending_tuple, []
        if self._running_tuple is None:
            self._running_tuple = tuple(self._views.values())
        groups = self._group_views(now) if self.groups else NO_GROUPS
        return Snapshot(now, nodes, self._pending_tuple, self._running_tuple, self.index, groups,
                        self._order.by_age(), self._order.shapes())

    def node_tuple(self) -> tuple[NodeView, ...]:
        """The nodes as they stand (the tuple the index describes, so the framework may use it)."""
        if self._nodes_tuple is None:
            self._nodes_tuple = tuple(self.nodes)
            self.index.nodes = self._nodes_tuple
        return self._nodes_tuple

    def view(self, job_id: str) -> JobView | None:
        """The job as a policy sees it (waiting or running); None if the model does not hold it."""
        held = self.running.get(job_id)
        return self._views[job_id] if held is not None else self.pending.get(job_id)

    def attained(self, job_id: str, now: float) -> float:
        """GPU-seconds of service ``job_id`` has earned up to ``now`` (module docstring)."""
        held = self.running.get(job_id)
        if held is not None:
            return held.attained + (now - held.since) * held.share
        pending = self.pending.get(job_id)
        return pending.attained_service if pending is not None else 0.0

    def members(self, tenant: str, name: str) -> tuple[str, ...]:
        """The unfinished members of group (``tenant``, ``name``), in the order they came."""
        return tuple(self._members.get((tenant, name), ()))

    def group_spent(self, tenant: str, name: str, now: float) -> float:
        """GPU-seconds group (``tenant``, ``name``) has spent by ``now``: its record's ``spent``
        plus its unfinished members' service (0 for a group never recorded)."""
        group = self.groups.get((tenant, name))
        return (group.spent if group is not None else 0.0) + self.members_service((tenant, name), now)

    def members_service(self, key: GroupKey, now: float) -> float:
        """GPU-seconds the unfinished members of group ``key`` have earned by ``now`` (what
        gpuos.groups.over_budget calls ``running_service``; a requeued member's counts too)."""
        return sum(self.attained(job_id, now) for job_id in self._members.get(key, ()))

    def holding(self, job_id: str) -> Holding | None:
        return self.running.get(job_id)

    def gpu(self, node: str, index: int) -> GpuView:
        return self.nodes[self._pos(node)].gpus[index]

    def rate(self, job_id: str) -> float:
        """How fast a running job progresses, in seconds of its work per second, under :attr:`costs`:

        - alone on what it asked for (whole GPUs, a MIG slice, a share with no neighbour): 1;
        - an MPS share beside others: 1 / (1 + interference x the others' GPU share);
        - a time-slice sharer: its turn over the whole cycle of turns, each turn costing a
          context switch; 0 while a higher priority shares the GPU. On an oversubscribed GPU
          whose turning sharers' limits add up beyond its memory, every turn must also bring the
          turn's job's memory in and move as much out over the host link first (round-robin
          defeats any cache of fewer jobs than take turns): ``2 x limit / host_link_bytes_per_s``
          more per turn, the cycle's rate factor being turn / (turn + switch);
        - a job in a kernel executor: its share of the top priority's weight; 0 below it;
        - paused: 0.
        """
        held = self.running[job_id]
        place = held.place
        if held.paused:
            return 0.0
        if place.sharing not in ("mps", "timeslice", "executor"):
            return 1.0
        gpu = self.nodes[held.pos].gpus[place.gpus[0]]
        if len(gpu.jobs) == 1:
            return 1.0
        if place.sharing == "executor":
            # Atoms switch between jobs at no cost beyond the one atom a preemptor may wait for.
            return self._executor_shares(gpu).get(job_id, 0.0)
        if place.sharing == "mps":
            load = sum(self.running[j].place.milli for j in gpu.jobs if j != job_id
                       and not self.running[j].paused) / MILLI
            return 1.0 / (1.0 + self.costs.interference * load)
        turns = self._turns(gpu)
        mine = turns.get(job_id, 0.0)
        if len(turns) == 1 or not mine:
            return 1.0 if mine else 0.0
        switch = self.costs.context_switch
        if gpu.oversubscription > 1:
            limits = {j: self.running[j].place.memory for j in turns}
            if sum(limits.values()) > gpu.memory_total:
                costs = self.costs
                return mine / sum(t + switch + costs.transfer_seconds(2 * limits[j]) for j, t in turns.items())
        return mine / sum(t + switch for t in turns.values())

    # -- the queue ------------------------------------------------------------------------------

    def submit(self, view: JobView) -> None:
        """``view``'s job waits (new, or its view changed: a new priority, say)."""
        if view.id in self.running:
            raise StateError(f"{view.id!r} is running; it cannot also wait")
        known = self.pending.get(view.id)
        if known is not None and known.stints and not view.stints:
            # The model keeps a job's run history; a driver resubmitting the job's record (the
            # daemon after a requeue) need not know it.
            view = replace(view, stints=known.stints)
        if known is not None and known.suspended and not view.suspended:
            # Nor where the model suspended it (drop_suspension forgets that).
            view = replace(view, suspended=True, suspended_bytes=known.suspended_bytes,
                           suspended_model=known.suspended_model, suspended_gpu=known.suspended_gpu)
        if view.suspended and view.suspended_gpu is not None and view.suspended_gpu[0] not in self.position:
            raise StateError(f"{view.id!r} is suspended on unknown node {view.suspended_gpu[0]!r}")
        if known is not None:
            self._charge_host(known, -1)
        self._charge_host(view, 1)
        if known is not None:
            self._replace_pending(known, view)
        else:
            if self._appended is not None:
                self._appended.append(view)
            self.pending[view.id] = view
            self._order.add(view)
            self._pending_tuple = None
        if view.group:
            self._members.setdefault((view.tenant, view.group), {})[view.id] = None

    def withdraw(self, job_id: str) -> None:
        """A waiting job leaves the queue without running (cancelled)."""
        view = self.pending.pop(job_id, None)
        if view is not None:
            self._charge_host(view, -1)
            self._order.remove(view)
            self._pending_tuple = self._appended = None
            if view.group:
                self._leave_group(view)

    # -- groups ---------------------------------------------------------------------------------

    def set_group(self, group: Group) -> None:
        """Record ``group`` (or replace its record): its spec, successes, and ``spent``, the
        GPU-seconds of its members that have ended (the model adds the unfinished ones' live)."""
        self.groups[(group.tenant, group.name)] = group

    def drop_group(self, tenant: str, name: str) -> None:
        """Forget group (``tenant``, ``name``)'s record (its members keep their group's name)."""
        self.groups.pop((tenant, name), None)

    # -- placements -----------------------------------------------------------------------------

    def place(self, place: Place, now: float, quantum: float = 1.0, started_at: float | None = None,
              attained: float | None = None, since: float | None = None) -> list[str]:
        """Start waiting job ``place.job_id`` where ``place`` says; returns the other jobs whose
        rate may have changed (neighbours on a shared GPU).

        ``quantum`` is the policy's time slice for a time-sliced job. ``started_at``, and
        ``attained`` service up to ``since``, let a restarted daemon re-adopt a job that kept
        running meanwhile.

        Placing a suspended job is its restore: only onto a GPU it may resume on
        (framework.resumes_on), and its memory leaves the host; it runs as a job not suspended.
        """
        view = self.pending.get(place.job_id)
        if view is None:
            raise StateError(f"placed {place.job_id!r}, which is not waiting")
        pos = self.position.get(place.node)
        if pos is None:
            raise StateError(f"placed {place.job_id!r} on unknown node {place.node!r}")
        node = self.nodes[pos]
        new_node, request = self._take(view, node, place)
        del self.pending[place.job_id]
        self._order.remove(view)
        self._pending_tuple = self._appended = None
        if view.suspended:
            view = _unsuspended(view)
        held = Holding(view, place, pos, now if started_at is None else started_at,
                       now if since is None else since,
                       view.attained_service if attained is None else attained,
                       quantum=quantum if place.sharing == "timeslice" else 0.0,
                       request=None if request is view.request else request)
        self.running[place.job_id] = held
        self._set_node(pos, new_node)
        held.share = self._share_of(held)  # earned from ``since`` on; neighbours fold theirs now
        return self._reshare(held, now)

    def finish(self, job_id: str, now: float) -> tuple[Holding, list[str]]:
        """A running job ended (done, failed or cancelled): it leaves the model."""
        held = self._release(job_id, now)
        if held.view.group:
            self._leave_group(held.view)
        return held, self._reshare(held, now)

    def requeue(self, job_id: str, now: float, suspended: bool = False, nbytes: int | None = None) -> list[str]:
        """A running job goes back to the queue (preempted, or its GPU failed) with the service it
        earned and one more preemption; returns the jobs whose rate may have changed.

        ``suspended``: preempted by suspension, not stopped. Its memory (``nbytes``, default its
        limit on the GPU) is on its node's host and its process keeps its progress: its view waits
        with ``suspended`` set and says where it may resume (its GPU's model and (node, index);
        placing it is the restore). Only a single-GPU job on a GPU that can suspend, and only
        where the host has room for the bytes (StateError otherwise: nothing changes).
        """
        where: tuple[str, int] | None = None
        model = ""
        if suspended:
            model, where, nbytes = self._check_suspendable(job_id, nbytes, "requeue suspended")
        held = self._release(job_id, now)
        stint = Stint(held.started_at, now, held.attained - held.view.attained_service)
        view = replace(held.view, attained_service=held.attained, preemptions=held.view.preemptions + 1,
                       stints=(*held.view.stints, stint))
        if where is not None and nbytes is not None:
            view = replace(view, suspended=True, suspended_bytes=nbytes, suspended_model=model, suspended_gpu=where)
            self._charge_host(view, 1)
        self.pending[job_id] = view  # not waiting while it ran: it joins the end of the queue
        if self._appended is not None:
            self._appended.append(view)
        self._order.add(view)
        self._pending_tuple = None
        return self._reshare(held, now)

    def pause(self, job_id: str, now: float) -> list[str]:
        """Stop a running job's work but keep its place (its memory stays on the GPU)."""
        return self._set_paused(job_id, True, now)

    def resume(self, job_id: str, now: float) -> list[str]:
        """A paused job works again; one suspended in place must be made resident first."""
        held = self.running.get(job_id)
        if held is not None and not held.resident:
            raise StateError(f"{job_id!r} is suspended to host memory: restore it (set_resident) before resuming")
        return self._set_paused(job_id, False, now)

    def set_resident(self, job_id: str, resident: bool, now: float, nbytes: int | None = None) -> list[str]:
        """A placed, paused job's memory left its GPU for the host (``resident`` False: ``nbytes``
        of it, default its limit) or came back (True). It keeps its place and its GPU keeps its
        committed limit (``memory_free``); the GPU's ``memory_suspended`` and the node's host
        memory follow, and its view says ``suspended``. Returns the jobs whose rate may change.

        Refused (StateError): a job not running, one that is not paused (pause it first: a job
        runs only with its memory on the GPU), a multi-GPU job, a GPU that cannot suspend, a host
        without room. Whether the resident set fits the GPU is the driver's to keep (the daemon's
        residency rule, gpuos/partitions/residency.py): the model counts limits, not the bytes
        a job actually holds, so it does not refuse a restore on that count.
        """
        held = self.running.get(job_id)
        if held is None:
            raise StateError(f"{job_id!r} is not running")
        if held.resident == resident:
            return []
        pos, place = held.pos, held.place
        node = self.nodes[pos]
        if not resident:
            if not held.paused:
                raise StateError(f"{job_id!r} is running: pause it before moving its memory to the host")
            _, _, nbytes = self._check_suspendable(job_id, nbytes, "suspend")
            held.resident, held.host_bytes = False, nbytes
            moved, host = place.memory, -nbytes
        else:
            moved, host = -place.memory, held.host_bytes
            held.resident, held.host_bytes = True, 0
        gpu = node.gpus[place.gpus[0]]
        node = _with_gpu(node, replace(gpu, memory_suspended=gpu.memory_suspended + moved))
        self._set_node(pos, replace(node, host_memory_free=node.host_memory_free + host))
        self._refold(held, now, force=True)  # its view says whether it is suspended
        return []

    def drop_suspension(self, job_id: str) -> None:
        """A waiting suspended job's host copy is gone (its restore failed, its process died): it
        waits as a job to restart anywhere, and its node's host memory is free again."""
        view = self.pending.get(job_id)
        if view is None:
            raise StateError(f"{job_id!r} is not waiting")
        if view.suspended:
            self._charge_host(view, -1)
            self._replace_pending(view, _unsuspended(view))

    # -- devices --------------------------------------------------------------------------------

    def set_health(self, node: str, index: int, healthy: bool) -> tuple[str, ...]:
        """GPU ``index`` of ``node`` failed or came back; returns the jobs on it (the driver asks
        the policy, ``requeue_after_fault``, what becomes of each)."""
        pos = self._pos(node)
        current = self.nodes[pos]
        gpu = current.gpus[index]
        if gpu.healthy != healthy:
            self._set_node(pos, _with_gpu(current, replace(gpu, healthy=healthy)))
        return gpu.jobs

    def set_foreign_instances(self, node: str, index: int, instances: Iterable[Instance]) -> None:
        """MIG instances on a GPU that no job here holds (made by someone else)."""
        pos = self._pos(node)
        new = tuple(instances)
        old = self._foreign.get((pos, index), ())
        if new == old:
            return
        self._foreign[(pos, index)] = new
        current = self.nodes[pos]
        gpu = current.gpus[index]
        kept = list(gpu.mig_instances)
        for instance in old:
            kept.remove(instance)
        instances_now = (*kept, *new)
        slices = {p.name: p.slices for p in gpu.mig_profiles}
        used = sum(slices.get(i.profile, 0) for i in instances_now)
        sharing = "mig" if instances_now else (gpu.sharing if gpu.jobs else "")
        self._set_node(pos, _with_gpu(current, replace(gpu, mig_instances=instances_now, mig_slices_used=used,
                                                       sharing=sharing)))

    # -- internals ------------------------------------------------------------------------------

    def _replace_pending(self, known: JobView, view: JobView) -> None:
        self._order.remove(known)
        self._appended = None  # the dict replaces it where it stood
        self.pending[view.id] = view
        self._order.add(view)
        self._pending_tuple = None

    def _charge_host(self, view: JobView, sign: int) -> None:
        """A waiting suspended job's memory takes (``sign`` 1) or leaves (-1) its node's host memory."""
        if not (view.suspended and view.suspended_bytes and view.suspended_gpu is not None):
            return
        pos = self.position.get(view.suspended_gpu[0])
        if pos is not None:
            node = self.nodes[pos]
            self._set_node(pos, replace(node, host_memory_free=node.host_memory_free - sign * view.suspended_bytes))

    def _check_suspendable(self, job_id: str, nbytes: int | None, what: str) -> tuple[str, tuple[str, int], int]:
        """(model, (node, index), bytes) of running ``job_id``'s suspension, checked against the
        rules (single GPU, a GPU that can suspend, room on the host); StateError names the rule."""
        held = self.running.get(job_id)
        if held is None:
            raise StateError(f"{job_id!r} is not running")
        place = held.place
        if len(place.gpus) != 1:
            raise StateError(f"{what} {job_id!r}: only a job on one GPU can be suspended; it holds {len(place.gpus)}")
        node = self.nodes[held.pos]
        gpu = node.gpus[place.gpus[0]]
        if not gpu.suspend:
            raise StateError(f"{what} {job_id!r}: GPU {gpu.index} of {node.name} cannot suspend to host memory")
        if nbytes is None:
            nbytes = place.memory if held.resident else held.host_bytes
        if nbytes < 0:
            raise StateError(f"{what} {job_id!r}: {nbytes} bytes is negative")
        # What the host has for it: what is free, plus what the job holds there already (suspended
        # in place) and, when it leaves its GPUs, its own host memory request.
        room = node.host_memory_free + (0 if held.resident else held.host_bytes)
        if what.startswith("requeue"):
            room += held.view.host_memory
        if nbytes > room:
            raise StateError(f"{what} {job_id!r}: {node.name} has {room} bytes of host memory for its {nbytes}")
        return gpu.model, (node.name, gpu.index), nbytes

    def _leave_group(self, view: JobView) -> None:
        key = (view.tenant, view.group)
        members = self._members.get(key)
        if members is not None:
            members.pop(view.id, None)
            if not members:
                del self._members[key]

    def _group_views(self, now: float) -> dict[GroupKey, GroupView]:
        views = {}
        for key, group in self.groups.items():
            members = tuple(self._members.get(key, ()))
            running = sum(1 for m in members if m in self.running)
            spec = group.spec
            views[key] = GroupView(
                group.tenant, spec.name, spec.mode, spec.goal, spec.budget,
                group.spent + sum(self.attained(m, now) for m in members),
                members, running, group.succeeded, group.open,
            )
        return views

    def _pos(self, node: str) -> int:
        pos = self.position.get(node)
        if pos is None:
            raise StateError(f"unknown node {node!r}")
        return pos

    def _set_node(self, pos: int, node: NodeView) -> None:
        self.nodes[pos] = node
        self.index.update(pos, node)
        self._nodes_tuple = None
        if self._on_node is not None:
            self._on_node(pos, node)

    def _take(self, view: JobView, node: NodeView, place: Place) -> tuple[NodeView, Resources]:
        """``node`` after ``view``'s job takes ``place``, checked against every rule, and what the
        job holds it by."""
        # A negative index would alias another GPU (gpus[-1]); a decision made in an untrusted
        # process may say anything, so the range is checked, not assumed.
        if any(not 0 <= i < len(node.gpus) for i in place.gpus):
            raise StateError(f"placement {place} names a GPU the node lacks")
        gpus = tuple(node.gpus[i] for i in place.gpus)
        request = placed_request(view.request, place, gpus[0]) if gpus else view.request
        if view.cpu_milli > node.cpu_milli_free or view.host_memory > node.host_memory_free:
            raise StateError(f"placement {place} over-commits CPU or host memory of {place.node}")
        if len(set(place.gpus)) != len(place.gpus) or not all(gpu_fits(request, g) for g in gpus):
            raise StateError(f"placement {place} over-commits a GPU of {place.node}")
        if len(gpus) != _gpus_wanted(request):
            raise StateError(f"placement {place} gives {len(gpus)} GPUs to a job asking {_gpus_wanted(request)}")
        sharing = sharing_of(request)
        if place.sharing != sharing or place.mig_profile != request.mig_profile:
            raise StateError(f"placement {place} shares the GPU unlike the job asks ({sharing or 'exclusive'})")
        if view.suspended and not all(resumes_on(view, node, g) for g in gpus):
            raise StateError(f"placement {place} restores suspended {view.id!r} where it cannot resume "
                             f"(suspended on {view.suspended_model or 'a GPU'} {view.suspended_gpu})")
        taken: dict[int, GpuView] = {}
        for gpu in gpus:
            milli, memory = demand(request, gpu)
            weight = (request.gpu_milli or MILLI) if (request.timeslice or request.executor) else milli
            if (weight, memory) != (place.milli, place.memory):
                raise StateError(f"placement {place} disagrees with the job's demand ({weight}, {memory})")
            instances, slices = gpu.mig_instances, gpu.mig_slices_used
            if request.mig_profile:
                if not fits_at(gpu.mig_profiles, instances, request.mig_profile, place.mig_slot):
                    raise StateError(f"placement {place}: no room for {request.mig_profile} at slot {place.mig_slot}")
                instances = (*instances, Instance(request.mig_profile, place.mig_slot))
                slices += next(p.slices for p in gpu.mig_profiles if p.name == request.mig_profile)
            taken[gpu.index] = GpuView(
                gpu.index, gpu.model, gpu.memory_total, gpu.memory_free - memory, gpu.milli_free - milli,
                gpu.healthy, gpu.uuid, gpu.mig_profiles, slices, gpu.jobs + (view.id,), sharing, instances,
                suspend=gpu.suspend, oversubscription=gpu.oversubscription, memory_suspended=gpu.memory_suspended,
            )
        # A suspended job's memory leaves its node's host as it is restored (framework.take alike).
        restored = view.suspended_bytes if view.suspended and view.suspended_gpu is not None else 0
        return NodeView(
            node.name,
            tuple([taken.get(g.index, g) for g in node.gpus]),
            node.cpu_milli_free - view.cpu_milli,
            node.host_memory_free - view.host_memory + restored,
            node.cross_gpu_restore,
        ), request

    def _release(self, job_id: str, now: float) -> Holding:
        held = self.running.pop(job_id, None)
        if held is None:
            raise StateError(f"{job_id!r} is not running")
        del self._views[job_id]
        held.attained += (now - held.since) * held.share
        held.since = now
        self._running_tuple = None
        place, request = held.place, held.held
        node = self.nodes[held.pos]
        freed: dict[int, GpuView] = {}
        for index in place.gpus:
            gpu = node.gpus[index]
            milli, memory = demand(request, gpu)
            instances, slices = gpu.mig_instances, gpu.mig_slices_used
            if request.mig_profile:
                mine = Instance(request.mig_profile, place.mig_slot)
                instances = tuple(i for i in instances if i != mine)
                slices -= next((p.slices for p in gpu.mig_profiles if p.name == request.mig_profile), 0)
            jobs = tuple(j for j in gpu.jobs if j != job_id)
            sharing = gpu.sharing if jobs else ("mig" if instances else "")
            freed[index] = GpuView(
                gpu.index, gpu.model, gpu.memory_total, gpu.memory_free + memory, gpu.milli_free + milli,
                gpu.healthy, gpu.uuid, gpu.mig_profiles, slices, jobs, sharing, instances,
                suspend=gpu.suspend, oversubscription=gpu.oversubscription,
                memory_suspended=gpu.memory_suspended - (0 if held.resident else memory),
            )
        # A job suspended in place leaves the host too (a suspended requeue charges it again).
        self._set_node(held.pos, NodeView(
            node.name,
            tuple([freed.get(g.index, g) for g in node.gpus]),
            node.cpu_milli_free + held.view.cpu_milli,
            node.host_memory_free + held.view.host_memory + held.host_bytes,
            node.cross_gpu_restore,
        ))
        return held

    def _set_paused(self, job_id: str, paused: bool, now: float) -> list[str]:
        held = self.running.get(job_id)
        if held is None:
            raise StateError(f"{job_id!r} is not running")
        if held.paused == paused:
            return []
        held.paused = paused
        self._refold(held, now, force=True)  # its view says paused even where its share stays 0
        return self._reshare(held, now)

    def _turns(self, gpu: GpuView) -> dict[str, float]:
        """The turn length of each time-slice sharer of ``gpu`` that takes turns (the daemon's
        rule, gpuos.partitions.timeslice: only the top priority present; turns scaled by weight)."""
        sharers = [self.running[j] for j in gpu.jobs if not self.running[j].paused]
        if not sharers:
            return {}
        top = max(h.view.priority for h in sharers)
        turning = [h for h in sharers if h.view.priority == top]
        if len(turning) == 1:
            return {turning[0].view.id: 1.0}
        mean = sum(h.place.milli for h in turning) / len(turning)
        return {h.view.id: turn_length(h.quantum, h.place.milli, mean) for h in turning}

    def _executor_shares(self, gpu: GpuView) -> dict[str, float]:
        """Each unpaused job's share of ``gpu``'s kernel executor (its rule, gpuos.kernels.executor:
        atoms go to the top priority present, split by weight among equals; a lower priority gets
        none while a higher one is present)."""
        jobs = [self.running[j] for j in gpu.jobs if not self.running[j].paused]
        if not jobs:
            return {}
        top = max(h.view.priority for h in jobs)
        served = [h for h in jobs if h.view.priority == top]
        total = sum(h.place.milli for h in served)
        return {h.view.id: h.place.milli / total for h in served}

    def _share_of(self, held: Holding) -> float:
        if held.paused:
            return 0.0
        place = held.place
        if place.sharing == "executor":
            return self._executor_shares(self.nodes[held.pos].gpus[place.gpus[0]]).get(held.view.id, 0.0)
        if place.sharing == "timeslice":
            turns = self._turns(self.nodes[held.pos].gpus[place.gpus[0]])
            mine = turns.get(held.view.id, 0.0)
            return mine / sum(turns.values()) if mine else 0.0
        if place.sharing in ("mps", "mig"):
            return place.milli / MILLI * len(place.gpus)
        return float(len(place.gpus))

    def _reshare(self, changed: Holding, now: float) -> list[str]:
        """Recompute service shares after ``changed`` started, ended or paused; fold the service of
        every job whose share changes. Returns the other jobs on its GPUs whose rate may change."""
        if changed.view.id in self.running:
            self._refold(changed, now)
        if changed.place.sharing not in ("mps", "timeslice", "executor"):
            return []
        node = self.nodes[changed.pos]
        others = [j for i in changed.place.gpus for j in node.gpus[i].jobs if j != changed.view.id]
        for job_id in others:
            self._refold(self.running[job_id], now)
        return others

    def _refold(self, held: Holding, now: float, force: bool = False) -> None:
        """Fold ``held``'s service up to ``now`` and rebuild its view if its share changed (or
        ``force``: something else in its view did, or it has none yet)."""
        share = self._share_of(held)
        if share == held.share and not force and held.view.id in self._views:
            return
        held.attained += (now - held.since) * held.share
        held.since = now
        held.share = share
        view, place = held.view, held.place
        # Built whole rather than with dataclasses.replace, which costs three times as much.
        # A running job's view shows what it holds, so that policies free the right room when
        # they weigh preempting it.
        self._views[view.id] = JobView(
            view.id, held.held, view.tenant, view.priority, view.qos, view.submitted_at,
            held.started_at, held.attained, view.estimated_seconds, view.cpu_milli, view.host_memory,
            place.node, place.gpus, held.paused, view.preemptions, held.share, held.since, view.stints,
            view.group,
        ) if held.resident else JobView(
            view.id, held.held, view.tenant, view.priority, view.qos, view.submitted_at,
            held.started_at, held.attained, view.estimated_seconds, view.cpu_milli, view.host_memory,
            place.node, place.gpus, held.paused, view.preemptions, held.share, held.since, view.stints,
            view.group, suspended=True, suspended_bytes=held.host_bytes,
            suspended_model=self.nodes[held.pos].gpus[place.gpus[0]].model,
            suspended_gpu=(place.node, place.gpus[0]),
        )
        self._running_tuple = None


def _gpus_wanted(request: Resources) -> int:
    """How many GPUs a placement of ``request`` holds, as framework.options offers them: none for
    a CPU-only job, one for a share, a turn or a MIG slice, else the whole GPUs it asks."""
    if not (request.gpus or request.gpu_milli or request.mig_profile):
        return 0
    return 1 if request.gpu_milli or request.mig_profile or request.timeslice or request.executor else request.gpus


def _unsuspended(view: JobView) -> JobView:
    return replace(view, suspended=False, suspended_bytes=0, suspended_model="", suspended_gpu=None)


def _with_gpu(node: NodeView, gpu: GpuView) -> NodeView:
    return replace(node, gpus=tuple(gpu if g.index == gpu.index else g for g in node.gpus))
