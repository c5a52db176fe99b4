"""The control loop: the one place where jobs are started, stopped, reaped and scheduled.

Data flows one way: the store says what jobs exist, the scheduler framework (with the active
policy) decides, this loop applies the decisions through the runtime and the device backend,
and records every transition in the store before or as it takes effect.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import sys
import threading
import time
from dataclasses import dataclass

from gpuos.devices.backend import DeviceBackend, DeviceInfo
from gpuos.errors import BackendError, FailedPrecondition
from gpuos.jobs import Job, JobKind, JobState, Placement, Reason, Resources
from gpuos.runtime.process import Handle, Launch, ProcessRuntime
from gpuos.scheduler import GpuView, JobView, NodeView, Place, Policy, Preempt, Snapshot, schedule
from gpuos.scheduler.snapshot import MILLI

log = logging.getLogger("gpuos.controller")

NODE = "localhost"
HEALTH_INTERVAL = 1.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class _Stopping:
    """A job being stopped: why, and when SIGKILL follows SIGTERM."""

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
    """GPUs' worth of compute a placement holds (for attained service, in GPU-seconds)."""
    if placement is None:
        return 0.0
    granted = placement.granted
    if granted.gpu_milli:
        return granted.gpu_milli / MILLI
    return float(len(placement.devices))


class Controller:
    """Owns the scheduling loop, the job processes and the device allocations."""

    def __init__(
        self,
        store,  # gpuos.store.Store; untyped here to keep the import graph one-way and light
        backend: DeviceBackend,
        runtime: ProcessRuntime,
        policy: Policy,
        *,
        tick: float = 0.25,
        kill_grace: float = 5.0,
        default_cwd: str = "/",
    ) -> None:
        self.store = store
        self.backend = backend
        self.runtime = runtime
        self.policy = policy
        self.tick = tick
        self.kill_grace = kill_grace
        self.default_cwd = default_cwd
        self.devices: list[DeviceInfo] = backend.devices()
        self._healthy = {d.index: True for d in self.devices}
        self._last_health = 0.0
        self._stopping: dict[str, _Stopping] = {}
        self._attached: dict[str, int] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_decision_seconds = 0.0
        self.decisions_made = 0

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

    def wake(self) -> None:
        self._wake.set()

    def set_policy(self, policy: Policy) -> None:
        with self._lock:
            self.policy = policy
        self.wake()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.tick)
            self._wake.clear()
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                log.exception("control loop round failed")

    def step(self) -> None:
        """One round: reap, stop what must stop, check devices, schedule."""
        with self._lock:
            self._reap()
            self._drive_stops()
            self._check_health()
            self._schedule()

    # -- recovery -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Reconcile the store with the processes that exist after a (re)start."""
        with self._lock:
            for job in self.store.active():
                if not job.state.active:
                    continue
                status = self.runtime.exit_status(job.id)
                if status is not None:
                    self._finish(job, status.exit_code, status.signal, status.spawn_error)
                    continue
                handle = self.runtime.recorded_shim(job.id) or (
                    Handle(job.shim_pid, job.shim_started) if job.shim_pid else None
                )
                if handle is None:
                    # Marked RUNNING but the daemon died before starting it: it never ran.
                    self.store.update(
                        job.id, state=JobState.PENDING, placement=None, started_at=None,
                        reason=Reason.DAEMON_RESTART, message="requeued: gpuosd stopped before starting it",
                        event="requeued",
                    )
                    continue
                if self.runtime.shim_alive(job.id, handle):
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

    # -- reaping --------------------------------------------------------------------------------

    def _reap(self) -> None:
        for job in self.store.active():
            if not job.state.active:
                continue
            status = self.runtime.exit_status(job.id)
            if status is None:
                self._attach(job)
                if job.shim_pid and not self.runtime.shim_alive(job.id, Handle(job.shim_pid, job.shim_started)):
                    status = self.runtime.exit_status(job.id)
                    if status is None:
                        self._finalize(job, JobState.FAILED, Reason.SUPERVISOR_LOST,
                                       "the job's supervisor died without recording an exit status", None)
                continue
            self._finish(job, status.exit_code, status.signal, status.spawn_error)

    def _attach(self, job: Job) -> None:
        if job.id in self._attached or job.placement is None:
            return
        pid = self.runtime.child_pid(job.id)
        if pid <= 0:
            return
        self._attached[job.id] = pid
        granted = job.placement.granted
        for index in job.placement.devices:
            milli = granted.gpu_milli or MILLI
            self.backend.attach(index, pid, granted.memory_bytes, milli)
        if job.child_pid != pid:
            self.store.update(job.id, child_pid=pid)

    def _detach(self, job: Job) -> None:
        pid = self._attached.pop(job.id, 0) or job.child_pid
        if job.placement is not None and pid:
            for index in job.placement.devices:
                self.backend.detach(index, pid)
        self.runtime.forget(job.id)

    def _finish(self, job: Job, exit_code: int, sig: int, spawn_error: str) -> None:
        """The job's process ended; decide what that means."""
        stopping = self._stopping.pop(job.id, None)
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

    def _finalize(self, job: Job, state: JobState, reason: str, message: str, exit_code: int | None) -> None:
        self._detach(job)
        now = time.time()
        attained = job.attained_service
        if job.started_at is not None and job.state == JobState.RUNNING:
            attained += (now - job.started_at) * service_share(job.placement)
        if state == JobState.PENDING:
            # Preempted: back in the queue, keeping the service it has had (LAS needs it).
            self.store.update(
                job.id, state=state, reason=reason, message=message, placement=None, attained_service=attained,
                shim_pid=0, shim_started=0.0, child_pid=0, preemptions=job.preemptions + 1, event="requeued",
            )
        else:
            self.store.update(
                job.id, state=state, reason=reason, message=message, exit_code=exit_code, finished_at=now,
                attained_service=attained,
            )

    # -- stopping -------------------------------------------------------------------------------

    def _begin_stop(self, job: Job, state: JobState, reason: str, message: str) -> None:
        if job.id in self._stopping:
            return
        self._stopping[job.id] = _Stopping(state, reason, message, time.time() + self.kill_grace)
        self.runtime.signal(job.id, signal.SIGTERM)
        # A paused group would hold SIGTERM until resumed.
        self.runtime.signal(job.id, signal.SIGCONT)

    def _drive_stops(self) -> None:
        for job in self.store.active():
            if job.cancel_requested and job.state.active:
                self._begin_stop(job, JobState.CANCELLED, Reason.CANCELLED_BY_USER, "cancelled")
        now = time.time()
        for job_id, stopping in list(self._stopping.items()):
            if now >= stopping.kill_at:
                self.runtime.signal(job_id, signal.SIGKILL)

    # -- devices --------------------------------------------------------------------------------

    def _check_health(self) -> None:
        now = time.time()
        if now - self._last_health < HEALTH_INTERVAL:
            return
        self._last_health = now
        for status in self.backend.status():
            was = self._healthy.get(status.index, True)
            self._healthy[status.index] = status.healthy
            if was and not status.healthy:
                log.warning("GPU %d is unhealthy; stopping its jobs", status.index)
            if status.healthy:
                continue
            for job in self.store.active():
                if job.state.active and job.placement and status.index in job.placement.devices:
                    self._begin_stop(job, JobState.FAILED, Reason.DEVICE_LOST, f"GPU {status.index} failed")

    # -- scheduling -----------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> Snapshot:
        """What the policy sees: the devices with their free shares, and the queue."""
        now = time.time() if now is None else now
        active = self.store.active()
        milli_used = {d.index: 0 for d in self.devices}
        memory_used = {d.index: 0 for d in self.devices}
        slices_used = {d.index: 0 for d in self.devices}
        holders: dict[int, list[str]] = {d.index: [] for d in self.devices}
        pending: list[JobView] = []
        running: list[JobView] = []
        for job in active:
            view = self._view(job, now)
            if job.state == JobState.PENDING:
                pending.append(view)
                continue
            running.append(view)
            if job.placement is None:
                continue
            granted = job.placement.granted
            for index in job.placement.devices:
                milli_used[index] += granted.gpu_milli or MILLI
                memory_used[index] += granted.memory_bytes
                holders[index].append(job.id)
                if granted.mig_profile:
                    info = self.devices[index].mig_profile(granted.mig_profile)
                    slices_used[index] += info.slices if info else 0
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
            )
            for d in self.devices
        )
        return Snapshot(now=now, nodes=(NodeView(NODE, gpus),), pending=tuple(pending), running=tuple(running))

    @staticmethod
    def _view(job: Job, now: float) -> JobView:
        attained = job.attained_service
        if job.state == JobState.RUNNING and job.started_at is not None:
            attained += (now - job.started_at) * service_share(job.placement)
        return JobView(
            id=job.id,
            request=job.spec.resources,
            tenant=job.spec.tenant,
            priority=int(job.spec.priority),
            qos=job.spec.qos,
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
        decisions = schedule(self.snapshot(), self.policy)
        self.last_decision_seconds = time.perf_counter() - started
        self.decisions_made += 1
        return decisions

    def _schedule(self) -> None:
        if not any(j.state == JobState.PENDING for j in self.store.active()):
            return
        for decision in self.decide():
            if isinstance(decision, Place):
                self._start(decision)
            else:
                job = self.store.active_job(decision.job_id)
                if job is not None and job.state.active:
                    self._begin_stop(job, JobState.PENDING, Reason.PREEMPTED, f"preempted by policy {self.policy.name}")

    def _start(self, place: Place) -> None:
        job = self.store.active_job(place.job_id)
        if job is None or job.state != JobState.PENDING:
            return
        request = job.spec.resources
        if place.mig_profile:
            partition = f"mig:{place.mig_profile}"
        elif request.gpu_milli:
            partition = "shared"
        else:
            partition = "exclusive"
        placement = Placement(
            devices=place.gpus,
            device_uuids=tuple(self.devices[i].uuid for i in place.gpus),
            partition=partition,
            granted=Resources(
                gpus=len(place.gpus),
                gpu_milli=place.milli if request.gpu_milli else 0,
                memory_bytes=place.memory,
                mig_profile=place.mig_profile,
            ),
        )
        # Write-ahead: the store says RUNNING (with its placement) before the process exists, so a
        # crash in between is seen on restart as "never started" and the job is requeued.
        try:
            job = self.store.update(job.id, expect={JobState.PENDING}, state=JobState.RUNNING, placement=placement,
                                    started_at=time.time(), reason="", message="", event="started")
        except FailedPrecondition:
            return
        try:
            handle = self.runtime.start(self._launch(job, placement))
        except BackendError as exc:
            self._finalize(job, JobState.FAILED, Reason.SPAWN_FAILED, str(exc), None)
            return
        self.store.update(job.id, shim_pid=handle.shim_pid, shim_started=handle.shim_started)

    def _launch(self, job: Job, placement: Placement) -> Launch:
        env = dict(job.spec.env) or {"PATH": DEFAULT_PATH}
        env.update(self.backend.visible_devices_env(placement.devices))
        env.update(
            GPUOS_JOB_ID=job.id,
            GPUOS_JOB_NAME=job.spec.name,
            GPUOS_PARTITION=placement.partition,
            GPUOS_MEMORY_LIMIT=str(placement.granted.memory_bytes),
        )
        command = kernel_command(job) if job.spec.kind == JobKind.KERNEL else job.spec.command
        cwd = job.spec.cwd if job.spec.cwd and os.path.isdir(job.spec.cwd) else self.default_cwd
        uid = job.owner_uid if os.getuid() == 0 else -1
        gid = -1
        if uid >= 0:
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = uid
        return Launch(job.id, command, env, cwd, uid, gid)
