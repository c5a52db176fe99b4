"""The discrete-event simulator: replays a trace through :func:`gpuos.scheduler.schedule`.

It drives the same cluster-state model as the daemon (:mod:`gpuos.scheduler.state`: placements,
releases, requeues, service accounting, time-slicing, costs, round cadence) and adds only the
truth the daemon never sees: each job's remaining work, and so when it finishes.

Events are arrivals, completions, rounds that time alone triggers (the model's cadence), GPU
failures and repairs. After the events of one instant the simulator runs a round on the model's
snapshot and applies the decisions through the model, which checks each against the cluster's
rules, so a decision the framework should never have made stops the run with
:class:`SimulationError` instead of corrupting the result.

Models (numbers and sources in docs/scheduler.md):

- progress: a job needs ``duration`` seconds of work at the rate the model gives it
  (:meth:`ClusterState.rate`: 1 alone; less beside MPS neighbours or among time-sharers);
- preemption: a preempted job keeps its progress (checkpointed) and pays ``preemption_cost``
  seconds of extra work when it resumes; on a cluster that can suspend (``SimConfig.suspend``)
  and where its policy says so (``Policy.suspend``), a single-GPU victim is suspended instead: it
  stops at once, holds its GPU while its memory crosses the host link (bytes /
  ``host_link_bytes_per_s``), and pays that time again to restore when it resumes, on a GPU the
  model lets it resume on;
- oversubscription (``SimConfig.oversubscription`` with ``suspend``): time-sharers' limits may
  add up past a GPU's memory, and while those taking turns do not fit together every turn moves
  its job's memory in and as much out (the rate, :meth:`ClusterState.rate`);
- atoms: a kernel job entering a GPU's executor ahead of (or level with) everyone there waits for
  the atom in flight, ``atom_seconds``; time-slice hand-overs are below the model's resolution
  (each turn's ``context_switch`` is longer than an atom);
- failures: GPUs fail as a Poisson process; the policy's ``requeue_after_fault`` says whether
  each job on a failed GPU is requeued (as if preempted) or fails, as in the daemon; the GPU
  comes back after ``repair_seconds``.

Job groups and deduplication (a trace's ``groups``, its jobs' ``group``, ``dedupe_key`` and
``succeeds``), by the rules of gpuos/groups.py, the daemon's too:

- a member ends by its duration and then succeeds or fails as its trace says; a success that
  reaches its group's goal (``after_success``) ends the group: its waiting members are
  withdrawn and its running ones stopped at that instant, with reason ``sibling-succeeded``;
- a group's GPU-seconds (its ended members' service plus its unfinished members' so far) are
  watched after every instant: the instant they will reach the budget at the members' present
  service rates is an event, so the group stops (reason ``group-budget``) at the instant it
  reaches the budget, to floating-point precision (rates change only at instants, which
  recompute it); a member arriving for an ended group stops at once, never running;
- a job whose (tenant, dedupe key) matches an earlier job that is waiting, running or
  succeeded does not run: it ends when that job ends (at once if it already succeeded) and
  with its outcome, and counts for its own group as a member with that outcome that spent
  nothing (unless it copies a member of its own group: one piece of work counts once). Keys
  match forever (the daemon's retention window is longer than a trace).

A trace without groups or dedupe keys runs exactly as it did before groups existed, and one on a
cluster without suspension (the default) as it did before suspension existed.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from gpuos.errors import InvalidArgument
from gpuos.groups import GROUP_BUDGET, Group, after_success, over_budget
from gpuos.scheduler.fragmentation import Fragmentation, workload
from gpuos.scheduler.framework import options, schedule
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import get_policy
from gpuos.scheduler.sim.cluster import node_view
from gpuos.scheduler.sim.traces import Trace, TraceJob
from gpuos.scheduler.snapshot import MILLI, Decision, GroupKey, JobView, NodeView, Place, Preempt, Snapshot
from gpuos.scheduler.state import Cadence, ClusterState, Costs, StateError

# Rounds at one instant: a round that preempts frees capacity, so one more round places the
# job that asked for it; the cap stops a policy that preempts and re-places forever.
MAX_ROUNDS_PER_INSTANT = 3

_FINISH, _REPAIR, _FAIL, _TICK, _STOPPED, _BUDGET = range(6)
# A group whose spending is within this share of its budget has reached it (floating point).
_BUDGET_SLACK = 1e-9


class SimulationError(RuntimeError):
    """A decision that breaks the cluster's rules (over-commit, unknown job, ...)."""


@dataclass(frozen=True)
class SimConfig:
    interference: float = Costs.interference
    context_switch: float = Costs.context_switch
    preemption_cost: float = Costs.preemption_cost
    start_latency: float = Costs.start_latency
    stop_latency: float = Costs.stop_latency
    # Rounds at most this often (the daemon's 50 ms, which makes a burst of events one round);
    # 0: a round at every instant that changed something.
    round_gap: float = 0.0
    failures_per_gpu_hour: float = 0.0
    repair_seconds: float = 3600.0
    # Stop at this simulated time (jobs still queued or running then count as unfinished).
    horizon: float = math.inf
    # Check every GPU's accounting after every instant (slow; for tests).
    check_invariants: bool = False
    # Suspend-to-host on every GPU of the cluster (off: the cluster as before it existed, and no
    # policy is asked Policy.suspend); with it, time-shared GPUs admit limits adding up to
    # ``oversubscription`` x their memory, and ``cross_gpu_restore`` lets a suspended job resume
    # on another GPU of its model on its node. Transfers run at ``host_link_bytes_per_s``.
    suspend: bool = False
    oversubscription: float = 1.0
    cross_gpu_restore: bool = False
    host_link_bytes_per_s: float = Costs.host_link_bytes_per_s
    atom_seconds: float = Costs.atom_seconds

    def __post_init__(self) -> None:
        if not (self.oversubscription >= 1.0 and math.isfinite(self.oversubscription)):
            raise InvalidArgument("oversubscription", f"{self.oversubscription} is below 1 (1: off)")
        if self.oversubscription > 1.0 and not self.suspend:
            raise InvalidArgument("oversubscription", "above 1 needs suspend: the resident set must be able to move")
        if not self.host_link_bytes_per_s > 0:
            raise InvalidArgument("host_link_bytes_per_s", f"{self.host_link_bytes_per_s} is not positive")
        if not self.atom_seconds >= 0:
            raise InvalidArgument("atom_seconds", f"{self.atom_seconds} is negative")

    @property
    def costs(self) -> Costs:
        return Costs(self.interference, self.context_switch, self.preemption_cost,
                     start_latency=self.start_latency, stop_latency=self.stop_latency,
                     host_link_bytes_per_s=self.host_link_bytes_per_s, atom_seconds=self.atom_seconds)


@dataclass
class JobRecord:
    """What happened to one job; the simulator's private truth plus what metrics need."""

    job: TraceJob
    remaining: float
    first_start: float | None = None
    finish: float | None = None
    preemptions: int = 0
    attained: float = 0.0
    # A fault ended it and the policy chose not to requeue it (requeue_after_fault).
    failed: bool = False
    # While running:
    place: Place | None = None
    started: float = 0.0
    rate: float = 0.0
    since: float = 0.0
    version: int = 0
    # Its outcome: whether it succeeded (a job that ran its duration, as its trace says; a
    # duplicate, as the job it duplicated), and why its group ended it ("" if it did not).
    succeeded: bool = False
    reason: str = ""
    # The job it duplicated ("" for none): it never ran, and took that job's outcome.
    duplicate_of: str = ""

    @property
    def gpu(self) -> bool:
        """Whether the job holds GPU compute: CPU-only pods stay out of every GPU metric."""
        return self.job.request.compute_milli > 0


@dataclass
class Timeline:
    """Cluster state after each instant, for time-averaged metrics and plots."""

    times: list[float] = field(default_factory=list)
    allocated: list[float] = field(default_factory=list)  # share of healthy GPU capacity
    fragmented: list[float] = field(default_factory=list)  # share unusable by fragmentation
    queued: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    # Whether a GPU job that an empty cluster could take waits (FGD's "unallocated GPU while
    # jobs wait" counts only then); empty where the source of the timeline cannot tell.
    gpu_waiting: list[bool] = field(default_factory=list)


@dataclass
class Outcome:
    records: list[JobRecord]
    timeline: Timeline
    rounds: int
    failures: int
    capacity: int  # GPUs
    # When the run stopped: the horizon if it stopped there, else its last instant (NaN: unknown,
    # read the timeline); jobs unfinished then count up to it in the GPU metrics.
    end: float = math.nan
    # The trace's job groups as they ended (or stood when the run stopped).
    groups: dict[GroupKey, Group] = field(default_factory=dict)


def resolve_policy(policy: str | Policy, trace: Trace) -> Policy:
    """A policy instance; FGD is given the trace's request distribution as its target workload
    (the paper assumes the workload is known from history, and the trace is that history)."""
    from gpuos.scheduler.policies.fgd import given_workload

    instance = get_policy(policy) if isinstance(policy, str) else policy
    return given_workload(instance, workload((j.request, j.cpu_milli) for j in trace.jobs))


Decide = Callable[[Snapshot], Sequence[Decision]]
"""One scheduling round: a snapshot to the decisions it leads to (``schedule`` with the policy, by
default; an untrusted candidate's process, for the evaluator, agents/sandbox.py)."""


class Simulator:
    """Drives the shared cluster-state model (scheduler/state.py) through a trace; what it adds is
    the truth the daemon never sees: each job's remaining work, and when it will finish.

    ``decide`` makes each round's decisions (default: :func:`schedule` with ``policy`` here); the
    model checks every one of them, wherever it was made."""

    def __init__(self, trace: Trace, policy: Policy, seed: int = 0, config: SimConfig | None = None,
                 decide: Decide | None = None) -> None:
        self.trace = trace
        self.policy = policy
        self.decide: Decide = decide if decide is not None else (lambda snap: schedule(snap, policy))
        self.config = config or SimConfig()
        self.rng = random.Random(f"sim/{seed}")
        nodes = [node_view(spec, self.config.suspend, self.config.oversubscription, self.config.cross_gpu_restore)
                 for spec in trace.nodes]
        self.cadence = Cadence.of(policy.period, self.config.round_gap)
        self._last_round = -math.inf
        # Preempted jobs whose processes are still stopping (with stop_latency): they hold their
        # GPUs until then, and a policy asking again to preempt one is not asked twice, as in the daemon.
        self.stopping: dict[str, int] = {}  # job -> the sequence number of its stop event
        # Those of them being suspended (not stopped): paused while their memory moves out.
        self._suspending: set[str] = set()
        self.records = {j.id: JobRecord(j, j.duration) for j in trace.jobs}
        self.heap: list[tuple[float, int, int, str, int]] = []
        self.seq = 0
        self.timeline = Timeline()
        self.rounds = 0
        self.failures = 0
        self.repairs = 0
        self.dirty = False
        self._tick_at = math.inf
        self._end = math.inf
        self.capacity = sum(len(n.gpus) for n in nodes)
        self.frag = Fragmentation(workload((j.request, j.cpu_milli) for j in trace.jobs))
        self._node_frag = [self.frag.node(n) for n in nodes]
        self._node_alloc = [self._allocated(n) for n in nodes]
        self._node_health = [sum(g.healthy for g in n.gpus) for n in nodes]
        self._frag_total = sum(self._node_frag)
        self._alloc_total = sum(self._node_alloc)
        self._healthy_total = sum(self._node_health)
        self._fits_empty = self._fitting_gpu_jobs(nodes)
        self.state = ClusterState(nodes, self.config.costs, on_node=self._node_changed)
        # Groups and deduplication; a trace with neither never enters their code.
        self._agentic = bool(trace.groups) or any(j.dedupe_key for j in trace.jobs)
        born: dict[GroupKey, float] = {}
        for j in trace.jobs:
            if j.group:
                born[(j.tenant, j.group)] = min(j.arrival, born.get((j.tenant, j.group), math.inf))
        self.groups: dict[GroupKey, Group] = {}
        self._group_keys: list[GroupKey] = []
        for g in trace.groups:
            key = (g.tenant, g.spec.name)
            self._group_keys.append(key)
            self._set_group(Group(g.tenant, g.spec, born.get(key, 0.0)))
        # (tenant, dedupe key) -> the waiting, running or succeeded job a duplicate takes after;
        # that job -> its duplicates waiting for it to end.
        self._dedupe: dict[tuple[str, str], str] = {}
        self._copies: dict[str, list[str]] = {}
        # Each budgeted open group's pending budget event: (when, version).
        self._budget_at: dict[int, tuple[float, int]] = {}

    # -- bookkeeping ----------------------------------------------------------------------------

    def _fitting_gpu_jobs(self, nodes: list[NodeView]) -> frozenset[str]:
        """The GPU jobs some node could take while the cluster is empty: a wait of one of them,
        unlike a job no node can hold, is the policy's to answer for."""
        shapes = list({(n.gpus, n.cpu_milli_free, n.host_memory_free): n for n in nodes}.values())
        fits: dict[tuple[object, ...], bool] = {}
        found = []
        for rec in self.records.values():
            if not rec.gpu:
                continue
            view = self._pending_view(rec, 0.0)
            key = (view.request, view.cpu_milli, view.host_memory)
            if key not in fits:
                fits[key] = any(next(options(view, n), None) is not None for n in shapes)
            if fits[key]:
                found.append(view.id)  # the id the pending queue holds it under
        return frozenset(found)

    @staticmethod
    def _allocated(node: NodeView) -> int:
        total = 0
        for g in node.gpus:
            if g.jobs and g.sharing in ("", "timeslice", "executor"):
                total += MILLI
            elif g.healthy:
                total += MILLI - g.milli_free
        return total

    def _node_changed(self, pos: int, node: NodeView) -> None:
        frag = self.frag.node(node)
        alloc = self._allocated(node)
        health = sum(g.healthy for g in node.gpus)
        self._frag_total += frag - self._node_frag[pos]
        self._alloc_total += alloc - self._node_alloc[pos]
        self._healthy_total += health - self._node_health[pos]
        self._node_frag[pos], self._node_alloc[pos], self._node_health[pos] = frag, alloc, health

    def _push(self, time: float, kind: int, key: str = "", version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (time, self.seq, kind, key, version))

    def snapshot(self, now: float) -> Snapshot:
        return self.state.snapshot(now)

    def _pending_view(self, rec: JobRecord, now: float) -> JobView:
        """The job as a policy sees it while it waits: what the daemon would know, never its duration."""
        job = rec.job
        return JobView(
            id=job.id,
            request=job.request,
            tenant=job.tenant,
            priority=job.priority,
            qos=job.qos,
            submitted_at=job.arrival,
            attained_service=rec.attained,
            estimated_seconds=job.estimate,
            cpu_milli=job.cpu_milli,
            host_memory=job.host_memory,
            preemptions=rec.preemptions,
            group=job.group,
        )

    def _enqueue(self, rec: JobRecord, now: float) -> None:
        self.state.submit(self._pending_view(rec, now))
        self.dirty = True

    # -- progress -------------------------------------------------------------------------------

    def _advance(self, rec: JobRecord, now: float) -> None:
        rec.remaining = max(0.0, rec.remaining - (now - rec.since) * rec.rate)
        rec.since = now

    def _reschedule_finish(self, rec: JobRecord, now: float) -> None:
        self._advance(rec, now)
        rec.rate = self.state.rate(rec.job.id)
        rec.version += 1
        if rec.rate > 0:
            self._push(now + rec.remaining / rec.rate, _FINISH, rec.job.id, rec.version)

    def _rates_changed(self, job_ids: list[str], now: float) -> None:
        for job_id in job_ids:
            self._reschedule_finish(self.records[job_id], now)

    # -- applying decisions ---------------------------------------------------------------------

    def _start(self, place: Place, now: float) -> None:
        view = self.state.pending.get(place.job_id)
        if view is None:
            raise SimulationError(f"policy {self.policy.name}: placed {place.job_id!r}, which is not pending")
        quantum = self.policy.quantum(view, self.snapshot(now)) if place.sharing == "timeslice" else 0.0
        try:
            neighbours = self.state.place(place, now, quantum=quantum)
        except StateError as exc:
            raise SimulationError(f"policy {self.policy.name}: {exc}") from None
        rec = self.records[place.job_id]
        rec.place, rec.started, rec.since = place, now, now
        # A restore brings back a process that never stopped (its time was charged at requeue).
        if not view.suspended:
            rec.remaining += self.config.start_latency
        # A kernel executor hands the GPU to the top priority at the next atom boundary: a job
        # that outranks (or equals) everyone there waits for the atom in flight, at most one.
        if place.sharing == "executor" and neighbours and all(
                view.priority >= held.view.priority for j in neighbours if (held := self.state.running.get(j))):
            rec.remaining += self.config.atom_seconds
        if rec.first_start is None:
            rec.first_start = now
        self._reschedule_finish(rec, now)
        self._rates_changed(neighbours, now)

    def _finish(self, rec: JobRecord, now: float) -> None:
        assert rec.place is not None
        self._advance(rec, now)
        held, neighbours = self.state.finish(rec.job.id, now)
        rec.attained = held.attained
        self._off(rec)
        self._rates_changed(neighbours, now)
        rec.finish = now
        rec.remaining = 0.0
        rec.succeeded = rec.job.succeeds
        if self._agentic:
            self._ended(rec, now)

    def _requeue(self, job_id: str, now: float, fault: bool = False, suspended: bool = False) -> None:
        """Take a running job off its GPUs and back to the queue (preempted, or its GPU failed);
        after a fault the policy says whether it is requeued at all, as in the daemon.
        ``suspended``: preempted by suspension; it pays its restore time when it runs again, not
        ``preemption_cost``."""
        rec = self.records.get(job_id)
        if rec is None or rec.place is None:
            raise SimulationError(f"policy {self.policy.name}: preempted {job_id!r}, which is not running")
        self._advance(rec, now)
        if fault and not self.policy.requeue_after_fault(self.state.view(job_id)):  # type: ignore[arg-type]
            held, neighbours = self.state.finish(job_id, now)
            rec.attained, rec.failed = held.attained, True
            self._off(rec)
            self._rates_changed(neighbours, now)
            if self._agentic:
                self._ended(rec, now)
            return
        try:
            neighbours = self.state.requeue(job_id, now, suspended=suspended)
        except StateError as exc:
            raise SimulationError(f"policy {self.policy.name}: {exc}") from None
        rec.attained = self.state.attained(job_id, now)
        rec.preemptions += 1
        if suspended:
            view = self.state.pending[job_id]
            rec.remaining += self.state.costs.transfer_seconds(view.suspended_bytes)
        else:
            rec.remaining += self.config.costs.preemption_cost
        self._off(rec)
        self._rates_changed(neighbours, now)
        self.dirty = True

    def _off(self, rec: JobRecord) -> None:
        self.stopping.pop(rec.job.id, None)
        self._suspending.discard(rec.job.id)
        rec.version += 1
        rec.place, rec.rate = None, 0.0
        self.dirty = True

    # -- groups and deduplication ---------------------------------------------------------------

    def _set_group(self, group: Group) -> None:
        """Record ``group``'s new state here and in the model (the snapshot shows it)."""
        self.groups[(group.tenant, group.name)] = group
        self.state.set_group(group)

    def _group_of(self, job: TraceJob) -> Group | None:
        return self.groups.get((job.tenant, job.group)) if job.group else None

    def _arrive(self, rec: JobRecord, now: float) -> None:
        """A job arrives: it waits, unless its group has ended or it duplicates another job."""
        job = rec.job
        if self._agentic:
            group = self._group_of(job)
            if group is not None and not group.open:
                rec.finish, rec.reason = now, group.ended_reason  # an ended group takes no new members
                return
            if job.dedupe_key:
                key = (job.tenant, job.dedupe_key)
                original = self._dedupe.get(key)
                if original is not None:
                    rec.duplicate_of = original
                    if self.records[original].finish is not None:  # it succeeded: returned at once
                        self._take_outcome(rec, self.records[original], now)
                    else:
                        self._copies.setdefault(original, []).append(job.id)
                    return
                self._dedupe[key] = job.id
        self._enqueue(rec, now)

    def _take_outcome(self, copy: JobRecord, original: JobRecord, now: float) -> None:
        """Duplicate ``copy`` ends as ``original`` did, when it did (or now, if it arrived later)."""
        copy.finish = now
        copy.succeeded, copy.reason = original.succeeded, original.reason
        group = self._group_of(copy.job)
        # A copy of its own sibling is the same work: the group counts that success once.
        if group is not None and (copy.job.tenant, copy.job.group) != (original.job.tenant, original.job.group):
            self._member_ended(group, copy, now)

    def _ended(self, rec: JobRecord, now: float) -> None:
        """After ``rec``'s job ended (its duration, a fault, or its group): its duplicates end
        with it, and its group counts its service and outcome."""
        job = rec.job
        key = (job.tenant, job.dedupe_key)
        if job.dedupe_key and not rec.succeeded and self._dedupe.get(key) == job.id:
            del self._dedupe[key]  # only a waiting, running or succeeded job absorbs duplicates
        for copy in self._copies.pop(job.id, ()):
            self._take_outcome(self.records[copy], rec, now)
        group = self._group_of(job)
        if group is not None:
            self._member_ended(group, rec, now)

    def _member_ended(self, group: Group, rec: JobRecord, now: float) -> None:
        group = replace(group, spent=group.spent + rec.attained)
        if not (rec.succeeded and group.open):
            self._set_group(group)
            return
        reason = after_success(group)
        self._set_group(replace(group, succeeded=group.succeeded + 1))
        if reason:
            self._end_group(group, reason, now)

    def _end_group(self, group: Group, reason: str, now: float) -> None:
        """``group`` has what it wanted or spent its budget: every unfinished member stops now."""
        key = (group.tenant, group.name)
        self._set_group(replace(self.groups[key], ended_reason=reason, ended_at=now))
        for job_id in self.state.members(*key):
            rec = self.records[job_id]
            if rec.place is not None:
                self._advance(rec, now)
                held, neighbours = self.state.finish(job_id, now)
                rec.attained = held.attained
                self._off(rec)
                self._rates_changed(neighbours, now)
            else:
                self.state.withdraw(job_id)
            rec.finish, rec.reason = now, reason
            self._ended(rec, now)
        # Its members still waiting for the jobs they duplicate stop too.
        for original, copies in list(self._copies.items()):
            for copy in [c for c in copies if (self.records[c].job.tenant, self.records[c].job.group) == key]:
                copies.remove(copy)
                self.records[copy].finish, self.records[copy].reason = now, reason
            if not copies:
                del self._copies[original]

    def _watch_budgets(self, now: float) -> None:
        """Schedule, for each open group with a budget, the instant its running members' service
        reaches the budget at their present rates (rates change only at instants, so this runs
        after each); a group already there stops now."""
        state = self.state
        for i, key in enumerate(self._group_keys):
            group = self.groups[key]
            budget = group.spec.budget
            if budget <= 0 or not group.open:
                continue
            members = state.members(*key)
            service = sum(state.attained(m, now) for m in members)
            if over_budget(group, service + _BUDGET_SLACK * budget):
                self._end_group(group, GROUP_BUDGET, now)
                self._tick_at = min(self._tick_at, now)  # a round at this instant for the GPUs it freed
                continue
            rate = sum(held.share for m in members if (held := state.running.get(m)) is not None)
            when = now + (budget - group.spent - service) / rate if rate > 0 else math.inf
            at, version = self._budget_at.get(i, (math.inf, 0))
            if when != at:
                self._budget_at[i] = (when, version + 1)
                if when < math.inf:
                    self._push(when, _BUDGET, str(i), version + 1)

    def _budget_due(self, index: int, version: int, now: float) -> None:
        if self._budget_at.get(index, (0.0, -1))[1] != version:
            return  # rescheduled since
        del self._budget_at[index]
        group = self.groups[self._group_keys[index]]
        if group.open:
            self._end_group(group, GROUP_BUDGET, now)

    # -- the loop -------------------------------------------------------------------------------

    def _round(self, now: float) -> None:
        for _ in range(MAX_ROUNDS_PER_INSTANT):
            if not self.state.pending:
                return
            self.rounds += 1
            decisions = self.decide(self.snapshot(now))
            preempted = False
            for decision in decisions:
                if isinstance(decision, Place):
                    self._start(decision, now)
                elif isinstance(decision, Preempt):
                    preempted |= self._preempt(decision.job_id, now)
                else:
                    raise SimulationError(f"policy {self.policy.name}: {decision!r:.80} is not a decision")
            if not preempted:
                return

    def _preempt(self, job_id: str, now: float) -> bool:
        """Preempt a running job: at once, or after ``stop_latency`` (its process stopping, still
        holding its GPUs); True if it left its GPUs now.

        Where its GPU can suspend and its policy says so (``Policy.suspend``), the job is
        suspended instead: it stops working at once and holds its GPU while its memory crosses
        the host link (bytes / ``host_link_bytes_per_s``), then waits with its progress and pays
        the same time again to restore, never ``preemption_cost``."""
        if job_id in self.stopping:
            return False
        rec = self.records.get(job_id)
        if rec is None or rec.place is None:
            raise SimulationError(f"policy {self.policy.name}: preempted {job_id!r}, which is not running")
        suspend = self._suspends(job_id, now)
        latency = self.config.stop_latency
        if suspend:
            held = self.state.holding(job_id)
            assert held is not None
            latency = self.state.costs.transfer_seconds(held.place.memory)
        if latency <= 0:
            self._requeue(job_id, now, suspended=suspend)
            return True
        if suspend:
            self._advance(rec, now)
            neighbours = self.state.pause(job_id, now)
            self._reschedule_finish(rec, now)
            self._rates_changed(neighbours, now)
            self._suspending.add(job_id)
        self._push(now + latency, _STOPPED, job_id)
        self.stopping[job_id] = self.seq
        return False

    def _suspends(self, job_id: str, now: float) -> bool:
        """Whether a preemption of running ``job_id`` suspends it: a GPU that can, a single-GPU
        job, room for its memory on the host, and its policy's yes (asked only then, so a cluster
        without suspension never asks)."""
        held = self.state.holding(job_id)
        if held is None or len(held.place.gpus) != 1:
            return False
        node = self.state.nodes[held.pos]
        if not node.gpus[held.place.gpus[0]].suspend:
            return False
        if held.place.memory > node.host_memory_free + held.view.host_memory:
            return False
        view = self.state.view(job_id)
        assert view is not None
        return bool(self.policy.suspend(view, self.snapshot(now)))

    def _fail(self, now: float) -> None:
        self._push(now + self.rng.expovariate(self._failure_rate()), _FAIL)
        nodes = self.state.nodes
        pos = self.rng.randrange(len(nodes))
        node = nodes[pos]
        if not node.gpus:
            return
        index = self.rng.randrange(len(node.gpus))
        if not node.gpus[index].healthy:
            return
        self.failures += 1
        for job_id in self.state.set_health(node.name, index, False):
            self._requeue(job_id, now, fault=True)
        self._push(now + self.config.repair_seconds, _REPAIR, node.name, index)
        self.repairs += 1

    def _repair(self, name: str, index: int) -> None:
        self.repairs -= 1
        self.state.set_health(name, index, True)
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
        state = self.state
        # Something can still change while jobs arrive, run, or wait for a repaired GPU; a queue
        # with none of those is stuck for good (its jobs fit nowhere) and ends the run.
        while next_arrival < len(arrivals) or state.running or self.repairs:
            while self.heap and self.heap[0][2] == _FINISH and self.heap[0][4] != self.records[self.heap[0][3]].version:
                heapq.heappop(self.heap)
            while self.heap and self.heap[0][2] == _BUDGET and self._budget_at.get(
                    int(self.heap[0][3]), (0.0, -1))[1] != self.heap[0][4]:
                heapq.heappop(self.heap)
            now = min(
                arrivals[next_arrival].arrival if next_arrival < len(arrivals) else math.inf,
                self.heap[0][0] if self.heap else math.inf,
                self._tick_at,
            )
            if now == math.inf or now > self.config.horizon:
                self._end = min(now, self.config.horizon)
                break
            while next_arrival < len(arrivals) and arrivals[next_arrival].arrival <= now:
                self._arrive(self.records[arrivals[next_arrival].id], now)
                next_arrival += 1
            while self.heap and self.heap[0][0] <= now:
                _, seq, kind, key, version = heapq.heappop(self.heap)
                if kind == _FINISH:
                    rec = self.records[key]
                    if version == rec.version:
                        self._finish(rec, now)
                elif kind == _STOPPED:
                    if self.stopping.get(key) == seq:
                        self._requeue(key, now, suspended=key in self._suspending)
                elif kind == _FAIL:
                    self._fail(now)
                elif kind == _REPAIR:
                    self._repair(key, version)
                elif kind == _BUDGET:
                    self._budget_due(int(key), version, now)
            tick = now >= self._tick_at
            if tick:
                self._tick_at = math.inf
            if state.pending and (self.dirty or tick):
                gap_end = self._last_round + self.cadence.min_gap
                if now < gap_end:
                    self._tick_at = min(self._tick_at, gap_end)  # coalesce, as the daemon does
                else:
                    self.dirty = False
                    self._last_round = now
                    self._round(now)
            if self._group_keys:
                self._watch_budgets(now)
            # The daemon's rule (Cadence): time alone triggers a round only while jobs wait and
            # others run (their service grows).
            if self._tick_at == math.inf:
                due = self.cadence.next_round(now, bool(state.pending), bool(state.running))
                if due is not None:
                    self._tick_at = due
            if self.config.check_invariants:
                self.check(now)
            self._sample(now)
        end = self._end if self._end < math.inf else (self.timeline.times[-1] if self.timeline.times else 0.0)
        for job_id in state.running:  # the service of jobs still running when the run stopped
            self.records[job_id].attained = state.attained(job_id, end)
        return Outcome(list(self.records.values()), self.timeline, self.rounds, self.failures, self.capacity, end,
                       dict(self.groups))

    def _sample(self, now: float) -> None:
        t = self.timeline
        capacity = max(1, self._healthy_total) * MILLI
        if t.times and t.times[-1] == now:
            t.times.pop()
            t.allocated.pop()
            t.fragmented.pop()
            t.queued.pop()
            t.running.pop()
            t.gpu_waiting.pop()
        t.times.append(now)
        t.allocated.append(self._alloc_total / capacity)
        t.fragmented.append(self._frag_total / capacity)
        t.queued.append(len(self.state.pending))
        t.running.append(len(self.state.running))
        fits = self._fits_empty
        t.gpu_waiting.append(any(j in fits for j in self.state.pending))

    def check(self, now: float) -> None:
        """Raise :class:`SimulationError` if any GPU or node is over-committed or a job is lost."""
        state = self.state
        for node in state.nodes:
            if node.cpu_milli_free < 0 or node.host_memory_free < 0:
                raise SimulationError(f"t={now}: {node.name} over-committed CPU or host memory")
            for gpu in node.gpus:
                # Oversubscribed time-sharers' limits may add up beyond the GPU's memory, by as much.
                floor = -int((gpu.oversubscription - 1) * gpu.memory_total) if gpu.oversubscription > 1 else 0
                if gpu.milli_free < 0 or gpu.memory_free < floor or gpu.mig_slices_used > 7:
                    raise SimulationError(f"t={now}: {node.name} GPU {gpu.index} over-committed: {gpu}")
                whole = [j for j in gpu.jobs if state.running[j].place.sharing == ""]
                if whole and len(gpu.jobs) > 1:
                    raise SimulationError(f"t={now}: {node.name} GPU {gpu.index} shares an exclusive GPU: {gpu.jobs}")
        arrived = sum(1 for r in self.records.values() if r.job.arrival <= now)
        ended = sum(1 for r in self.records.values() if r.finish is not None or r.failed)
        ended += sum(len(copies) for copies in self._copies.values())  # duplicates waiting on their job
        if arrived != ended + len(state.pending) + len(state.running):
            raise SimulationError(
                f"t={now}: {arrived} arrived but {ended} ended, {len(state.pending)} queued, {len(state.running)} running"
            )
