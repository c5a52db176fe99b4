"""The control loop: the one place where jobs are started, stopped, reaped, scheduled and
given their turns.

Data flows one way: the store says what jobs exist, the scheduler framework (with the active
policy) decides, this loop applies the decisions through the partition mechanisms, the runtime
and the device backend, and records every transition in the store before or as it takes effect.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpuos.devices.backend import DeviceBackend, DeviceInfo, DeviceStatus
from gpuos.errors import BackendError, FailedPrecondition, GpuosError
from gpuos.jobs import (
    Job,
    JobKind,
    JobSpec,
    JobState,
    KernelProgress,
    Partition,
    PartitionKind,
    Placement,
    Reason,
    Resources,
)
from gpuos.mig import Instance
from gpuos.partitions.memory import overruns, usage_by_group
from gpuos.partitions.mps import MpsManager
from gpuos.partitions.timeslice import Sharer, Turn, next_deadline, plan_turns
from gpuos.runtime.process import Handle, Launch, ProcessRuntime
from gpuos.scheduler import GpuView, JobView, NodeView, Place, Policy, Preempt, Snapshot, schedule
from gpuos.scheduler.explain import WaitReason, WaitReasons, explain
from gpuos.scheduler.snapshot import MILLI
from gpuos.units import format_bytes

if TYPE_CHECKING:
    from gpuos.daemon.metrics import DaemonMetrics
    from gpuos.store import Store

log = logging.getLogger("gpuos.controller")

NODE = "localhost"
HEALTH_INTERVAL = 1.0
# Policies that age jobs (LAS, priority aging) can change their minds with time alone, so a
# round runs at least this often even when nothing happened.
RESCHEDULE_INTERVAL = 1.0
# Rounds run at most this often: a burst of submits then costs one round, not one per submit,
# which keeps round time (it grows with the queue) from crowding out the API threads.
MIN_ROUND_GAP = 0.05
# ... and a round that took d seconds is followed by at least ROUND_DUTY * d of rest: with a deep
# queue a round holds the interpreter for tens of ms, and back-to-back rounds would make every
# API call wait behind them (measured: p99 tripled under one tenant's submit flood).
ROUND_DUTY = 4.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MPS_DAEMON_LOST = "mps-daemon-lost"


@dataclass
class _Stopping:
    """A job being stopped: what it becomes, why, and when SIGKILL follows SIGTERM."""

    state: JobState
    reason: str
    message: str
    kill_at: float


def kernel_command(job: Job) -> tuple[str, ...]:
    """The kernel worker's command line for a kernel job."""
    argv = [sys.executable, "-m", "gpuos.kernels.worker", "--kernel", job.spec.kernel]
    for key, value in job.spec.params:
        argv += ["--param", f"{key}={value}"]
    return tuple(argv)


def service_share(placement: Placement | None) -> float:
    """GPUs' worth of compute a placement holds while it runs (for attained service, in GPU-s)."""
    if placement is None:
        return 0.0
    granted = placement.granted
    if granted.gpu_milli and placement.kind is PartitionKind.MPS:
        return granted.gpu_milli / MILLI
    if placement.kind is PartitionKind.MIG and granted.gpu_milli:
        return granted.gpu_milli / MILLI
    return float(len(placement.devices))


def held(placement: Placement) -> tuple[int, int]:
    """(compute milli, memory bytes) a placement holds on each of its GPUs."""
    granted = placement.granted
    if placement.kind is PartitionKind.TIMESLICE:
        return 0, granted.memory_bytes  # turns share time, not the GPU's compute share
    return granted.gpu_milli or MILLI, granted.memory_bytes


class Controller:
    """Owns the scheduling loop, the job processes, the partitions and the device allocations."""

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
    ) -> None:
        self.store = store
        self.backend = backend
        self.runtime = runtime
        self.policy = policy
        self.tick = tick
        self.kill_grace = kill_grace
        self.metrics = metrics
        self.default_cwd = str(state_dir)
        self.devices: list[DeviceInfo] = backend.devices()
        # Beside the state dir, not in it: MPS clients are the jobs, running as their users, and
        # must reach the control daemon's pipe directory; the state dir is private.
        self.mps = self._mps_manager(state_dir.parent / f"{state_dir.name}-mps")
        self._healthy = {d.index: True for d in self.devices}
        # Failed health samples in a row, per GPU: one NVML hiccup must not drain a GPU.
        self.health_failures_before_lost = health_failures_before_lost
        self._failed_samples = {d.index: 0 for d in self.devices}
        self._statuses: list[DeviceStatus] = []
        self._foreign_slices: dict[int, list[Instance]] = {}
        self._last_health = 0.0
        self._stopping: dict[str, _Stopping] = {}
        self._attached: dict[str, int] = {}
        self._unrecorded: set[str] = set()  # jobs whose end the store could not record yet
        self._turns: dict[int, Turn] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_decision_seconds = 0.0
        self.decisions_made = 0
        self._dirty = True
        self._last_round = 0.0
        self.last_step = time.time()
        # Views of jobs whose record has not changed are reused: with thousands of pending jobs,
        # rebuilding every view each round would dominate the round.
        self._views: dict[str, tuple[Job, JobView]] = {}
        # Why each pending job waits, as of the latest round; replaced whole each round, so the
        # API reads it without the lock.
        self._waiting = WaitReasons()
        self._decided: Snapshot | None = None

    def _mps_manager(self, root: Path) -> MpsManager | None:
        try:
            command = self.backend.mps_control_command()
        except BackendError:
            return None
        if shutil.which(command[0]) is None:
            log.info("MPS is not available (%s not found); fractional jobs cannot be placed", command[0])
            return None
        return MpsManager(root, command, {d.index: d.uuid for d in self.devices})

    # -- lifecycle ------------------------------------------------------------------------------

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

    def alive(self, now: float, within: float) -> bool:
        """Whether the loop finished a round in the last ``within`` seconds (for the watchdog)."""
        return self._thread is not None and self._thread.is_alive() and now - self.last_step < within

    def wake(self) -> None:
        """Something changed (a submit, a cancel, a policy): run a round soon."""
        self._dirty = True
        self._wake.set()

    def set_policy(self, policy: Policy) -> None:
        with self._lock:
            self.policy = policy
        self.wake()

    def _loop(self) -> None:
        while not self._stop.is_set():
            timeout = self.tick
            deadline = next_deadline(self._turns)
            if self._dirty:
                due = self._last_round + self._round_gap()
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
            self._reap()
            self._drive_stops()
            self._check_health()
            self._schedule()
            self._rotate_turns()
        self.last_step = time.time()

    # -- recovery -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Reconcile the store with the processes that exist after a (re)start."""
        with self._lock:
            for job in self.store.active():
                if job.spec.kind == JobKind.EXTERNAL and job.state == JobState.PENDING:
                    # The daemon died inside reserve(): the caller never got its answer.
                    self.store.update(job.id, state=JobState.FAILED, reason=Reason.DAEMON_RESTART,
                                      message="gpuosd restarted before the reservation completed",
                                      finished_at=time.time())
                    continue
                if not job.state.active:
                    continue
                if job.spec.kind == JobKind.EXTERNAL:
                    self._readopt_partition(job)
                    continue
                status = self.runtime.exit_status(job.id)
                if status is not None:
                    self._finish(job, status.exit_code, status.signal, status.spawn_error)
                    continue
                handle = self.runtime.recorded_shim(job.id) or (
                    Handle(job.shim_pid, job.shim_started) if job.shim_pid else None
                )
                if handle is None or not self.runtime.shim_alive(job.id, handle):
                    # The daemon may have died after spawning the shim but before recording it:
                    # the shim's lock (or its command line, while it starts) says whether one runs.
                    handle = self.runtime.live_supervisor(job.id) or handle
                alive = handle is not None and self.runtime.shim_alive(job.id, handle)
                if not alive and self.runtime.exit_status(job.id) is None \
                        and not self.runtime.command_started(job.id):
                    # No supervisor runs it and its command was never exec'd: it never ran.
                    self._release(job)
                    self.store.update(
                        job.id, state=JobState.PENDING, placement=None, started_at=None, run_since=None,
                        shim_pid=0, shim_started=0.0, child_pid=0,
                        reason=Reason.DAEMON_RESTART, message="requeued: gpuosd stopped before starting it",
                        event="requeued",
                    )
                    continue
                if alive and handle is not None:
                    self._readopt_partition(job)
                    self.store.update(job.id, shim_pid=handle.shim_pid, shim_started=handle.shim_started,
                                      event="reattached", event_message="gpuosd restarted; job still running")
                    if job.cancel_requested:
                        self._begin_stop(job, JobState.CANCELLED, Reason.CANCELLED_BY_USER, "cancelled")
                    continue
                status = self.runtime.exit_status(job.id)
                if status is not None:
                    self._finish(job, status.exit_code, status.signal, status.spawn_error)
                else:
                    self._finalize(job, JobState.FAILED, Reason.DAEMON_RESTART,
                                   "gpuosd restarted and the job's supervisor was gone; its exit status is unknown",
                                   None)
            if self.mps is not None:
                # Control daemons whose clients all ended while gpuosd was down serve nobody now.
                self.mps.stop_unused({
                    i for j in self.store.placed() if j.placement and j.placement.kind is PartitionKind.MPS
                    for i in j.placement.devices
                })

    def _readopt_partition(self, job: Job) -> None:
        """Make sure a re-attached job's MIG instance and MPS daemon still exist."""
        placement = job.placement
        if placement is None:
            return
        index = placement.devices[0]
        if placement.kind is PartitionKind.MIG:
            if not any(i.uuid == placement.mig_uuid for i in self.backend.mig_instances(index)):
                # The simulator's instances live in gpuosd's memory; NVIDIA's persist on the GPU.
                instance = self.backend.create_mig_instance(index, placement.granted.mig_profile, placement.mig_slot)
                self.store.update(job.id, placement=replace(placement, mig_uuid=instance.uuid))
        elif placement.kind is PartitionKind.MPS and self.mps is not None:
            self.mps.ensure(index)

    # -- reaping --------------------------------------------------------------------------------

    def _reap(self) -> None:
        for job in self.store.placed():
            try:
                self._reap_one(job)
            except GpuosError as exc:
                # The store could not record it (a full disk): the job stays as it is in the
                # store and the next round tries again; the other jobs and the round go on.
                if job.id not in self._unrecorded:
                    log.warning("job %s ended but its end cannot be recorded yet (retrying each round): %s",
                                job.id, exc)
                self._unrecorded.add(job.id)
            else:
                self._unrecorded.discard(job.id)

    def _reap_one(self, job: Job) -> None:
        if job.spec.kind == JobKind.EXTERNAL:
            return  # no process of ours: it ends when it is released
        status = self.runtime.exit_status(job.id)
        if status is None:
            self._attach(job)
            if job.shim_pid and not self.runtime.shim_alive(job.id, Handle(job.shim_pid, job.shim_started)):
                status = self.runtime.exit_status(job.id)
                if status is None:
                    self._finalize(job, JobState.FAILED, Reason.SUPERVISOR_LOST,
                                   "the job's supervisor died without recording an exit status", None)
            return
        self._finish(job, status.exit_code, status.signal, status.spawn_error)

    def _attach(self, job: Job) -> None:
        if job.id in self._attached or job.placement is None:
            return
        pid = self.runtime.child_pid(job.id)
        if pid <= 0:
            return
        self._attached[job.id] = pid
        milli, memory = held(job.placement)
        for index in job.placement.devices:
            self.backend.attach(index, pid, memory, milli or job.placement.granted.gpu_milli or MILLI)
            if job.state == JobState.PAUSED:
                self.backend.set_paused(index, pid, True)
        if job.child_pid != pid:
            self.store.update(job.id, child_pid=pid)

    def _detach(self, job: Job) -> None:
        pid = self._attached.pop(job.id, 0) or job.child_pid
        if job.placement is not None and pid:
            for index in job.placement.devices:
                self.backend.detach(index, pid)
        self.runtime.forget(job.id)

    def _release(self, job: Job) -> None:
        """Give back the partition a job held: its MIG instance, its MPS daemon when unused."""
        placement = job.placement
        if placement is None:
            return
        for gpu, turn in list(self._turns.items()):
            if turn.job_id == job.id:
                del self._turns[gpu]
        index = placement.devices[0]
        if placement.kind is PartitionKind.MIG and placement.mig_uuid:
            try:
                self.backend.destroy_mig_instance(index, placement.mig_uuid)
            except BackendError as exc:
                log.warning("could not destroy MIG instance %s: %s", placement.mig_uuid, exc)
        elif placement.kind is PartitionKind.MPS and self.mps is not None:
            others = [j for j in self.store.placed() if j.id != job.id and j.placement
                      and j.placement.kind is PartitionKind.MPS and index in j.placement.devices]
            if not others:
                self.mps.stop(index)

    def _finish(self, job: Job, exit_code: int, sig: int, spawn_error: str) -> None:
        """The job's process ended; decide what that means.

        Safe to repeat: when the store cannot record the end (a full disk), the job stays RUNNING
        in the store, its exit.json stays on disk, and the next round decides the same again.
        """
        stopping = self._stopping.get(job.id)
        if stopping is not None:
            self._finalize(job, stopping.state, stopping.reason, stopping.message, exit_code)
        elif job.cancel_requested:
            self._finalize(job, JobState.CANCELLED, Reason.CANCELLED_BY_USER, "cancelled", exit_code)
        elif spawn_error:
            self._finalize(job, JobState.FAILED, Reason.SPAWN_FAILED, spawn_error, exit_code)
        elif exit_code == 0:
            self._finalize(job, JobState.SUCCEEDED, "", "", 0)
        else:
            message = f"killed by {signal.Signals(sig).name}" if sig else f"exited with code {exit_code}"
            self._finalize(job, JobState.FAILED, Reason.EXIT_NONZERO, message, exit_code)
        # Only once recorded: a retry must still know why the job was being stopped.
        self._stopping.pop(job.id, None)

    def _finalize(self, job: Job, state: JobState, reason: str, message: str, exit_code: int | None) -> None:
        self._detach(job)
        self._release(job)
        self._dirty = True  # capacity came free
        now = time.time()
        attained = job.attained_service
        if job.run_since is not None:
            attained += (now - job.run_since) * service_share(job.placement)
        if state == JobState.PENDING:
            # Back in the queue, keeping the service it has had (LAS needs it).
            self.store.update(
                job.id, state=state, reason=reason, message=message, placement=None, attained_service=attained,
                shim_pid=0, shim_started=0.0, child_pid=0, run_since=None, preemptions=job.preemptions + 1,
                event="requeued",
            )
        else:
            self.store.update(
                job.id, state=state, reason=reason, message=message, exit_code=exit_code, finished_at=now,
                attained_service=attained, run_since=None,
            )
            if self.metrics is not None:
                self.metrics.finished.labels(state.value.lower(), reason).inc()

    # -- stopping -------------------------------------------------------------------------------

    def _begin_stop(self, job: Job, state: JobState, reason: str, message: str) -> None:
        if job.id in self._stopping:
            return
        if job.spec.kind == JobKind.EXTERNAL:
            # Nothing of ours runs in it: releasing the partition is all there is to stopping it.
            if state == JobState.CANCELLED:
                state, reason, message = JobState.SUCCEEDED, Reason.RELEASED, message or "released"
            self._finalize(job, state if state != JobState.PENDING else JobState.FAILED, reason, message, None)
            return
        self._stopping[job.id] = _Stopping(state, reason, message, time.time() + self.kill_grace)
        self.runtime.signal(job.id, signal.SIGTERM)
        # A paused group would hold SIGTERM until resumed.
        self.runtime.signal(job.id, signal.SIGCONT)

    def _drive_stops(self) -> None:
        for job in self.store.placed():
            if job.cancel_requested:
                self._begin_stop(job, JobState.CANCELLED, Reason.CANCELLED_BY_USER, "cancelled")
        now = time.time()
        for job_id, stopping in list(self._stopping.items()):
            if now >= stopping.kill_at:
                self.runtime.signal(job_id, signal.SIGKILL)

    # -- devices, MPS daemons, memory limits ----------------------------------------------------

    def _check_health(self) -> None:
        now = time.time()
        if now - self._last_health < HEALTH_INTERVAL:
            return
        self._last_health = now
        self._statuses = self.backend.status()
        active = [j for j in self.store.placed() if j.placement is not None]
        held = {j.placement.mig_uuid for j in active if j.placement.mig_uuid}  # type: ignore[union-attr]
        # Slices that exist but no job of ours holds (made by an administrator, say) are never
        # torn down: the scheduler sees them as occupied.
        self._foreign_slices = {
            d.index: [Instance(m.profile, m.start) for m in self.backend.mig_instances(d.index) if m.uuid not in held]
            for d in self.devices if d.mig_capable
        }
        for status in self._statuses:
            was = self._healthy.get(status.index, True)
            healthy = self._judge(status)
            self._healthy[status.index] = healthy
            if was != healthy:
                self._dirty = True
                log.warning("GPU %d is %s", status.index, "healthy again" if healthy else "failed; draining it")
            if healthy:
                continue
            for job in active:
                if status.index in job.placement.devices:  # type: ignore[union-attr]
                    self._stop_for_fault(job, Reason.DEVICE_LOST, f"GPU {status.index} failed")
        if self.mps is not None:
            for index in self.mps.died():
                log.warning("the MPS control daemon of GPU %d died; its clients died with it", index)
                self.mps.forget(index)
                for job in active:
                    if job.placement.kind is PartitionKind.MPS and index in job.placement.devices:  # type: ignore[union-attr]
                        self._stop_for_fault(job, MPS_DAEMON_LOST, f"the MPS control daemon of GPU {index} died")
        self._enforce_memory(active)

    def _judge(self, status: DeviceStatus) -> bool:
        """Whether GPU ``status.index`` counts as healthy after this sample.

        A sample that could not be read (``sample_error``) counts against the GPU only after
        ``health_failures_before_lost`` of them in a row; a backend that knows the GPU is gone
        (the simulator's injected failure) reports it unhealthy without a sample error, and
        that counts at once.
        """
        index = status.index
        if status.sample_error:
            self._failed_samples[index] = self._failed_samples.get(index, 0) + 1
            if self._failed_samples[index] < self.health_failures_before_lost:
                log.info("GPU %d: health sample failed (%d of %d before it counts as lost): %s", index,
                         self._failed_samples[index], self.health_failures_before_lost, status.sample_error)
                return self._healthy.get(index, True)
            return False
        self._failed_samples[index] = 0
        return status.healthy

    def check_now(self) -> None:
        """Look at the devices at once (after an injected fault) instead of at the next interval."""
        with self._lock:
            self._last_health = 0.0
            self._check_health()
        self.wake()

    def crash_mps_daemon(self, index: int) -> None:
        """Kill GPU ``index``'s MPS control daemon, as a crash would."""
        with self._lock:
            if self.mps is None or not self.mps.running(index):
                raise FailedPrecondition(f"GPU {index} has no MPS control daemon running")
            os.kill(self.mps.ensure(index).pid, signal.SIGKILL)
        deadline = time.time() + 5
        while self.mps.running(index) and time.time() < deadline:
            time.sleep(0.01)

    def _stop_for_fault(self, job: Job, reason: str, message: str) -> None:
        """A fault took the job's GPU away: the policy says whether it is requeued or failed."""
        requeue = self.policy.requeue_after_fault(self._view(job, time.time()))
        if self.metrics is not None and job.id not in self._stopping:
            self.metrics.faults.labels(reason).inc()
        self._begin_stop(job, JobState.PENDING if requeue else JobState.FAILED, reason, message)

    def _enforce_memory(self, active: list[Job]) -> None:
        limits = {
            j.id: (j.child_pid, j.placement.devices, j.placement.granted.memory_bytes)  # type: ignore[union-attr]
            for j in active if j.child_pid
        }
        for over in overruns(limits, usage_by_group(self._statuses)):
            job = self.store.active_job(over.job_id)
            if job is None or job.id in self._stopping:
                continue
            log.warning("job %s uses %s on GPU %d, over its %s limit; stopping it", job.id,
                        format_bytes(over.used), over.gpu, format_bytes(over.limit))
            if self.metrics is not None:
                self.metrics.memory_kills.inc()
            self._begin_stop(job, JobState.FAILED, Reason.MEMORY_LIMIT,
                             f"used {format_bytes(over.used)} of GPU {over.gpu}, over its "
                             f"{format_bytes(over.limit)} limit")

    # -- scheduling -----------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> Snapshot:
        """What the policy sees: the devices with their free shares and sharing mode, and the queue."""
        now = time.time() if now is None else now
        milli_used = {d.index: 0 for d in self.devices}
        memory_used = {d.index: 0 for d in self.devices}
        slices_used = {d.index: 0 for d in self.devices}
        holders: dict[int, list[str]] = {d.index: [] for d in self.devices}
        sharing: dict[int, str] = {d.index: "" for d in self.devices}
        instances: dict[int, list[Instance]] = {d.index: list(self._foreign_slices.get(d.index, ())) for d in self.devices}
        pending: list[JobView] = []
        running: list[JobView] = []
        views: dict[str, tuple[Job, JobView]] = {}
        for job in self.store.active():
            cached = self._views.get(job.id)
            if cached is not None and cached[0] is job and job.run_since is None:
                view = cached[1]  # not running: nothing in its view depends on the clock
            else:
                view = self._view(job, now)
            views[job.id] = (job, view)
            if job.state == JobState.PENDING:
                pending.append(view)
                continue
            running.append(view)
            if job.placement is None:
                continue
            placement = job.placement
            milli, memory = held(placement)
            for index in placement.devices:
                milli_used[index] += milli
                memory_used[index] += memory
                holders[index].append(job.id)
                sharing[index] = placement.sharing
                if placement.kind is PartitionKind.MIG:
                    info = self.devices[index].mig_profile(placement.granted.mig_profile)
                    slices_used[index] += info.slices if info else 0
                    instances[index].append(Instance(placement.granted.mig_profile, placement.mig_slot))
        gpus = tuple(
            GpuView(
                index=d.index,
                model=d.model,
                memory_total=d.memory_total,
                memory_free=max(0, d.memory_total - memory_used[d.index]),
                milli_free=max(0, MILLI - milli_used[d.index]),
                healthy=self._healthy.get(d.index, True),
                uuid=d.uuid,
                mig_profiles=d.mig_profiles,
                mig_slices_used=slices_used[d.index],
                jobs=tuple(holders[d.index]),
                sharing="mig" if instances[d.index] else sharing[d.index],
                mig_instances=tuple(instances[d.index]),
            )
            for d in self.devices
        )
        self._views = views
        return Snapshot(now=now, nodes=(NodeView(NODE, gpus),), pending=tuple(pending), running=tuple(running))

    @staticmethod
    def _view(job: Job, now: float) -> JobView:
        attained = job.attained_service
        if job.run_since is not None:
            attained += (now - job.run_since) * service_share(job.placement)
        return JobView(
            id=job.id,
            request=job.spec.resources,
            tenant=job.spec.tenant,
            priority=int(job.spec.priority),
            qos=job.spec.qos.value,
            submitted_at=job.created_at,
            started_at=job.started_at,
            attained_service=attained,
            estimated_seconds=job.spec.estimated_seconds,
            node=NODE if job.placement else "",
            gpus=job.placement.devices if job.placement else (),
            paused=job.state == JobState.PAUSED,
            preemptions=job.preemptions,
        )

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
        since = now - self._last_round
        if since < self._round_gap() or (not self._dirty and since < RESCHEDULE_INTERVAL):
            return
        self._dirty = False
        self._last_round = now
        if not self.store.has_pending():
            self._waiting = WaitReasons()
            return
        decisions = self.decide()
        for decision in decisions:
            if isinstance(decision, Place):
                self._start(decision)
            else:
                job = self.store.active_job(decision.job_id)
                if job is not None and job.state.active and job.id not in self._stopping:
                    self._begin_stop(job, JobState.PENDING, Reason.PREEMPTED, f"preempted by policy {self.policy.name}")
                    if self.metrics is not None:
                        self.metrics.preemptions.inc()
        # After the decisions took effect: the reasons only inform, and must never hold them up.
        if self._decided is not None:
            self._waiting = explain(self._decided, self.policy, decisions)

    def _start(self, place: Place) -> None:
        job = self.store.active_job(place.job_id)
        if job is None or job.state != JobState.PENDING:
            return
        request = job.spec.resources
        if place.mig_profile:
            partition = Partition(PartitionKind.MIG, place.mig_profile)
        else:
            partition = Partition(PartitionKind(place.sharing or PartitionKind.EXCLUSIVE.value))
        placement = Placement(
            devices=place.gpus,
            device_uuids=tuple(self.devices[i].uuid for i in place.gpus),
            partition=partition,
            granted=Resources(
                gpus=len(place.gpus),
                gpu_milli=place.milli if (request.gpu_milli or place.mig_profile or request.timeslice) else 0,
                memory_bytes=place.memory,
                mig_profile=place.mig_profile,
                sharing=request.sharing,
            ),
            mig_slot=place.mig_slot,
        )
        now = time.time()
        # Write-ahead: the store says RUNNING (with its placement) before the process exists, so a
        # crash in between is seen on restart as "never started" and the job is requeued.
        try:
            job = self.store.update(job.id, expect={JobState.PENDING}, state=JobState.RUNNING, placement=placement,
                                    started_at=now, run_since=now, reason="", message="", event="started")
        except FailedPrecondition:
            return
        if self.metrics is not None:
            self.metrics.queue_wait.observe(max(0.0, now - job.created_at))
        try:
            placement, env = self._partition(placement)
            if placement != job.placement:
                job = self.store.update(job.id, placement=placement)
            if job.spec.kind == JobKind.EXTERNAL:
                return  # the partition is the whole of it: someone else runs the work
            handle = self.runtime.start(self._launch(job, env))
        except BackendError as exc:
            self._finalize(job, JobState.FAILED, Reason.SPAWN_FAILED, str(exc), None)
            return
        self.store.update(job.id, shim_pid=handle.shim_pid, shim_started=handle.shim_started)

    def _partition(self, placement: Placement) -> tuple[Placement, dict[str, str]]:
        """Create the job's partition (MIG instance, MPS daemon); the environment that selects it."""
        index = placement.devices[0]
        if placement.kind is PartitionKind.MIG:
            instance = self.backend.create_mig_instance(index, placement.granted.mig_profile, placement.mig_slot)
            return replace(placement, mig_uuid=instance.uuid), {"CUDA_VISIBLE_DEVICES": instance.uuid}
        env = self.backend.visible_devices_env(placement.devices)
        if placement.kind is PartitionKind.MPS:
            if self.mps is None:
                raise BackendError("MPS is not available on this machine; submit with --share timeslice instead")
            env.update(self.mps.client_env(index, placement.granted.gpu_milli, placement.granted.memory_bytes))
        return placement, env

    def _launch(self, job: Job, partition_env: dict[str, str]) -> Launch:
        placement = job.placement
        assert placement is not None
        env = dict(job.spec.env) or {"PATH": DEFAULT_PATH}
        env.update(partition_env)
        env.update(
            GPUOS_JOB_ID=job.id,
            GPUOS_JOB_NAME=job.spec.name,
            GPUOS_PARTITION=str(placement.partition),
            GPUOS_MEMORY_LIMIT=str(placement.granted.memory_bytes),
            GPUOS_PRIORITY=job.spec.priority.name.lower(),
        )
        command = job.spec.command
        kernel = job.spec.kind == JobKind.KERNEL
        if kernel:
            command = kernel_command(job)
        uid = job.owner_uid if os.getuid() == 0 else -1
        gid = -1
        home = ""
        if uid >= 0:
            try:
                account = pwd.getpwuid(uid)
                gid, home = account.pw_gid, account.pw_dir
            except KeyError:
                gid = uid
        cwd = job.spec.cwd if job.spec.cwd and os.path.isdir(job.spec.cwd) else self.default_cwd
        if cwd == self.default_cwd and uid not in (-1, os.getuid()):
            # The state dir is private to the daemon's user: another user's job starts in its
            # home, as a login would, or in / when it has none.
            cwd = home if home and os.path.isdir(home) else "/"
        return Launch(job.id, command, env, cwd, uid, gid, kill_grace=self.kill_grace, progress=kernel)

    def waiting(self, job_id: str) -> WaitReason | None:
        """Why the latest round left pending job ``job_id`` unplaced; None if it placed it or never saw it."""
        return self._waiting.get(job_id)

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

        Older reservations that hold any of ``spec.reservation_keys`` are released first. Raises ResourceExhausted, naming the holders, when the GPUs have no room.
        """
        from gpuos.errors import InvalidArgument, ResourceExhausted
        from gpuos.scheduler.framework import _take, gpu_fits

        by_uuid = {d.uuid: d.index for d in self.devices}
        unknown = [u for u in uuids if u not in by_uuid]
        if unknown:
            raise InvalidArgument("gpu_uuids", f"no GPU here has UUID {unknown[0]}")
        keys = set(spec.reservation_keys)
        with self._lock:
            for other in self.store.placed():
                if other.spec.kind == JobKind.EXTERNAL and keys.intersection(other.spec.reservation_keys):
                    self._finalize(other, JobState.SUCCEEDED, Reason.RELEASED, "its device was handed out again", None)
            snap = self.snapshot()
            node = snap.nodes[0]
            gpus = {g.index: g for g in node.gpus}
            chosen = tuple(gpus[by_uuid[u]] for u in uuids)
            for gpu in chosen:
                if not gpu_fits(spec.resources, gpu):
                    why = "it failed" if not gpu.healthy else f"held by {', '.join(gpu.jobs) or 'MIG slices'}"
                    raise ResourceExhausted(f"GPU {gpu.index} has no room for this request ({why})")
            # Stored and started under the loop's lock, so no round ever sees it pending.
            job, _ = self.store.submit(spec, owner_uid)
            _, place = _take(self._view(job, snap.now), node, chosen)
            self._start(place)
            started = self.store.get(job.id)
            if started.state != JobState.RUNNING or started.placement is None:
                raise ResourceExhausted(f"could not reserve: {started.message or started.state.value}")
            self._dirty = True
            return started, self._partition_env_of(started.placement)

    def _partition_env_of(self, placement: Placement) -> dict[str, str]:
        if placement.kind is PartitionKind.MIG:
            return {"CUDA_VISIBLE_DEVICES": placement.mig_uuid}
        env = self.backend.visible_devices_env(placement.devices)
        if placement.kind is PartitionKind.MPS and self.mps is not None:
            env.update(self.mps.client_env(placement.devices[0], placement.granted.gpu_milli,
                                           placement.granted.memory_bytes))
        return env

    def rank(self, request: Resources, uuids: tuple[str, ...]) -> list[str]:
        """``uuids`` ordered by the active policy's score for ``request`` (fitting GPUs first)."""
        from gpuos.scheduler.framework import gpu_fits

        snap = self.snapshot()
        node = snap.nodes[0]
        by_uuid = {g.uuid: g for g in node.gpus}
        probe = JobView(id="(rank)", request=request, submitted_at=snap.now)
        scored = []
        for order, uuid in enumerate(uuids):
            gpu = by_uuid.get(uuid)
            if gpu is None:
                continue
            fits = gpu_fits(request, gpu)
            score = self.policy.score(probe, node, (gpu,), snap) if fits and not self.policy.first_fit else 0.0
            scored.append((not fits, -score, order, uuid))
        return [u for *_, u in sorted(scored)]

    # -- time-slicing ---------------------------------------------------------------------------

    def _rotate_turns(self) -> None:
        """Give each time-shared GPU's turn to the job whose turn it is; pause the others."""
        sharers: dict[int, list[Sharer]] = {}
        jobs: dict[str, Job] = {}
        for job in self.store.placed():
            placement = job.placement
            if placement is None or placement.kind is not PartitionKind.TIMESLICE:
                continue
            if job.id in self._stopping:
                continue
            jobs[job.id] = job
            weight = (placement.granted.gpu_milli or MILLI) / MILLI
            for index in placement.devices:
                sharers.setdefault(index, []).append(Sharer(job.id, int(job.spec.priority), weight))
        if not sharers and not self._turns:
            return
        now = time.time()
        snap: list[Snapshot] = []

        def quantum(job_id: str) -> float:
            if not snap:
                snap.append(self.snapshot(now))
            return self.policy.quantum(self._view(jobs[job_id], now), snap[0])

        plan = plan_turns(sharers, self._turns, now, quantum)
        self._turns = plan.turns
        for job_id in plan.pause:
            if jobs[job_id].state == JobState.RUNNING:
                self._pause(jobs[job_id], now)
        for job_id in plan.run:
            if jobs[job_id].state == JobState.PAUSED:
                self._resume(jobs[job_id], now)

    def _pause(self, job: Job, now: float) -> None:
        # The kernel worker finishes the kernel in flight, then stops itself; a process job's
        # whole group stops at once. Until the job's process exists there is nothing to pause,
        # and the job keeps its state until a later round can.
        kernel = job.spec.kind == JobKind.KERNEL
        if not self.runtime.signal(job.id, signal.SIGUSR1 if kernel else signal.SIGSTOP, tree=not kernel):
            return
        attained = job.attained_service
        if job.run_since is not None:
            attained += (now - job.run_since) * service_share(job.placement)
        pid = self._attached.get(job.id, 0)
        for index in job.placement.devices if job.placement and pid else ():
            self.backend.set_paused(index, pid, True)
        self.store.update(job.id, state=JobState.PAUSED, reason=Reason.TIME_SLICE, run_since=None,
                          attained_service=attained, event="paused")

    def _resume(self, job: Job, now: float) -> None:
        self.runtime.signal(job.id, signal.SIGCONT)
        pid = self._attached.get(job.id, 0)
        for index in job.placement.devices if job.placement and pid else ():
            self.backend.set_paused(index, pid, False)
        self.store.update(job.id, state=JobState.RUNNING, reason="", run_since=now, event="resumed")
