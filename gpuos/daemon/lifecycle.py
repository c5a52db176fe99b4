"""A job's life in the daemon: start, attach, pause and resume, stop, finish, requeue, and recovery.

Every transition is recorded in the store before or as it takes effect: a start is written ahead
(RUNNING with its placement before the process exists), so a daemon that dies at any point finds,
on restart, either a job that never started (requeued) or one whose process it can re-attach.
Callers hold the control loop's lock.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuos.daemon.cluster import Cluster
from gpuos.daemon.health import Fault
from gpuos.daemon.partitioning import Partitioned, Partitions
from gpuos.daemon.suspension import RESTORE, SUSPEND, Move, Moved, Transfers, describe
from gpuos.daemon.turns import Turns
from gpuos.devices.backend import DeviceBackend, DeviceInfo, Transfer
from gpuos.errors import BackendError, FailedPrecondition, GpuosError
from gpuos.jobs import (
    TIMESLICE,
    Job,
    JobKind,
    JobState,
    Partition,
    PartitionKind,
    Placement,
    Reason,
    Resources,
)
from gpuos.kernels.executor_control import client_argv
from gpuos.partitions.memory import Overrun
from gpuos.runtime.process import Handle, Launch, ProcessRuntime
from gpuos.scheduler import Place
from gpuos.scheduler.snapshot import MILLI
from gpuos.scheduler.state import StateError
from gpuos.units import format_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gpuos.daemon.metrics import DaemonMetrics
    from gpuos.store import Store

log = logging.getLogger("gpuos.controller")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class _Stopping:
    """A job being stopped: what it becomes, why, and when SIGKILL follows SIGTERM."""

    state: JobState
    reason: str
    message: str
    kill_at: float


def kernel_command(job: Job, executor_socket: str = "") -> tuple[str, ...]:
    """The kernel worker's command line for a kernel job; with ``executor_socket``, the command
    line of its client of the GPU's kernel executor (``--share executor``), which runs it there."""
    if executor_socket:
        return client_argv(executor_socket, job.spec.kernel, job.spec.params)
    argv = [sys.executable, "-m", "gpuos.kernels.worker", "--kernel", job.spec.kernel]
    for key, value in job.spec.params:
        argv += ["--param", f"{key}={value}"]
    return tuple(argv)


def placement_of(place: Place, job: Job, devices: Sequence[DeviceInfo]) -> Placement:
    """What the store records for ``job`` placed as ``place`` decides."""
    request = job.spec.resources
    if place.mig_profile:
        partition = Partition(PartitionKind.MIG, place.mig_profile)
    else:
        partition = Partition(PartitionKind(place.sharing or PartitionKind.EXCLUSIVE.value))
    return Placement(
        devices=place.gpus,
        device_uuids=tuple(devices[i].uuid for i in place.gpus),
        partition=partition,
        granted=Resources(
            gpus=len(place.gpus),
            gpu_milli=place.milli if (request.gpu_milli or place.mig_profile or request.timeslice) else 0,
            memory_bytes=place.memory,
            mig_profile=place.mig_profile,
            # A turn its policy chose is a turn (Policy.share); a user's pinned mode is kept.
            sharing=TIMESLICE if place.sharing == TIMESLICE else request.sharing,
        ),
        mig_slot=place.mig_slot,
    )


class Lifecycle:
    """Starts, watches and stops the jobs' processes, and records each transition in the store."""

    def __init__(
        self,
        store: Store,
        runtime: ProcessRuntime,
        backend: DeviceBackend,
        devices: Sequence[DeviceInfo],
        partitions: Partitions,
        turns: Turns,
        cluster: Cluster,
        *,
        default_cwd: str,
        kill_grace: float,
        metrics: DaemonMetrics | None,
        capacity_freed: Callable[[], None],
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.backend = backend
        self.devices = devices
        self.partitions = partitions
        self.turns = turns
        self.cluster = cluster  # the scheduler's model: every start, end and requeue is applied to it
        self.default_cwd = default_cwd
        self.kill_grace = kill_grace
        self.metrics = metrics
        self.capacity_freed = capacity_freed  # a round should run: a job's GPUs came free
        self.stopping: dict[str, _Stopping] = {}
        self._attached: dict[str, int] = {}
        self._unrecorded: set[str] = set()  # jobs whose end the store could not record yet
        self._stop_asked: set[str] = set()  # kernel jobs asked to stop at their next step
        # SLO-driven colocation's cap on a starting MPS client's thread percentage (the
        # right-sized share of a best-effort neighbour; gpuos/daemon/colocation.py sets it).
        self.thread_cap: Callable[[Job, int], int] | None = None
        # Suspend-to-host: what the backend can do (asked once, at start), the transfers in
        # flight (``wake`` runs a round when one ends), and the PENDING suspended jobs whose
        # stopped processes are kept: job id -> (pid, the GPU index it was suspended from).
        self.suspend_support = backend.suspend_support()
        self.transfers = Transfers(done=wake)
        self._parked: dict[str, tuple[int, int]] = {}
        # Executor jobs placed (RUNNING in the store) whose GPU's executor is still starting: each
        # round launches those whose executor answers (the loop never waits for one to start).
        self._awaiting_executor: dict[str, Partitioned] = {}

    # -- recovery -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Reconcile the store with the processes that exist after a (re)start."""
        for job in self.store.active():
            if job.spec.kind == JobKind.EXTERNAL and job.state == JobState.PENDING:
                # The daemon died inside reserve(): the caller never got its answer.
                self.store.update(job.id, state=JobState.FAILED, reason=Reason.DAEMON_RESTART,
                                  message="gpuosd restarted before the reservation completed",
                                  finished_at=time.time())
                continue
            if job.state == JobState.PENDING and job.suspended:
                self._readopt_parked(job)
                continue
            if not job.state.active:
                continue
            if job.spec.kind == JobKind.EXTERNAL:
                self._readopt_partition(job)
                continue
            status = self.runtime.exit_status(job.id)
            if status is not None:
                self.finish(job, status.exit_code, status.signal, status.spawn_error)
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
                self.release(job)
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
                if job.suspended:
                    self._readopt_suspended(job)
                if job.cancel_requested:
                    self.begin_stop(job, JobState.CANCELLED, job.cancel_reason or Reason.CANCELLED_BY_USER,
                                    "cancelled")
                continue
            status = self.runtime.exit_status(job.id)
            if status is not None:
                self.finish(job, status.exit_code, status.signal, status.spawn_error)
            else:
                self.finalize(job, JobState.FAILED, Reason.DAEMON_RESTART,
                              "gpuosd restarted and the job's supervisor was gone; its exit status is unknown",
                              None)
        # Control daemons whose clients all ended while gpuosd was down serve nobody now.
        self.partitions.stop_unused_mps(self.store.placed())
        self.partitions.stop_unused_executors(self.store.placed())

    def _readopt_partition(self, job: Job) -> None:
        if job.placement is None:
            return
        placement = self.partitions.readopt(job.placement)
        if placement != job.placement:
            self.store.update(job.id, placement=placement)

    # -- starting -------------------------------------------------------------------------------

    def start(self, place: Place, quantum: float = 1.0) -> Partitioned | None:
        """Start a pending job where ``place`` says (``quantum``: the policy's time slice for a
        time-sharer); the partition it got, or None if it did not start."""
        job = self.store.active_job(place.job_id)
        if job is None or job.state != JobState.PENDING:
            return None
        if job.suspended:
            return self._start_restore(place, job, quantum)
        placement = placement_of(place, job, self.devices)
        now = time.time()
        if not self._model_takes(place, job, now, quantum, "placement"):
            return None
        # Write-ahead: the store says RUNNING (with its placement) before the process exists, so a
        # crash in between is seen on restart as "never started" and the job is requeued.
        try:
            job = self.store.update(job.id, expect={JobState.PENDING}, state=JobState.RUNNING, placement=placement,
                                    started_at=now, run_since=now, reason="", message="", event="started")
        except FailedPrecondition:
            self.cluster.ended(job.id, now, requeued=False)  # cancelled meanwhile: never ran
            return None
        if self.metrics is not None:
            self.metrics.queue_wait.observe(max(0.0, now - job.created_at))
        try:
            partitioned = self.partitions.create(placement, self._placements_besides(job.id))
            if partitioned.placement != job.placement:
                job = self.store.update(job.id, placement=partitioned.placement)
            if job.spec.kind == JobKind.EXTERNAL:
                return partitioned  # the partition is the whole of it: someone else runs the work
            if partitioned.placement.kind is PartitionKind.EXECUTOR and \
                    not self.partitions.executor_ready(partitioned.placement.devices[0]):
                self._awaiting_executor[job.id] = partitioned  # launched by a later round's reap()
                return partitioned
            self._spawn(job, partitioned)
        except BackendError as exc:
            self.finalize(job, JobState.FAILED, Reason.SPAWN_FAILED, str(exc), None)
            return None
        return partitioned

    def _spawn(self, job: Job, partitioned: Partitioned) -> None:
        """Start the placed job's process (an executor job admitted first). Raises BackendError."""
        env = partitioned.env
        if partitioned.placement.kind is PartitionKind.EXECUTOR:
            env = {**env, **self.partitions.admit(job)}
        handle = self.runtime.start(self.launch(job, env))
        self.store.update(job.id, shim_pid=handle.shim_pid, shim_started=handle.shim_started)

    def _start_awaiting(self) -> None:
        """Launch the executor jobs whose executor came up since; fail those whose executor could not."""
        for job_id, partitioned in list(self._awaiting_executor.items()):
            job = self.store.active_job(job_id)
            if job is None or job.state != JobState.RUNNING:
                del self._awaiting_executor[job_id]
                continue
            try:
                if not self.partitions.executor_ready(partitioned.placement.devices[0]):
                    continue
                del self._awaiting_executor[job_id]
                self._spawn(job, partitioned)
            except BackendError as exc:
                self._awaiting_executor.pop(job_id, None)
                self.finalize(job, JobState.FAILED, Reason.SPAWN_FAILED, str(exc), None)

    def _model_takes(self, place: Place, job: Job, now: float, quantum: float, what: str) -> bool:
        """Apply ``place`` to the scheduler's model first; False (the job stays queued) if the model
        refuses it, which a correct policy never makes it do."""
        self.cluster.enqueue(job)
        try:
            self.cluster.place(place, now, quantum)
        except StateError as exc:
            log.error("job %s: the scheduler's model refused its %s (%s); it stays queued", job.id, what, exc)
            return False
        return True

    def launch(self, job: Job, partition_env: dict[str, str]) -> Launch:
        """How the runtime starts ``job``: its command, environment, directory and user."""
        placement = job.placement
        assert placement is not None
        env = dict(job.spec.env) or {"PATH": DEFAULT_PATH}
        env.update(partition_env)
        threads = env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "")
        if self.thread_cap is not None and threads.isdigit():
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(self.thread_cap(job, int(threads)))
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
            executor = placement.kind is PartitionKind.EXECUTOR
            command = kernel_command(job, self.partitions.executor_socket(placement.devices[0]) if executor else "")
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
        # A job with an SLO reports its latencies into the progress directory (gpuos/latency.py).
        progress = kernel or job.spec.slo_p99_seconds > 0
        return Launch(job.id, command, env, cwd, uid, gid, kill_grace=self.kill_grace, progress=progress)

    # -- reaping --------------------------------------------------------------------------------

    def reap(self) -> None:
        """Record the end of every placed job whose process ended; attach the new ones to their GPUs."""
        if self._awaiting_executor:
            self._start_awaiting()
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
                    self.finalize(job, JobState.FAILED, Reason.SUPERVISOR_LOST,
                                  "the job's supervisor died without recording an exit status", None)
            return
        self.finish(job, status.exit_code, status.signal, status.spawn_error)

    def _attach(self, job: Job) -> None:
        if job.id in self._attached or job.placement is None:
            return
        pid = self.runtime.child_pid(job.id)
        if pid <= 0:
            return
        self._attached[job.id] = pid
        granted = job.placement.granted
        for index in job.placement.devices:
            # A share's or slice's compute, a time-sharer's weight, or the whole GPU.
            self.backend.attach(index, pid, granted.memory_bytes, granted.gpu_milli or MILLI)
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

    def release(self, job: Job) -> None:
        """Give back the partition a job held (its MIG instance, its MPS daemon when unused) and its turns."""
        placement = job.placement
        if placement is None:
            return
        self.turns.forget(job.id)
        self.partitions.release(placement, self._placements_besides(job.id), job.id)

    def _placements_besides(self, job_id: str) -> Iterator[Placement]:
        # A generator, so the store is read only if the partition asks (an MPS share's ceiling,
        # an MPS daemon's last client): starting or ending any other job never reads it.
        for j in self.store.placed():
            if j.id != job_id and j.placement is not None:
                yield j.placement

    # -- ending ---------------------------------------------------------------------------------

    def finish(self, job: Job, exit_code: int, sig: int, spawn_error: str) -> None:
        """The job's process ended; decide what that means.

        Safe to repeat: when the store cannot record the end (a full disk), the job stays RUNNING
        in the store, its exit.json stays on disk, and the next round decides the same again.
        """
        stopping = self.stopping.get(job.id)
        placement = job.placement
        if stopping is None and exit_code != 0 and placement is not None and \
                placement.kind is PartitionKind.EXECUTOR and self.partitions.executor_died(placement.devices[0]):
            # Its executor died under it: the health check reports the loss next (a fault the
            # policy requeues or fails, reason executor-lost), and this end is recorded as that.
            return
        if stopping is not None:
            self.finalize(job, stopping.state, stopping.reason, stopping.message, exit_code)
        elif job.cancel_requested:
            self.finalize(job, JobState.CANCELLED, job.cancel_reason or Reason.CANCELLED_BY_USER, "cancelled",
                          exit_code)
        elif job.stop_requested and not spawn_error and (exit_code == 0 or sig == signal.SIGUSR2):
            # It stopped at a step boundary as asked: not a success (a group must not count it
            # as one), and not a failure; its progress says how far it got. (SIGUSR2 itself
            # ends a worker that had not yet set up its handler.)
            self.finalize(job, JobState.CANCELLED, Reason.STOPPED_AT_STEP, "stopped at a step boundary as asked", 0)
        elif spawn_error:
            self.finalize(job, JobState.FAILED, Reason.SPAWN_FAILED, spawn_error, exit_code)
        elif exit_code == 0:
            self.finalize(job, JobState.SUCCEEDED, "", "", 0)
        else:
            message = f"killed by {signal.Signals(sig).name}" if sig else f"exited with code {exit_code}"
            self.finalize(job, JobState.FAILED, Reason.EXIT_NONZERO, message, exit_code)
        # Only once recorded: a retry must still know why the job was being stopped.
        self.stopping.pop(job.id, None)
        self._stop_asked.discard(job.id)

    def finalize(self, job: Job, state: JobState, reason: str, message: str, exit_code: int | None) -> None:
        """Take the job off its GPUs and record it as ``state``: requeued when PENDING, else ended."""
        self._detach(job)
        self.release(job)
        self.capacity_freed()
        now = time.time()
        service = self.cluster.attained(job, now)
        if state == JobState.PENDING:
            # Back in the queue, keeping the service it has had (LAS needs it).
            self.store.update(
                job.id, state=state, reason=reason, message=message, placement=None, attained_service=service,
                shim_pid=0, shim_started=0.0, child_pid=0, run_since=None, preemptions=job.preemptions + 1,
                event="requeued",
            )
        else:
            self.store.update(
                job.id, state=state, reason=reason, message=message, exit_code=exit_code, finished_at=now,
                attained_service=service, run_since=None,
            )
            if self.metrics is not None:
                self.metrics.finished.labels(state.value.lower(), reason).inc()
        # Only once recorded: a store that could not record it retries next round, model unchanged.
        self.cluster.ended(job.id, now, requeued=state == JobState.PENDING)

    # -- stopping -------------------------------------------------------------------------------

    def begin_stop(self, job: Job, state: JobState, reason: str, message: str) -> None:
        """Ask the job's processes to end (SIGTERM, SIGKILL after the grace); it becomes ``state`` once they have."""
        if job.id in self.stopping:
            return
        if self._awaiting_executor.pop(job.id, None) is not None:
            # Its process was never started (its executor was still coming up): nothing to signal.
            self.finalize(job, state, reason, message, None)
            return
        if job.spec.kind == JobKind.EXTERNAL:
            # Nothing of ours runs in it: releasing the partition is all there is to stopping it.
            if state == JobState.CANCELLED:
                state, reason, message = JobState.SUCCEEDED, Reason.RELEASED, message or "released"
            self.finalize(job, state if state != JobState.PENDING else JobState.FAILED, reason, message, None)
            return
        self.stopping[job.id] = _Stopping(state, reason, message, time.time() + self.kill_grace)
        self.runtime.signal(job.id, signal.SIGTERM)
        # A paused group would hold SIGTERM until resumed.
        self.runtime.signal(job.id, signal.SIGCONT)

    def drive_stops(self) -> None:
        """Begin stopping the jobs whose cancel was asked for; SIGKILL those past their grace."""
        for job in self.store.placed():
            if job.cancel_requested:
                self.begin_stop(job, JobState.CANCELLED, job.cancel_reason or Reason.CANCELLED_BY_USER, "cancelled")
            elif job.stop_requested and job.id not in self._stop_asked and job.spec.kind == JobKind.KERNEL:
                # The kernel worker stops by itself at its next step boundary (SIGUSR2); a
                # restarted daemon asks again, which the worker takes as the same request.
                if self.runtime.signal(job.id, signal.SIGUSR2, tree=False):
                    self._stop_asked.add(job.id)
        now = time.time()
        for job_id, stopping in list(self.stopping.items()):
            if now >= stopping.kill_at:
                self.runtime.signal(job_id, signal.SIGKILL)

    def preempt(self, job_id: str, policy_name: str) -> None:
        """Stop a running job the policy preempts; it goes back to the queue."""
        job = self.store.active_job(job_id)
        if job is not None and job.state.active and job.id not in self.stopping:
            self.begin_stop(job, JobState.PENDING, Reason.PREEMPTED, f"preempted by policy {policy_name}")
            if self.metrics is not None:
                self.metrics.preemptions.inc()

    def stop_for_fault(self, fault: Fault, requeue: bool) -> None:
        """A fault took the job's GPU away: requeued or failed, as the policy said."""
        if self.metrics is not None and fault.job.id not in self.stopping:
            self.metrics.faults.labels(fault.reason).inc()
        self.begin_stop(fault.job, JobState.PENDING if requeue else JobState.FAILED, fault.reason, fault.message)

    def stop_over_memory(self, over: Overrun) -> None:
        """The job uses more GPU memory than it was granted: it fails."""
        job = self.store.active_job(over.job_id)
        if job is None or job.id in self.stopping:
            return
        log.warning("job %s uses %s on GPU %d, over its %s limit; stopping it", job.id,
                    format_bytes(over.used), over.gpu, format_bytes(over.limit))
        if self.metrics is not None:
            self.metrics.memory_kills.inc()
        self.begin_stop(job, JobState.FAILED, Reason.MEMORY_LIMIT,
                        f"used {format_bytes(over.used)} of GPU {over.gpu}, over its "
                        f"{format_bytes(over.limit)} limit")

    # -- time-slice turns -----------------------------------------------------------------------

    def pause(self, job: Job, now: float) -> None:
        """Take the GPU from a time-shared job whose turn ended, keeping the service it had."""
        # The kernel worker finishes the kernel in flight, then stops itself; a process job's
        # whole group stops at once. Until the job's process exists there is nothing to pause,
        # and the job keeps its state until a later round can.
        if self.transferring(job.id):
            return  # its memory is moving; the transfer's end decides what it becomes
        kernel = job.spec.kind == JobKind.KERNEL
        if not self.runtime.signal(job.id, signal.SIGUSR1 if kernel else signal.SIGSTOP, tree=not kernel):
            return
        pid = self._attached.get(job.id, 0)
        for index in job.placement.devices if job.placement and pid else ():
            self.backend.set_paused(index, pid, True)
        # The model counts a time-sharer's service by its share of the turns, paused or not; the
        # store keeps it up to now (run_since), for a restart.
        self.store.update(job.id, state=JobState.PAUSED, reason=Reason.TIME_SLICE, run_since=now,
                          attained_service=self.cluster.attained(job, now), event="paused")

    def resume(self, job: Job, now: float) -> None:
        """Give a paused time-shared job its turn (not one suspended to host: that takes a restore)."""
        if job.suspended or self.transferring(job.id):
            return  # never run a process whose memory is not on its GPU
        self.runtime.signal(job.id, signal.SIGCONT)
        pid = self._attached.get(job.id, 0)
        for index in job.placement.devices if job.placement and pid else ():
            self.backend.set_paused(index, pid, False)
        self.store.update(job.id, state=JobState.RUNNING, reason="", event="resumed")

    # -- suspend-to-host ------------------------------------------------------------------------
    #
    # A transfer runs on a worker thread (gpuos/daemon/suspension.py); the control loop collects
    # its end each round (collect_transfers) and records it here, on the loop's thread. Until
    # then the job is `transferring`: it is not paused, resumed, suspended or restored.

    def transferring(self, job_id: str) -> bool:
        """A suspend or restore of ``job_id`` is in flight (or ended and not yet recorded)."""
        return self.transfers.busy(job_id)

    def why_not_suspend(self, job: Job) -> str:
        """Why ``job`` cannot be suspended to host now; "" when it can."""
        placement = job.placement
        if not self.suspend_support.supported:
            return self.suspend_support.detail
        if job.spec.kind == JobKind.EXTERNAL:
            return "a reservation runs no process of gpuosd's"
        if placement is None or not job.state.active:
            return "it is not running or paused"
        if len(placement.devices) != 1:
            return "it spans several GPUs"
        if placement.kind not in (PartitionKind.EXCLUSIVE, PartitionKind.TIMESLICE):
            # A MIG slice or an MPS or executor client shares driver state with others.
            return f"its {placement.kind.value} partition cannot be suspended"
        if job.suspended:
            return "it is suspended already"
        if self.transferring(job.id) or job.id in self.stopping:
            return "a transfer or a stop of it is under way"
        if self._attached.get(job.id, 0) <= 0:
            return "its process has not started yet"
        return ""

    def suspend(self, job: Job, now: float, requeue: bool) -> bool:
        """Start moving a running or paused single-GPU job's memory to host memory.

        Asynchronous: returns at once, False when the job cannot be suspended (see
        :meth:`why_not_suspend`). When the transfer ends, the job is PAUSED with reason
        ``suspended`` and keeps its placement (``requeue=False``), or is PENDING with reason
        ``suspended``, its process and progress kept and its GPU given back (``requeue=True``).
        A failed suspend leaves the job as it was, with an event saying why.
        """
        why = self.why_not_suspend(job)
        if why:
            log.debug("job %s cannot be suspended: %s", job.id, why)
            return False
        assert job.placement is not None
        index, pid = job.placement.devices[0], self._attached[job.id]
        stopped = job.state == JobState.PAUSED
        wake = stopped and self.backend.suspend_needs_running

        def work() -> Transfer:
            # On hardware a driver thread inside the process does the copy: a stopped process
            # is continued for it (its CUDA calls are held by the lock meanwhile).
            if wake:
                self.runtime.signal(job.id, signal.SIGCONT)
            try:
                transfer = self.backend.suspend(index, pid)
            except BaseException:
                if wake:
                    self.runtime.signal(job.id, signal.SIGSTOP)
                raise
            # Stopped, running or paused before: it holds no GPU memory now, so it must not run.
            self.runtime.signal(job.id, signal.SIGSTOP)
            return transfer

        return self.transfers.begin(Move(job.id, SUSPEND, index, pid, requeue=requeue, started_at=now), work)

    def restore(self, job: Job, index: int, now: float) -> bool:
        """Start bringing a suspended, still-placed (PAUSED) job's memory back onto GPU ``index``
        (the GPU it is placed on); when it is back the job is resumed and RUNNING.

        A PENDING suspended job is restored by placing it (its Place, applied by :meth:`start`).
        False when it cannot start; a failed restore requeues the job for a restart (reason
        ``restore-failed``).
        """
        placement = job.placement
        if not (self.suspend_support.supported and job.suspended and placement is not None
                and job.state == JobState.PAUSED and job.id not in self.stopping
                and not self.transferring(job.id)):
            return False
        if placement.devices != (index,):
            log.warning("job %s is placed on GPU %s; it is restored there, not on GPU %d (a move is "
                        "a requeue by suspension and a new placement)", job.id, placement.devices, index)
            return False
        pid = self._attached.get(job.id, 0) or job.child_pid
        return pid > 0 and self._begin_restore(job, index, pid, now)

    def _begin_restore(self, job: Job, index: int, pid: int, now: float) -> bool:
        source = job.suspended_from
        wake = self.backend.suspend_needs_running

        def work() -> Transfer:
            if wake:
                self.runtime.signal(job.id, signal.SIGCONT)
            try:
                return self.backend.restore(pid, index, source)
            except BaseException:
                if wake:
                    self.runtime.signal(job.id, signal.SIGSTOP)
                raise

        return self.transfers.begin(Move(job.id, RESTORE, index, pid, from_index=source, started_at=now), work)

    def _start_restore(self, place: Place, job: Job, quantum: float) -> Partitioned | None:
        """Apply a Place of a PENDING suspended job: take the GPU (written ahead, as a start is)
        and restore its memory there instead of starting a new process."""
        pid = self._parked.get(job.id, (job.child_pid, job.suspended_from))[0]
        index = place.gpus[0] if len(place.gpus) == 1 else -1
        source = self.devices[job.suspended_from].model if 0 <= job.suspended_from < len(self.devices) else "?"
        if index < 0 or self.devices[index].model != source:
            why = f"a suspended job resumes on one GPU of its model ({source}), not on GPUs {place.gpus}"
        elif index != job.suspended_from and not self.suspend_support.cross_gpu:
            why = f"this machine restores only onto the GPU it left (GPU {job.suspended_from})"
        elif pid <= 0:
            why = "its process is not known"
        else:
            why = ""
        if why:
            log.error("job %s: refused its placement (%s); it stays queued", job.id, why)
            return None
        placement = placement_of(place, job, self.devices)
        now = time.time()
        if not self._model_takes(place, job, now, quantum, "restore"):
            return None
        try:
            job = self.store.update(job.id, expect={JobState.PENDING}, state=JobState.RUNNING, placement=placement,
                                    run_since=now, reason=Reason.SUSPENDED, message="restoring from host memory",
                                    event="restoring", event_message=f"onto GPU {index}")
        except FailedPrecondition:
            self.cluster.ended(job.id, now, requeued=False)  # cancelled meanwhile
            return None
        self._parked.pop(job.id, None)
        self._attached[job.id] = pid
        try:
            # The others too, or an MPS daemon's ceiling would come down to this one share.
            partitioned = self.partitions.create(placement, self._placements_besides(job.id))
        except BackendError as exc:
            self._restore_failed(job, str(exc))
            return None
        self._begin_restore(job, index, pid, now)
        return partitioned

    def collect_transfers(self) -> None:
        """Record the transfers that ended since the last round, and watch the suspended jobs
        that wait in the queue (the control loop calls this each round)."""
        for moved in self.transfers.collect():
            job = self.store.active_job(moved.move.job_id)
            if job is None or job.id in self.stopping or not (job.state.active and job.placement is not None):
                continue  # it ended or is being stopped meanwhile: nothing to resume or requeue
            try:
                if moved.move.kind == SUSPEND:
                    self._suspended(job, moved)
                else:
                    self._restored(job, moved)
            except GpuosError as exc:
                log.error("job %s: could not record the end of its %s: %s", job.id, moved.move.kind, exc)
        self._watch_parked()

    def _observe(self, kind: str, moved: Moved) -> None:
        if self.metrics is None:
            return
        self.metrics.transfers.labels(kind, "ok" if moved.transfer is not None else "failed").inc()
        if moved.transfer is not None and moved.transfer.seconds > 0:
            self.metrics.transfer_rate.labels(kind).observe(moved.transfer.bytes_per_s / 1e9)

    def _suspended(self, job: Job, moved: Moved) -> None:
        move, transfer = moved.move, moved.transfer
        self._observe(SUSPEND, moved)
        if transfer is None:
            log.warning("job %s: suspend to host failed: %s", job.id, moved.error)
            self.store.update(job.id, event="suspend-failed", event_message=moved.error)
            return
        now = time.time()
        figures = describe(transfer)
        service = self.cluster.attained(job, now)
        if move.requeue:
            # Preempted by suspension: its GPU is given back, its stopped process kept.
            self.release(job)
            self._attached.pop(job.id, None)
            self._parked[job.id] = (move.pid, move.index)
            updated = self.store.update(
                job.id, state=JobState.PENDING, reason=Reason.SUSPENDED,
                message=f"suspended to host from GPU {move.index}", placement=None, run_since=None,
                attained_service=service, preemptions=job.preemptions + 1,
                suspended_bytes=transfer.bytes, suspended_from=move.index, event="suspended", event_message=figures,
            )
            self.cluster.requeue_suspended(updated, now)
            self.capacity_freed()
        else:
            self.backend.set_paused(move.index, move.pid, True)
            self.store.update(
                job.id, state=JobState.PAUSED, reason=Reason.SUSPENDED,
                message=f"suspended to host from GPU {move.index}", run_since=now, attained_service=service,
                suspended_bytes=transfer.bytes, suspended_from=move.index, event="suspended", event_message=figures,
            )
            self.cluster.set_resident(job.id, False, now, transfer.bytes)

    def _restored(self, job: Job, moved: Moved) -> None:
        move, transfer = moved.move, moved.transfer
        self._observe(RESTORE, moved)
        if transfer is None:
            self._restore_failed(job, moved.error)
            return
        now = time.time()
        was_paused = job.state == JobState.PAUSED
        self._attached[job.id] = move.pid
        self.runtime.signal(job.id, signal.SIGCONT)
        self.backend.set_paused(move.index, move.pid, False)
        self.store.update(job.id, state=JobState.RUNNING, reason="", message="", suspended_bytes=0,
                          suspended_from=-1, event="restored",
                          event_message=f"{describe(transfer)} onto GPU {move.index}")
        if was_paused:
            self.cluster.set_resident(job.id, True, now)

    def _restore_failed(self, job: Job, error: str) -> None:
        """Its memory cannot come back: stop its process and requeue it to start afresh."""
        log.warning("job %s: restore from host failed (%s); requeued to restart", job.id, error)
        self.store.update(job.id, suspended_bytes=0, suspended_from=-1, event="restore-failed", event_message=error)
        latest = self.store.active_job(job.id) or job
        self.begin_stop(latest, JobState.PENDING, Reason.RESTORE_FAILED,
                        f"its memory could not be restored ({error}); requeued to restart")

    def _watch_parked(self) -> None:
        """The suspended jobs waiting in the queue keep a stopped process: one whose job was
        cancelled meanwhile is killed; one whose process ended makes its job start afresh."""
        for job_id, (pid, index) in list(self._parked.items()):
            job = self.store.active_job(job_id)
            if job is not None and not (job.state == JobState.PENDING and job.suspended):
                self._parked.pop(job_id)  # placed again, or requeued for a restart
                continue
            if job is None:
                # Cancelled (or its group ended) while it waited: the store ended it directly.
                self.runtime.signal(job_id, signal.SIGKILL)
                self.runtime.signal(job_id, signal.SIGCONT)
                self.backend.detach(index, pid)
                self._parked.pop(job_id)
                continue
            handle = Handle(job.shim_pid, job.shim_started)
            if self.runtime.exit_status(job_id) is None and job.shim_pid and self.runtime.shim_alive(job_id, handle):
                continue
            self._parked.pop(job_id)
            self._forget_parked(job, "its suspended process ended while it waited; it will start afresh")

    def _forget_parked(self, job: Job, message: str) -> None:
        self.runtime.forget(job.id)
        self.store.update(job.id, reason=Reason.RESTORE_FAILED, message=message, shim_pid=0, shim_started=0.0,
                          child_pid=0, suspended_bytes=0, suspended_from=-1, event="restore-failed")
        self.cluster.drop_suspension(job.id)

    def _readopt_parked(self, job: Job) -> None:
        """After a restart: a PENDING suspended job's stopped process, kept while it waits."""
        handle = Handle(job.shim_pid, job.shim_started)
        if (job.shim_pid and job.child_pid > 0 and self.runtime.exit_status(job.id) is None
                and self.runtime.shim_alive(job.id, handle)):
            self._parked[job.id] = (job.child_pid, job.suspended_from)
            self.backend.adopt_suspended(job.suspended_from, job.child_pid, job.suspended_bytes, MILLI)
            self.store.update(job.id, event="reattached", event_message="gpuosd restarted; job still suspended to host")
        else:
            self._forget_parked(job, "gpuosd restarted and its suspended process was gone; it will start afresh")

    def _readopt_suspended(self, job: Job) -> None:
        """After a restart: a placed job whose memory is in host memory (PAUSED suspended, or
        RUNNING while its restore was in flight) is PAUSED suspended again, to be restored."""
        pid = job.child_pid or self.runtime.child_pid(job.id)
        if pid <= 0:
            return
        self._attached[job.id] = pid
        granted = job.placement.granted if job.placement else None
        self.backend.adopt_suspended(job.suspended_from, pid, job.suspended_bytes,
                                     (granted.gpu_milli if granted else 0) or MILLI)
        if job.state != JobState.PAUSED:
            self.store.update(job.id, state=JobState.PAUSED, reason=Reason.SUSPENDED, run_since=time.time(),
                              message="its restore was cut short by a gpuosd restart")
