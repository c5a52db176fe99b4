"""The control loop: the one place where the daemon's parts are driven, in order, under one lock.

Each round calls, in turn: the job lifecycle (reap the ended, stop what must stop), device health
(faults and memory overruns, acted on through the lifecycle), scheduling (snapshot -> the active
policy -> starts and preemptions) and the time-slice turns. Partitions are made and given back as
jobs start and end; reservations for the device plugin come in from the API between rounds.

Data flows one way: the store says what jobs exist, the scheduler framework (with the active
policy) decides, this loop applies the decisions through the partition mechanisms, the runtime
and the device backend, and records every transition in the store before or as it takes effect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpuos.daemon.cluster import Cluster
from gpuos.daemon.colocation import Colocation
from gpuos.daemon.deploy import Deployment
from gpuos.daemon.health import Health
from gpuos.daemon.lifecycle import Lifecycle
from gpuos.daemon.partitioning import Partitions
from gpuos.daemon.reservations import Reservations, rank
from gpuos.daemon.shadow import Shadow
from gpuos.daemon.turns import Turns
from gpuos.devices.backend import DeviceBackend, DeviceInfo
from gpuos.draining import DrainPlan, Occupant, can_move, plan_drain
from gpuos.groups import GROUP_BUDGET, budget_left, over_budget
from gpuos.guard import GuardSpec, Switch
from gpuos.jobs import Job, JobSpec, JobState, KernelProgress, PartitionKind, Reason, Resources
from gpuos.partitions.residency import Residency, Resident, plan_residency
from gpuos.partitions.timeslice import Turn
from gpuos.policy_choice import PolicyChoice
from gpuos.runtime.process import ProcessRuntime
from gpuos.scheduler import Place, Policy, Preempt, Snapshot, schedule
from gpuos.scheduler.explain import WaitReason, WaitReasons, explain
from gpuos.scheduler.state import Cadence

if TYPE_CHECKING:
    from gpuos.daemon.metrics import DaemonMetrics
    from gpuos.store import Store

log = logging.getLogger("gpuos.controller")

# Rounds run after every change, and as often as the policy's ``period`` asks while jobs wait and
# others run (the shared model's Cadence, the same in the simulator). They run at most this often: a burst of submits then costs one round, not one per submit,
# which keeps round time (it grows with the queue) from crowding out the API threads.
MIN_ROUND_GAP = 0.05
# ... and a round that took d seconds is followed by at least ROUND_DUTY * d of rest: with a deep
# queue a round holds the interpreter for tens of ms, and back-to-back rounds would make every
# API call wait behind them (measured: p99 tripled under one tenant's submit flood).
ROUND_DUTY = 4.0


class Controller:
    """Runs the control loop over the job lifecycle, partitions, health, reservations and scheduling."""

    def __init__(
        self,
        store: Store,
        backend: DeviceBackend,
        runtime: ProcessRuntime,
        policy: Policy,
        *,
        state_dir: Path,
        tick: float = 0.25,
        kill_grace: float = 5.0,
        metrics: DaemonMetrics | None = None,
        health_failures_before_lost: int = 3,
        memory_oversubscription: float = 1.0,
        choice: PolicyChoice | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.runtime = runtime
        self.policy = policy
        self.tick = tick
        self.metrics = metrics
        self.devices: list[DeviceInfo] = backend.devices()
        # Beside the state dir, not in it: MPS clients are the jobs, running as their users, and
        # must reach the control daemon's pipe directory; the state dir is private.
        self.partitions = Partitions(backend, self.devices, state_dir.parent / f"{state_dir.name}-mps",
                                     executor_root=state_dir.parent / f"{state_dir.name}-executor")
        self.mps = self.partitions.mps
        self.health = Health(backend, self.devices, self.partitions, health_failures_before_lost)
        self.turns = Turns()
        # Time-shared GPUs where a sharer about to start waits for room (its neighbours' memory
        # being suspended for it), by GPU index: the job waiting.
        self._room_wanted: dict[int, str] = {}
        # Detected once, at start: whether jobs here can be suspended to host memory.
        self.suspend_support = backend.suspend_support()
        # Time-sharers' limits may add up past a GPU's memory only where jobs can be suspended;
        # the turns then keep the resident set within the GPU (gpuos.partitions.residency).
        self.oversubscribed = self.suspend_support.supported and memory_oversubscription > 1.0
        # The scheduler's model of this machine, the one the simulator drives too.
        self.cluster = Cluster(self.devices, self.suspend_support, memory_oversubscription)
        self.lifecycle = Lifecycle(
            store, runtime, backend, self.devices, self.partitions, self.turns, self.cluster,
            default_cwd=str(state_dir), kill_grace=kill_grace, metrics=metrics, capacity_freed=self._capacity_freed,
            wake=self.wake,
        )
        self.reservations = Reservations(store, self.lifecycle, self.devices)
        self.colocation = Colocation(store, runtime, self.lifecycle)
        self._lock = threading.RLock()
        # ``choice`` names ``policy`` (a policy file's text with it); policy switches, guarded
        # deploys and their rollbacks go through the deployment, a shadow candidate beside it.
        self.deployment = Deployment(store, choice or PolicyChoice(policy.name), policy, self._apply_policy,
                                     self._lock, metrics)
        self.shadow = Shadow(store, metrics)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_decision_seconds = 0.0
        self.decisions_made = 0
        self._dirty = True
        self._last_round = 0.0
        self.last_step = time.time()
        # Why each pending job waits, as of the latest round; replaced whole each round, so the
        # API reads it without the lock.
        self._waiting = WaitReasons()
        self._decided: Snapshot | None = None
        # The store's change version the model last followed (0: not yet; sync it all).
        self._model_version = 0
        # When the nearest group budget will be spent at its members' present rates (None: none).
        self._budget_due: float | None = None

    # -- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="gpuos-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling. Running jobs keep running: a restarted daemon re-attaches them."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.colocation.close()  # throttled jobs run on while gpuosd is away
        # A transfer in flight is waited for and recorded: a half-recorded suspend would leave a
        # stopped process that a restarted gpuosd takes for a running one.
        self.lifecycle.transfers.close()
        with self._lock:
            self.lifecycle.collect_transfers()

    def alive(self, now: float, within: float) -> bool:
        """Whether the loop finished a round in the last ``within`` seconds (for the watchdog)."""
        return self._thread is not None and self._thread.is_alive() and now - self.last_step < within

    def wake(self) -> None:
        """Something changed (a submit, a cancel, a policy): run a round soon."""
        self._dirty = True
        self._wake.set()

    def _capacity_freed(self) -> None:
        self._dirty = True  # the next round is due at once, without waking the loop early

    def _apply_policy(self, policy: Policy) -> None:
        # The deployment's callback: it records each switch first (deploy is the way to switch).
        with self._lock:
            self.policy = policy
        self.wake()

    def deploy(self, choice: PolicyChoice, policy: Policy, guard: GuardSpec | None = None) -> Switch:
        """Make ``policy`` active (durably, as an event), watched by ``guard`` when given."""
        with self._lock:
            return self.deployment.set(choice, policy, guard, time.time())

    def start_shadow(self, choice: PolicyChoice, policy: Policy) -> None:
        """Compute ``policy``'s decisions each round beside the active policy's, applying none."""
        with self._lock:
            self.shadow.start(choice, policy, time.time())

    def stop_shadow(self) -> None:
        with self._lock:
            self.shadow.stop()

    def cadence(self) -> Cadence:
        return Cadence.of(self.policy.period, MIN_ROUND_GAP)

    def _next_round(self) -> float | None:
        """When a round is due: soon after a change, else when the policy's period says."""
        if self._dirty:
            return self._last_round + self._round_gap()
        state = self.cluster.state
        return self.cadence().next_round(self._last_round, bool(state.pending), bool(state.running))

    def _loop(self) -> None:
        while not self._stop.is_set():
            timeout = self.tick
            deadline = self.turns.deadline()
            if self._budget_due is not None:
                deadline = self._budget_due if deadline is None else min(deadline, self._budget_due)
            due = self._next_round()
            if due is not None:
                deadline = due if deadline is None else min(deadline, due)
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.time()))
            self._wake.wait(timeout)
            self._wake.clear()
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                log.exception("control loop round failed")

    def step(self) -> None:
        """One round: reap, stop what must stop, check devices, schedule, rotate turns."""
        with self._lock:
            self.lifecycle.reap()
            self.lifecycle.collect_transfers()
            self._enforce_budgets()
            self.lifecycle.drive_stops()
            self._check_health()
            self._schedule()
            self._rotate_turns()
            self.colocation.round(time.time())
        # Outside the lock: the guard's read of the store must not hold up the API (it takes
        # the lock itself to switch back).
        self.deployment.watch_round(time.time())
        self.last_step = time.time()

    def recover(self) -> None:
        """Reconcile the store with the processes that exist after a (re)start, and the model with both."""
        with self._lock:
            self.cluster.sync(self.store.active(), time.time())
            self.lifecycle.recover()
            self._model_version = 0
            self._sync_model(time.time())

    # -- job groups -----------------------------------------------------------------------------

    def service_of(self, job: Job) -> float:
        """GPU-seconds ``job`` has had up to now, by the model (running jobs' service grows)."""
        return self.cluster.attained(job, time.time())

    def _enforce_budgets(self) -> None:
        """End each open group whose members' GPU-seconds reached its budget (gpuos/groups.py).

        Checked every round, and the loop also wakes at the instant the running members' service,
        at their present rates, will reach the nearest budget (``_budget_due``; the simulator stops
        a group at that instant too): a group overshoots by what its members earn while they are
        stopped (the kill grace at most). A member's end is applied by the store itself.
        """
        self._budget_due = None
        budgeted = [g for g in self.store.open_groups() if g.spec.budget > 0]
        if not budgeted:
            return
        now = time.time()
        self._sync_model(now)
        state = self.cluster.state
        for group in budgeted:
            key = (group.tenant, group.name)
            # The unfinished members' service, by the model: a requeued member's counts too.
            if over_budget(group, state.members_service(key, now)):
                log.info("group %s of %s spent its budget of %g GPU-seconds; stopping its members",
                         group.name, group.tenant, group.spec.budget)
                self.store.end_group(group.tenant, group.name, GROUP_BUDGET)
                self._dirty = True
                continue
            rate = sum(held.share for m in state.members(*key) if (held := state.holding(m)) is not None)
            if rate > 0:
                due = now + budget_left(group, state.members_service(key, now)) / rate
                self._budget_due = due if self._budget_due is None else min(self._budget_due, due)

    def _begin_stop(self, job: Job, state: JobState, reason: str, message: str) -> None:
        self.lifecycle.begin_stop(job, state, reason, message)

    # -- health ---------------------------------------------------------------------------------

    def _check_health(self) -> None:
        now = time.time()
        if not self.health.due(now):
            return
        active = [j for j in self.store.placed() if j.placement is not None]
        findings = self.health.check(now, active)
        self.partitions.stop_idle_mps(now)
        self.partitions.stop_idle_executors(now)
        foreign = dict(self.partitions.foreign_slices)
        self.partitions.survey(active)
        self.cluster.set_health(self.health.healthy)
        self.cluster.set_foreign_instances(self.partitions.foreign_slices)
        if findings.changed or foreign != self.partitions.foreign_slices:
            self._dirty = True
        for fault in findings.faults:
            # The policy says whether a job that lost its GPU is requeued or failed (as in the simulator).
            requeue = self.policy.requeue_after_fault(self.cluster.view(fault.job))
            self.lifecycle.stop_for_fault(fault, requeue)
        for over in findings.overruns:
            self.lifecycle.stop_over_memory(over)

    def check_now(self) -> None:
        """Look at the devices at once (after an injected fault) instead of at the next interval."""
        with self._lock:
            self.health.sample_next_round()
            self._check_health()
        self.wake()

    def crash_mps_daemon(self, index: int) -> None:
        """Kill GPU ``index``'s MPS control daemon, as a crash would."""
        with self._lock:
            self.partitions.kill_mps_daemon(index)
        self.partitions.await_mps_gone(index)

    # -- scheduling -----------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> Snapshot:
        """What the policy sees: the model's devices, with their free shares and sharing mode, and the queue."""
        now = time.time() if now is None else now
        with self._lock:
            self._sync_model(now)
            return self.cluster.snapshot(now)

    def _sync_model(self, now: float) -> None:
        """Bring the model up to the store: only the records changed since the last sync, or all
        of them when the change log no longer reaches back (or nothing was synced yet)."""
        version, changed = self.store.changed_since(self._model_version)
        if changed is None or not self._model_version:
            self.cluster.sync(self.store.active(), now)
        else:
            self.cluster.apply(changed, now)
        self._model_version = version
        self.cluster.sync_groups(self.store.open_groups())

    def decide(self) -> list[Place | Preempt]:
        """The active policy's decisions for the current state (no side effects)."""
        started = time.perf_counter()
        self._decided = self.snapshot()
        decisions = schedule(self._decided, self.policy)
        self.last_decision_seconds = time.perf_counter() - started
        self.decisions_made += 1
        if self.metrics is not None:
            self.metrics.decision.observe(self.last_decision_seconds)
        return decisions

    def _round_gap(self) -> float:
        return max(MIN_ROUND_GAP, ROUND_DUTY * self.last_decision_seconds)

    def _schedule(self) -> None:
        now = time.time()
        due = self._next_round()
        if due is None or now < due:
            return
        self._dirty = False
        self._last_round = now
        if not self.store.has_pending():
            self._waiting = WaitReasons()
            return
        decisions = self.decide()
        snap = self._decided
        if snap is not None:
            # The shadow candidate decides on the same snapshot, before the active decisions take
            # effect (the snapshot shares the model's capacity index); its decisions are only compared.
            # Its time counts in the round's cost, so the gap between rounds grows with it.
            shadow_began = time.perf_counter()
            self.shadow.round(snap, decisions)
            self.last_decision_seconds += time.perf_counter() - shadow_began
        for decision in decisions:
            if isinstance(decision, Place):
                quantum = 1.0
                view = self.cluster.state.pending.get(decision.job_id)  # a lookup, not a scan of the queue
                if decision.sharing == "timeslice" and snap is not None and view is not None:
                    quantum = self.policy.quantum(view, snap)
                made_room = False
                if self.oversubscribed and decision.sharing == "timeslice":
                    ready, made_room = self._room_for(decision, now)
                    if not ready:
                        # Sharers are being suspended to make room; the job starts a round later.
                        self._dirty = True
                        continue
                # A job preempted by suspension is restored there, not launched (Lifecycle.start).
                started = self.lifecycle.start(decision, quantum)
                if started is not None and made_room:
                    self.turns.give(decision.gpus[0], decision.job_id, now, quantum)
            elif not self._preempt_by_suspension(decision.job_id, snap, now):
                self.lifecycle.preempt(decision.job_id, self.policy.name)
        # After the decisions took effect: the reasons only inform, and must never hold them up.
        if self._decided is not None:
            self._waiting = explain(self._decided, self.policy, decisions)

    def _preempt_by_suspension(self, job_id: str, snap: Snapshot | None, now: float) -> bool:
        """Preempt ``job_id`` by suspending it to host memory, if its policy wants that and it can
        be (it keeps its process and progress, and resumes by restore); False: stop it instead."""
        if not self.suspend_support.supported or snap is None:
            return False
        job = self.store.active_job(job_id)
        view = self.cluster.state.view(job_id)
        if job is None or view is None or job.id in self.lifecycle.stopping or not can_move(job):
            return False
        if self.lifecycle.transferring(job_id):
            return True  # already on its way out (or back): decided by then
        if not self.policy.suspend(view, snap):
            return False
        if not self.lifecycle.suspend(job, now, requeue=True):
            return False
        if self.metrics is not None:
            self.metrics.preemptions.inc()
        return True

    def _residents(self, index: int) -> list[Resident]:
        """GPU ``index``'s time-sharers as the residency rule sees them."""
        out = []
        for job in self.store.placed():
            placement = job.placement
            if placement is None or placement.kind is not PartitionKind.TIMESLICE or index not in placement.devices:
                continue
            # A job being stopped holds its memory until its process ends; only a paused one moves.
            movable = job.state == JobState.PAUSED and job.id not in self.lifecycle.stopping and can_move(job)
            out.append(Resident(job.id, placement.granted.memory_bytes, resident=not job.suspended,
                                last_ran=self.turns.last_ran(job.id),
                                transferring=self.lifecycle.transferring(job.id), suspendable=movable))
        return out

    def _apply_residency(self, index: int, runner: str, extra: Resident | None, now: float) -> Residency:
        """Plan what GPU ``index`` needs so that ``runner`` can run, and start the moves it takes.
        ``extra``: the runner when it is not on the GPU yet (a time-sharer about to start)."""
        sharers = self._residents(index)
        if extra is not None:
            sharers.append(extra)
        residency = plan_residency(sharers, runner, self.devices[index].memory_total)
        for job_id in residency.suspend:
            job = self.store.active_job(job_id)
            if job is not None:
                self.lifecycle.suspend(job, now, requeue=False)
        if residency.restore:
            job = self.store.active_job(runner)
            if job is not None:
                self.lifecycle.restore(job, index, now)
        return residency

    def _room_for(self, place: Place, now: float) -> tuple[bool, bool]:
        """Whether time-sharer ``place.job_id`` can start on its GPU now, its memory fitting beside
        the resident set, and whether room had to be made for it (a neighbour's memory is out).
        If it cannot start yet, the sharers that make room are being suspended: paused ones first
        (least recently run); if that is not enough, the one running now, whose turn then ends
        (alone on its GPU it has no turn to end, and would otherwise hold the room until it exits)."""
        index = place.gpus[0]
        newcomer = Resident(place.job_id, place.memory)
        residency = self._apply_residency(index, place.job_id, newcomer, now)
        if residency.wait and not residency.suspend:
            sharers = self._residents(index)
            if not any(s.transferring for s in sharers):
                running = {j.id for j in self.store.placed()
                           if j.state == JobState.RUNNING and j.id not in self.lifecycle.stopping and can_move(j)}
                widened = [replace(s, suspendable=s.suspendable or s.job_id in running) for s in sharers]
                for job_id in plan_residency([*widened, newcomer], place.job_id, self.devices[index].memory_total).suspend:
                    job = self.store.active_job(job_id)
                    if job is not None and job_id in running:
                        self.lifecycle.suspend(job, now, requeue=False)
        made_room = any(not s.resident for s in self._residents(index))
        if residency.ready:
            self._room_wanted.pop(index, None)
        else:
            self._room_wanted[index] = place.job_id
        return residency.ready, made_room

    def waiting(self, job_id: str) -> WaitReason | None:
        """Why the latest round left pending job ``job_id`` unplaced; None if it placed it or never saw it."""
        return self._waiting.get(job_id)

    def _rotate_turns(self) -> None:
        """Give each time-shared GPU's turn to the job whose turn it is; pause the others."""
        now = time.time()
        snap: list[Snapshot] = []

        def quantum(job: Job) -> float:
            # The quantum the model took at the job's start (the simulator's too); asked anew only
            # for a job the model does not hold.
            held = self.cluster.holding(job.id)
            if held is not None and held.quantum > 0:
                return held.quantum
            if not snap:
                snap.append(self.snapshot(now))
            return self.policy.quantum(self.cluster.view(job), snap[0])

        planned = self.turns.plan(self.store.placed(), self.lifecycle.stopping, now, quantum)
        if planned is None:
            return
        plan, jobs = planned
        busy = self.lifecycle.transferring  # a job in transfer is neither paused nor resumed meanwhile
        for job_id in plan.pause:
            if jobs[job_id].state == JobState.RUNNING and not busy(job_id):
                self.lifecycle.pause(jobs[job_id], now)
        waiting = self._make_resident(plan.turns, plan.run, jobs, now) if self.oversubscribed else set()
        for job_id in plan.run:
            job = jobs[job_id]
            # A suspended job resumes by its restore (the lifecycle resumes it once its memory is back).
            if job.state == JobState.PAUSED and not job.suspended and job_id not in waiting and not busy(job_id):
                self.lifecycle.resume(job, now)

    def _make_resident(self, turns: Mapping[int, Turn], run: Iterable[str], jobs: Mapping[str, Job],
                       now: float) -> set[str]:
        """On each oversubscribed GPU, make its runner's memory resident (gpuos.partitions.residency):
        suspend paused sharers as needed and restore the runner if its memory is out. Returns the
        runners that must wait for that; their turns start over once they can run."""
        runners = {gpu: turn.job_id for gpu, turn in turns.items()}
        for job_id in run:  # a GPU with one sharer has no turns, only its runner
            placement = jobs[job_id].placement
            if placement is not None and placement.devices[0] not in runners:
                runners[placement.devices[0]] = job_id
        waiting: set[str] = set()
        for gpu, runner in runners.items():
            wanted = self._room_wanted.get(gpu)
            if wanted is not None:
                job = self.store.active_job(wanted)
                if job is not None and job.state == JobState.PENDING:
                    # The room being made is for a time-sharer about to start: bringing the runner
                    # back now would undo it (the start comes with the next scheduling round).
                    waiting.add(runner)
                    continue
                del self._room_wanted[gpu]
            try:
                residency = self._apply_residency(gpu, runner, None, now)
            except ValueError:
                continue  # the runner left the GPU since the plan (stopped, say)
            if not residency.ready:
                waiting.add(runner)
                self.turns.postpone(gpu, now)
        return waiting

    # -- draining -------------------------------------------------------------------------------

    def drain(self, index: int, *, undrain: bool = False, requeue: bool = False) -> DrainPlan:
        """Take GPU ``index`` out of service (gpuos.draining says what becomes of its jobs), or put
        it back with ``undrain``."""
        with self._lock:
            if undrain:
                self.cluster.set_draining(index, False)
                self.wake()
                return DrainPlan(index, message=f"GPU {index} is in service again")
            self.cluster.set_draining(index, True)
            model = self.devices[index].model
            spare = any(d.index != index and d.model == model and self.health.healthy.get(d.index, True)
                        and d.index not in self.cluster.draining for d in self.devices)
            jobs = {j.id: j for j in self.store.placed()
                    if j.placement is not None and index in j.placement.devices and j.id not in self.lifecycle.stopping}
            support = self.suspend_support
            occupants = [Occupant(j.id, can_move(j)) for j in jobs.values()]

            def planned() -> DrainPlan:
                return plan_drain(index, occupants, cross_gpu=support.supported and support.cross_gpu, spare=spare,
                                  requeue=requeue, why_not=support.detail)

            plan = planned()
            now = time.time()
            failed = {job_id for job_id in plan.migrate
                      if not self.lifecycle.transferring(job_id)
                      and not self.lifecycle.suspend(jobs[job_id], now, requeue=True)}
            if failed:
                # Those could not start moving after all: they stay or are requeued like the rest.
                occupants = [Occupant(o.job_id, o.movable and o.job_id not in failed) for o in occupants]
                plan = planned()
            for job_id in plan.requeue:
                self.lifecycle.begin_stop(jobs[job_id], JobState.PENDING, Reason.DRAINED,
                                          f"requeued: GPU {index} is draining")
            log.info("%s", plan.message)
            self.wake()
            return plan

    # -- kernel jobs' progress ------------------------------------------------------------------

    def progress_path(self, job_id: str) -> Path:
        """Where a kernel job's worker writes its progress (steps done, per-step latency)."""
        from gpuos.kernels.worker import PROGRESS_FILE

        return self.runtime.progress_dir(job_id) / PROGRESS_FILE

    def kernel_progress(self, job_id: str) -> KernelProgress | None:
        """A kernel job's latest progress as its worker wrote it; None before its first write."""
        from gpuos.kernels.worker import read_progress

        return read_progress(str(self.progress_path(job_id)))

    # -- reservations for work started elsewhere (the Kubernetes device plugin) -----------------

    def reserve(self, spec: JobSpec, owner_uid: int, uuids: tuple[str, ...]) -> tuple[Job, dict[str, str]]:
        """Hold a partition on the GPUs named for work started elsewhere (an EXTERNAL job).

        Older reservations that hold any of ``spec.reservation_keys`` are released first. Raises
        InvalidArgument for a UUID not here, ResourceExhausted, naming the holders, when the GPUs
        have no room.
        """
        indices = self.reservations.indices(uuids)
        with self._lock:
            held = self.reservations.hold(spec, owner_uid, indices, self.snapshot)
            self._dirty = True
            return held

    def release(self, keys: tuple[str, ...]) -> list[Job]:
        """End the reservations that hold any of ``keys``; those ended (none for keys no one holds)."""
        with self._lock:
            ended = self.reservations.release(keys, "released")
        if ended:
            self.wake()  # jobs waiting for the freed GPUs need not wait for the next period
        return ended

    def reservations_held(self, name_prefix: str = "") -> list[Job]:
        """The reservations held now whose name starts with ``name_prefix``."""
        return self.reservations.held(name_prefix)

    def rank(self, request: Resources, uuids: tuple[str, ...]) -> list[str]:
        """``uuids`` ordered by the active policy's score for ``request`` (fitting GPUs first)."""
        return rank(self.policy, self.snapshot(), request, uuids)
