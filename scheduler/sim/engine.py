"""The discrete-event simulator: replays a trace through :func:`gpuos.scheduler.schedule`.

Events are arrivals, completions, periodic rounds (``policy.period``), GPU failures and repairs.
After the events of one instant the simulator builds a snapshot (rebuilding only the nodes that
changed, and keeping running jobs' views from their start) and runs a round; it applies the
decisions, checking each again against its own state, so a decision the framework should never
have made stops the run with :class:`SimulationError` instead of corrupting the result.

Models (numbers and sources in docs/scheduler.md):

- progress: a job needs ``duration`` seconds of work at rate 1 (alone on what it asked for);
- MPS shares: a share on a GPU with others runs at 1 / (1 + interference x their GPU share);
- time-slicing: k > 1 sharers of a GPU each get weight / total weight of it, less the context
  switch cost per quantum: rate x quantum / (quantum + switch cost);
- MIG slices and whole GPUs are isolated: rate 1;
- preemption: a preempted job keeps its progress (checkpointed) and pays ``preemption_cost``
  seconds of extra work when it resumes;
- failures: GPUs fail as a Poisson process; the jobs on a failed GPU are requeued as if
  preempted; the GPU comes back after ``repair_seconds``.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from dataclasses import dataclass, field, replace

from gpuos.scheduler.fragmentation import Fragmentation, workload
from gpuos.scheduler.framework import _take, gpu_fits, schedule
from gpuos.scheduler.index import NodeIndex
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.preemption import release
from gpuos.scheduler.sim.traces import Trace, TraceJob
from gpuos.scheduler.snapshot import MILLI, GpuView, JobView, NodeView, Place, Preempt, Snapshot

# Rounds at one instant: a round that preempts frees capacity, so one more round places the
# job that asked for it; the cap stops a policy that preempts and re-places forever.
MAX_ROUNDS_PER_INSTANT = 3

_FINISH, _REPAIR, _FAIL, _TICK = range(4)


class SimulationError(RuntimeError):
    """A decision that breaks the cluster's rules (over-commit, unknown job, ...)."""


@dataclass(frozen=True)
class SimConfig:
    interference: float = 0.1
    context_switch: float = 0.001
    preemption_cost: float = 30.0
    failures_per_gpu_hour: float = 0.0
    repair_seconds: float = 3600.0
    # Stop at this simulated time (jobs still queued or running then count as unfinished).
    horizon: float = math.inf
    # Check every GPU's accounting after every instant (slow; for tests).
    check_invariants: bool = False


@dataclass
class JobRecord:
    """What happened to one job; the simulator's private truth plus what metrics need."""

    job: TraceJob
    remaining: float
    first_start: float | None = None
    finish: float | None = None
    preemptions: int = 0
    attained: float = 0.0
    # While running:
    node: int = -1
    place: Place | None = None
    started: float = 0.0
    rate: float = 0.0
    since: float = 0.0
    version: int = 0
    quantum: float = 0.0


@dataclass
class Timeline:
    """Cluster state after each instant, for time-averaged metrics and plots."""

    times: list[float] = field(default_factory=list)
    allocated: list[float] = field(default_factory=list)  # share of healthy GPU capacity
    fragmented: list[float] = field(default_factory=list)  # share unusable by fragmentation
    queued: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)


@dataclass
class Outcome:
    records: list[JobRecord]
    timeline: Timeline
    rounds: int
    failures: int
    capacity: int  # GPUs


def _share(place: Place) -> float:
    """GPUs' worth of service a placement earns per second (as the daemon counts it)."""
    return place.milli / MILLI if place.sharing in ("mps", "timeslice") else float(len(place.gpus))


class Simulator:
    def __init__(self, trace: Trace, policy: Policy, seed: int = 0, config: SimConfig | None = None) -> None:
        self.trace = trace
        self.policy = policy
        self.config = config or SimConfig()
        self.rng = random.Random(f"sim/{seed}")
        self.nodes: list[NodeView] = [
            NodeView(
                spec.name,
                tuple(
                    GpuView(i, g.name, g.memory, g.memory, uuid=f"{spec.name}/{i}", mig_profiles=g.mig_profiles)
                    for i, g in enumerate(spec.gpus)
                ),
                spec.cpu_milli,
                spec.host_memory,
            )
            for spec in trace.nodes
        ]
        self.node_pos = {n.name: i for i, n in enumerate(self.nodes)}
        self.index = NodeIndex(self.nodes)
        self.records = {j.id: JobRecord(j, j.duration) for j in trace.jobs}
        self.pending: dict[str, JobView] = {}
        self.running: dict[str, JobView] = {}
        self.heap: list[tuple[float, int, int, str, int]] = []
        self.seq = 0
        self.timeline = Timeline()
        self.rounds = 0
        self.failures = 0
        self.repairs = 0
        self.dirty = False
        self._tick_at = math.inf
        self.capacity = sum(len(n.gpus) for n in self.nodes)
        self.frag = Fragmentation(workload((j.request, j.cpu_milli) for j in trace.jobs))
        self._node_frag = [self.frag.node(n) for n in self.nodes]
        self._node_alloc = [self._allocated(n) for n in self.nodes]
        self._node_health = [sum(g.healthy for g in n.gpus) for n in self.nodes]
        self._frag_total = sum(self._node_frag)
        self._alloc_total = sum(self._node_alloc)
        self._healthy_total = sum(self._node_health)
        self._nodes_tuple: tuple[NodeView, ...] | None = None
        self._pending_tuple: tuple[JobView, ...] | None = None
        self._running_tuple: tuple[JobView, ...] | None = None

    # -- bookkeeping ----------------------------------------------------------------------------

    @staticmethod
    def _allocated(node: NodeView) -> int:
        total = 0
        for g in node.gpus:
            if g.jobs and g.sharing in ("", "timeslice"):
                total += MILLI
            elif g.healthy:
                total += MILLI - g.milli_free
        return total

    def _set_node(self, pos: int, node: NodeView) -> None:
        self.nodes[pos] = node
        self.index.update(pos, node)
        frag = self.frag.node(node)
        alloc = self._allocated(node)
        health = sum(g.healthy for g in node.gpus)
        self._frag_total += frag - self._node_frag[pos]
        self._alloc_total += alloc - self._node_alloc[pos]
        self._healthy_total += health - self._node_health[pos]
        self._node_frag[pos], self._node_alloc[pos], self._node_health[pos] = frag, alloc, health
        self._nodes_tuple = None

    def _push(self, time: float, kind: int, key: str = "", version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (time, self.seq, kind, key, version))

    def snapshot(self, now: float) -> Snapshot:
        if self._nodes_tuple is None:
            self._nodes_tuple = tuple(self.nodes)
            self.index.nodes = self._nodes_tuple
        if self._pending_tuple is None:
            self._pending_tuple = tuple(self.pending.values())
        if self._running_tuple is None:
            self._running_tuple = tuple(self.running.values())
        return Snapshot(now, self._nodes_tuple, self._pending_tuple, self._running_tuple, self.index)

    def _pending_view(self, rec: JobRecord, now: float) -> JobView:
        return self._view(rec)

    def _view(self, rec: JobRecord, place: Place | None = None, started_at: float | None = None) -> JobView:
        """The job as a policy sees it: waiting, or running on ``place`` since ``started_at``.
        (Built whole rather than with dataclasses.replace, which costs three times as much per start.)"""
        job = rec.job
        return JobView(
            id=job.id,
            request=job.request,
            tenant=job.tenant,
            priority=job.priority,
            qos=job.qos,
            submitted_at=job.arrival,
            started_at=started_at,
            attained_service=rec.attained,
            estimated_seconds=job.estimate,
            cpu_milli=job.cpu_milli,
            host_memory=job.host_memory,
            node=place.node if place is not None else "",
            gpus=place.gpus if place is not None else (),
            preemptions=rec.preemptions,
            service_rate=_share(place) if place is not None else 0.0,
        )

    def _enqueue(self, rec: JobRecord, now: float) -> None:
        self.pending[rec.job.id] = self._pending_view(rec, now)
        self._pending_tuple = None
        self.dirty = True

    # -- progress -------------------------------------------------------------------------------

    def _advance(self, rec: JobRecord, now: float) -> None:
        rec.remaining = max(0.0, rec.remaining - (now - rec.since) * rec.rate)
        rec.since = now

    def _rate(self, rec: JobRecord) -> float:
        place = rec.place
        assert place is not None
        if place.sharing not in ("mps", "timeslice"):
            return 1.0
        node = self.nodes[rec.node]
        gpu = node.gpus[place.gpus[0]]
        if len(gpu.jobs) == 1:
            return 1.0
        others = [self.records[j] for j in gpu.jobs if j != rec.job.id]
        if place.sharing == "mps":
            load = sum(o.place.milli for o in others if o.place is not None) / MILLI
            return 1.0 / (1.0 + self.config.interference * load)
        total = place.milli + sum(o.place.milli for o in others if o.place is not None)
        q = rec.quantum
        return (place.milli / total) * q / (q + self.config.context_switch)

    def _reschedule_finish(self, rec: JobRecord, now: float) -> None:
        self._advance(rec, now)
        rec.rate = self._rate(rec)
        rec.version += 1
        if rec.rate > 0:
            self._push(now + rec.remaining / rec.rate, _FINISH, rec.job.id, rec.version)

    def _neighbours_changed(self, pos: int, gpus: tuple[int, ...], now: float, skip: str) -> None:
        node = self.nodes[pos]
        for index in gpus:
            gpu = node.gpus[index]
            if gpu.sharing in ("mps", "timeslice"):
                for job_id in gpu.jobs:
                    if job_id != skip:
                        self._reschedule_finish(self.records[job_id], now)

    # -- applying decisions ---------------------------------------------------------------------

    def _start(self, place: Place, now: float) -> None:
        view = self.pending.get(place.job_id)
        if view is None:
            raise SimulationError(f"policy {self.policy.name}: placed {place.job_id!r}, which is not pending")
        pos = self.node_pos.get(place.node)
        if pos is None:
            raise SimulationError(f"policy {self.policy.name}: placed {place.job_id!r} on unknown node {place.node!r}")
        node = self.nodes[pos]
        try:
            gpus = tuple(node.gpus[i] for i in place.gpus)
        except IndexError:
            raise SimulationError(f"placement {place} names a GPU the node lacks") from None
        if view.cpu_milli > node.cpu_milli_free or view.host_memory > node.host_memory_free:
            raise SimulationError(f"placement {place} over-commits CPU or host memory of {place.node}")
        if len(set(place.gpus)) != len(place.gpus) or not all(gpu_fits(view.request, g) for g in gpus):
            raise SimulationError(f"placement {place} over-commits a GPU of {place.node}")
        if len(gpus) != max(1, view.request.gpus) and (view.request.gpus or view.request.gpu_milli):
            raise SimulationError(f"placement {place} gives {len(gpus)} GPUs to a job asking {view.request.gpus}")
        new_node, derived = _take(view, node, gpus)
        if (derived.milli, derived.memory) != (place.milli, place.memory):
            raise SimulationError(f"placement {place} disagrees with the job's demand {derived}")
        self._set_node(pos, new_node)
        del self.pending[place.job_id]
        self._pending_tuple = None
        rec = self.records[place.job_id]
        rec.node, rec.place, rec.started, rec.since = pos, derived, now, now
        if rec.first_start is None:
            rec.first_start = now
        rec.quantum = self.policy.quantum(view, self.snapshot(now)) if derived.sharing == "timeslice" else 0.0
        self.running[place.job_id] = self._view(rec, derived, started_at=now)
        self._running_tuple = None
        self._reschedule_finish(rec, now)
        self._neighbours_changed(pos, place.gpus, now, place.job_id)

    def _release(self, rec: JobRecord, now: float) -> None:
        """Take ``rec``'s job off its GPUs (finished, preempted or failed)."""
        place = rec.place
        assert place is not None
        self._advance(rec, now)
        rec.attained += (now - rec.started) * _share(place)
        job_id = rec.job.id
        job = rec.job
        new_node = release(self.nodes[rec.node], job_id, job.request, place.gpus, job.cpu_milli,
                           job.host_memory, place.mig_slot)
        pos = rec.node
        self._set_node(pos, new_node)
        del self.running[job_id]
        self._running_tuple = None
        rec.version += 1
        rec.place, rec.node, rec.rate = None, -1, 0.0
        self._neighbours_changed(pos, place.gpus, now, job_id)
        self.dirty = True

    def _preempt(self, job_id: str, now: float) -> None:
        rec = self.records.get(job_id)
        if rec is None or job_id not in self.running:
            raise SimulationError(f"policy {self.policy.name}: preempted {job_id!r}, which is not running")
        self._release(rec, now)
        rec.preemptions += 1
        rec.remaining += self.config.preemption_cost
        self._enqueue(rec, now)

    # -- the loop -------------------------------------------------------------------------------

    def _round(self, now: float) -> None:
        for _ in range(MAX_ROUNDS_PER_INSTANT):
            if not self.pending:
                return
            self.rounds += 1
            decisions = schedule(self.snapshot(now), self.policy)
            preempted = False
            for decision in decisions:
                if isinstance(decision, Place):
                    self._start(decision, now)
                elif isinstance(decision, Preempt):
                    self._preempt(decision.job_id, now)
                    preempted = True
            if not preempted:
                return

    def _fail(self, now: float) -> None:
        self._push(now + self.rng.expovariate(self._failure_rate()), _FAIL)
        pos = self.rng.randrange(len(self.nodes))
        node = self.nodes[pos]
        if not node.gpus:
            return
        index = self.rng.randrange(len(node.gpus))
        if not node.gpus[index].healthy:
            return
        self.failures += 1
        for job_id in node.gpus[index].jobs:
            self._preempt(job_id, now)
        node = self.nodes[pos]
        self._set_node(pos, replace(node, gpus=tuple(replace(g, healthy=False) if g.index == index else g for g in node.gpus)))
        self._push(now + self.config.repair_seconds, _REPAIR, node.name, index)
        self.repairs += 1

    def _repair(self, name: str, index: int) -> None:
        self.repairs -= 1
        pos = self.node_pos[name]
        node = self.nodes[pos]
        self._set_node(pos, replace(node, gpus=tuple(replace(g, healthy=True) if g.index == index else g for g in node.gpus)))
        self.dirty = True

    def _failure_rate(self) -> float:
        return self.config.failures_per_gpu_hour * self.capacity / 3600.0

    def run(self) -> Outcome:
        # A run allocates millions of short-lived views that plain reference counting frees;
        # the cycle collector would only rescan the long-lived records and nodes, over and over
        # (a tenth of a 100,000-job run). Restored afterwards, so callers keep their setting.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if collecting:
                gc.enable()

    def _run(self) -> Outcome:
        arrivals = sorted(self.trace.jobs, key=lambda j: (j.arrival, j.id))
        next_arrival = 0
        if self.config.failures_per_gpu_hour > 0 and self.capacity:
            self._push(self.rng.expovariate(self._failure_rate()), _FAIL)
        period = self.policy.period
        # Something can still change while jobs arrive, run, or wait for a repaired GPU; a queue
        # with none of those is stuck for good (its jobs fit nowhere) and ends the run.
        while next_arrival < len(arrivals) or self.running or self.repairs:
            while self.heap and self.heap[0][2] == _FINISH and self.heap[0][4] != self.records[self.heap[0][3]].version:
                heapq.heappop(self.heap)
            now = min(
                arrivals[next_arrival].arrival if next_arrival < len(arrivals) else math.inf,
                self.heap[0][0] if self.heap else math.inf,
                self._tick_at,
            )
            if now == math.inf or now > self.config.horizon:
                break
            while next_arrival < len(arrivals) and arrivals[next_arrival].arrival <= now:
                self._enqueue(self.records[arrivals[next_arrival].id], now)
                next_arrival += 1
            while self.heap and self.heap[0][0] <= now:
                _, _, kind, key, version = heapq.heappop(self.heap)
                if kind == _FINISH:
                    rec = self.records[key]
                    if version == rec.version:
                        self._release(rec, now)
                        rec.finish = now
                        rec.remaining = 0.0
                elif kind == _FAIL:
                    self._fail(now)
                elif kind == _REPAIR:
                    self._repair(key, version)
            tick = now >= self._tick_at
            if tick:
                self._tick_at = math.inf
            if self.pending and (self.dirty or tick):
                self.dirty = False
                self._round(now)
            # Time alone matters to a policy only while something runs (its service grows).
            if period > 0 and self.pending and self.running and self._tick_at == math.inf:
                self._tick_at = now + period
            if self.config.check_invariants:
                self.check(now)
            self._sample(now)
        return Outcome(list(self.records.values()), self.timeline, self.rounds, self.failures, self.capacity)

    def _sample(self, now: float) -> None:
        t = self.timeline
        capacity = max(1, self._healthy_total) * MILLI
        if t.times and t.times[-1] == now:
            t.times.pop()
            t.allocated.pop()
            t.fragmented.pop()
            t.queued.pop()
            t.running.pop()
        t.times.append(now)
        t.allocated.append(self._alloc_total / capacity)
        t.fragmented.append(self._frag_total / capacity)
        t.queued.append(len(self.pending))
        t.running.append(len(self.running))

    def check(self, now: float) -> None:
        """Raise :class:`SimulationError` if any GPU or node is over-committed or a job is lost."""
        for node in self.nodes:
            if node.cpu_milli_free < 0 or node.host_memory_free < 0:
                raise SimulationError(f"t={now}: {node.name} over-committed CPU or host memory")
            for gpu in node.gpus:
                if gpu.milli_free < 0 or gpu.memory_free < 0 or gpu.mig_slices_used > 7:
                    raise SimulationError(f"t={now}: {node.name} GPU {gpu.index} over-committed: {gpu}")
                whole = [j for j in gpu.jobs if self.records[j].place is not None and self.records[j].place.sharing == ""]  # type: ignore[union-attr]
                if whole and len(gpu.jobs) > 1:
                    raise SimulationError(f"t={now}: {node.name} GPU {gpu.index} shares an exclusive GPU: {gpu.jobs}")
        arrived = sum(1 for r in self.records.values() if r.job.arrival <= now)
        finished = sum(1 for r in self.records.values() if r.finish is not None)
        if arrived != finished + len(self.pending) + len(self.running):
            raise SimulationError(
                f"t={now}: {arrived} arrived but {finished} finished, {len(self.pending)} queued, {len(self.running)} running"
            )
