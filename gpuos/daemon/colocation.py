"""SLO-driven colocation in gpuosd: hold a latency job's p99 by throttling its best-effort neighbours.

Each control round (``Controller.step``) calls :meth:`Colocation.round`. Every
``CONTROL_TICK`` seconds it reads the new latency samples of each placed job with an SLO (the
``latency.log`` that ``gpuos.report_latency`` and the kernel worker append to), runs the pure
controller (gpuos/partitions/slo.py) and gives the best-effort jobs that share that job's GPU
*concurrently* (MPS clients and executor jobs; time-sharers already take turns, and a whole
GPU or MIG slice has no neighbour) the share of time it chose. A :class:`_Throttler` thread per
GPU applies it as a duty cycle of ``THROTTLE_PERIOD``: the neighbours run for ``share`` of each
period and are paused for the rest, as ``Lifecycle.pause`` pauses them (a process job's group
gets SIGSTOP, a kernel job SIGUSR1 so that it stops at its next atom boundary; SIGCONT resumes
both). Nothing of the duty cycle is written to the store: the share lives here, shown by
:meth:`status`, and an event is recorded only when it moves by ``EVENT_STEP``.

When the share sits at the controller's floor and the SLO still fails, the neighbour is
suspended (its memory moved to the host) where ``Lifecycle.suspend`` exists and the backend
supports it, and restored once the SLO holds comfortably again. A best-effort MPS client that
was throttled and starts again on that GPU gets its thread percentage capped at the right-sized
share (``thread_cap``). If rounds stop coming (gpuosd stopping or stuck), each throttler lets
its jobs go after ``LEASE`` seconds rather than leave them paused.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gpuos.jobs import Job, JobKind, JobState, PartitionKind
from gpuos.latency import LATENCY_FILE, parse_line
from gpuos.partitions.slo import ColocationStatus, Sample, SloSettings, SloState, status_of, tick

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from gpuos.daemon.lifecycle import Lifecycle
    from gpuos.runtime.process import ProcessRuntime
    from gpuos.store import Store

log = logging.getLogger("gpuos.colocation")

# Seconds between controller ticks: a verdict needs tens of fresh samples anyway.
CONTROL_TICK = 0.25
# One duty cycle: short enough that a paused neighbour holds back within a request or two,
# long enough that the signals cost nothing (two per job per period).
THROTTLE_PERIOD = 0.1
# Without a round for this long, a throttler resumes its jobs and idles.
LEASE = 3.0
# An event is recorded when a neighbour's share moved this much since the last one.
EVENT_STEP = 0.1
# The partitions whose jobs run at the same time as their GPU's other jobs.
CONCURRENT = frozenset({PartitionKind.MPS.value, "executor"})
# Reading a latency log: at most this much per tick, and it is emptied once read past this.
MAX_READ = 1 << 20
TRUNCATE_AT = 1 << 20
_MAX_LINE = 256


class LatencyReader:
    """The samples a job appended to its latency log since the last :meth:`read`.

    gpuosd may read as root in a directory the job's uid owns, so the log is opened without
    following a symlink, without blocking (a FIFO planted there), and read only while it is a
    regular file with one link owned by the directory's owner. Partial lines wait for the rest;
    garbage lines are skipped. A log read to its end past ``TRUNCATE_AT`` bytes is emptied (the
    writer appends, so its next line starts the file again).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._writable = False
        self._tail = b""
        self._offset = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def _open(self) -> bool:
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            try:
                self._fd, self._writable = os.open(self.path, os.O_RDWR | flags), True
            except PermissionError:
                self._fd, self._writable = os.open(self.path, os.O_RDONLY | flags), False
        except OSError:
            return False
        self._tail, self._offset = b"", 0
        if not self._trusted():
            self.close()
            return False
        return True

    def _trusted(self) -> bool:
        try:
            st = os.fstat(self._fd)
            owner = os.stat(self.path.parent).st_uid
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == owner

    def _replaced(self) -> bool:
        try:
            return os.stat(self.path, follow_symlinks=False).st_ino != os.fstat(self._fd).st_ino
        except OSError:
            return True

    def read(self, now: float) -> list[Sample]:
        """New samples (completion times after ``now`` are taken as ``now``)."""
        if self._fd >= 0 and self._replaced():
            self.close()
        if self._fd < 0 and not self._open():
            return []
        try:
            data = os.pread(self._fd, MAX_READ, self._offset)
        except OSError:
            self.close()
            return []
        self._offset += len(data)
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > _MAX_LINE:
            self._tail = b""  # no line is this long: garbage, dropped
        samples = []
        for line in lines:
            parsed = parse_line(line)
            if parsed is not None:
                samples.append(Sample(min(parsed[0], now), parsed[1]))
        if len(data) < MAX_READ and not self._tail and self._offset >= TRUNCATE_AT and self._writable:
            try:
                os.ftruncate(self._fd, 0)
                self._offset = 0
            except OSError:
                pass
        return samples


class _Throttler:
    """One GPU's duty cycle: its jobs run for ``share`` of each period and are paused for the rest."""

    def __init__(self, index: int, pause: Callable[[str, bool], None], resume: Callable[[str], None]) -> None:
        self.index = index
        self._pause = pause
        self._resume = resume
        self._cv = threading.Condition()
        self._share = 1.0
        self._jobs: dict[str, bool] = {}  # job id -> a kernel job (paused at its next boundary)
        self._stopped: set[str] = set()
        self._renewed = time.monotonic()
        self._closed = False
        self.cycles = 0
        self._thread = threading.Thread(target=self._run, name=f"gpuos-throttle-{index}", daemon=True)
        self._thread.start()

    def set(self, share: float, jobs: dict[str, bool]) -> None:
        """Throttle ``jobs`` to ``share`` from the next period on; a job left out is resumed now."""
        with self._cv:
            for job_id in [j for j in self._stopped if j not in jobs]:
                self._resume(job_id)
                self._stopped.discard(job_id)
            self._share, self._jobs = share, dict(jobs)
            self._renewed = time.monotonic()
            self._cv.notify_all()

    def drop(self, job_id: str) -> None:
        """Stop throttling ``job_id`` (resumed now if paused), keeping the others."""
        with self._cv:
            self.set(self._share, {j: k for j, k in self._jobs.items() if j != job_id})

    def renew(self) -> None:
        with self._cv:
            self._renewed = time.monotonic()

    def close(self) -> None:
        self.set(1.0, {})
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=2)

    def _idle(self) -> bool:
        if time.monotonic() - self._renewed > LEASE and self._jobs:
            log.warning("GPU %d: no control round for %.0f s; letting its throttled jobs run", self.index, LEASE)
            self._jobs = {}
        for job_id in list(self._stopped):
            if job_id not in self._jobs or self._share >= 1:
                self._resume(job_id)
                self._stopped.discard(job_id)
        return not self._jobs or self._share >= 1

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and self._idle():
                    self._cv.wait(LEASE)
                if self._closed:
                    return
                share = self._share
                for job_id in list(self._stopped):
                    self._resume(job_id)
                self._stopped.clear()
                self._cv.wait(share * THROTTLE_PERIOD)
                if self._closed or self._idle():
                    continue
                for job_id, kernel in self._jobs.items():
                    self._pause(job_id, kernel)
                    self._stopped.add(job_id)
                self.cycles += 1
                self._cv.wait((1 - self._share) * THROTTLE_PERIOD)


@dataclass
class _Controlled:
    """A placed job with an SLO and its controller."""

    target: float
    gpus: tuple[int, ...]
    reader: LatencyReader
    state: SloState = field(default_factory=SloState)


class Colocation:
    """Holds the SLOs of placed latency jobs by throttling their GPUs' concurrent best-effort jobs."""

    def __init__(self, store: Store, runtime: ProcessRuntime, lifecycle: Lifecycle,
                 settings: SloSettings | None = None) -> None:
        self.store = store
        self.runtime = runtime
        self.lifecycle = lifecycle
        self.settings = settings or SloSettings()
        self._controlled: dict[str, _Controlled] = {}
        self._throttlers: dict[int, _Throttler] = {}
        self._logged: dict[str, float] = {}  # neighbour -> the share its latest event recorded
        self._suspended: set[str] = set()  # neighbours suspended here, restored here
        self._throttled: set[str] = set()  # neighbours ever held below 1 (thread_cap applies to them)
        self._right: dict[int, float] = {}  # GPU -> the right-sized share its neighbours may have
        self._last = 0.0
        self._adopted = False
        # Replaced whole each tick, so the API reads it without the control loop's lock.
        self._statuses: dict[str, ColocationStatus] = {}
        lifecycle.thread_cap = self.thread_cap

    # -- what others read -----------------------------------------------------------------------

    def status(self, job_id: str) -> ColocationStatus | None:
        return self._statuses.get(job_id)

    def statuses(self) -> dict[str, ColocationStatus]:
        return self._statuses

    def thread_cap(self, job: Job, percent: int) -> int:
        """A starting MPS client's thread percentage: a best-effort job throttled before gets at
        most the right-sized share of what it was granted on a GPU whose SLO needs it."""
        if job.spec.qos.latency_sensitive or job.id not in self._throttled or job.placement is None:
            return percent
        right = min((self._right.get(i, 1.0) for i in job.placement.devices), default=1.0)
        return max(1, min(percent, round(percent * right)))

    # -- the round ------------------------------------------------------------------------------

    def round(self, now: float) -> None:
        """One control tick (at most every CONTROL_TICK seconds; between them, only keep the lease)."""
        if now - self._last < CONTROL_TICK:
            for throttler in self._throttlers.values():
                throttler.renew()
            return
        self._last = now
        placed = self.store.placed()
        if not self._adopted:
            # A gpuosd that died mid-cycle left its throttled jobs stopped: a RUNNING
            # concurrent sharer is never meant to be, so each gets SIGCONT once.
            self._adopted = True
            for job in placed:
                if job.state == JobState.RUNNING and self._throttleable(job):
                    self._resume(job.id)
        self._control(placed, now)
        self._throttle(placed, now)

    def close(self) -> None:
        """Let every throttled job run and stop the throttlers (gpuosd is stopping)."""
        for throttler in self._throttlers.values():
            throttler.close()
        self._throttlers.clear()
        for controlled in self._controlled.values():
            controlled.reader.close()

    def _control(self, placed: Iterable[Job], now: float) -> None:
        seen = set()
        for job in placed:
            if job.spec.slo_p99_seconds <= 0 or job.placement is None:
                continue
            seen.add(job.id)
            controlled = self._controlled.get(job.id)
            if controlled is None:
                path = self.runtime.progress_dir(job.id) / LATENCY_FILE
                controlled = self._controlled[job.id] = _Controlled(job.spec.slo_p99_seconds, job.placement.devices,
                                                                    LatencyReader(path))
            samples = controlled.reader.read(now)
            controlled.state = tick(controlled.state, samples, now, controlled.target, self.settings)
        for job_id in [j for j in self._controlled if j not in seen]:
            self._controlled.pop(job_id).reader.close()

    def _throttleable(self, job: Job) -> bool:
        placement = job.placement
        transferring = getattr(self.lifecycle, "transferring", None)
        return (not job.spec.qos.latency_sensitive and placement is not None
                and placement.partition.kind.value in CONCURRENT and job.id not in self.lifecycle.stopping
                and not (transferring is not None and transferring(job.id)))

    def _suspendable(self) -> bool:
        support = getattr(self.lifecycle, "suspend_support", None)
        return hasattr(self.lifecycle, "suspend") and bool(getattr(support, "supported", False))

    def _throttle(self, placed: list[Job], now: float) -> None:
        # Per GPU: the smallest share any of its SLOs asks for, whose SLO it is, and suspension.
        asked: dict[int, tuple[float, str, bool]] = {}
        right: dict[int, float] = {}
        statuses: dict[str, ColocationStatus] = {}
        for job_id, controlled in self._controlled.items():
            state = controlled.state
            statuses[job_id] = status_of(state, controlled.target)
            for index in controlled.gpus:
                share, _, suspend = asked.get(index, (1.0, "", False))
                if state.share < share or (state.suspend and not suspend):
                    asked[index] = (min(share, state.share), job_id, suspend or state.suspend)
                if state.right_share is not None:
                    right[index] = min(right.get(index, 1.0), state.right_share)
        self._right = right
        per_gpu: dict[int, dict[str, bool]] = {}
        shares: dict[int, float] = {}
        for job in placed:
            if job.placement is None or not self._throttleable(job):
                continue
            held = [asked[i] for i in job.placement.devices if i in asked]
            if not held:
                if job.id in self._suspended:
                    self._restore(job, now)
                continue
            share, cause, _ = min(held)
            suspend = any(s for _, _, s in held)
            if suspend:
                cause = next(c for _, c, s in held if s)
            slo_job = self._controlled[cause].state
            reason = f"job {cause}'s SLO: {slo_job.why}" if slo_job.why else f"job {cause}'s SLO"
            if suspend and self._suspendable():
                suspended = self._suspend(job, now)
            else:
                if job.id in self._suspended:
                    self._restore(job, now)
                suspended = False
                if suspend:
                    reason += " (suspension is not supported here: held at the floor)"
            statuses[job.id] = ColocationStatus(share=0.0 if suspended else share, reason=reason,
                                                suspended=suspended)
            self._record(job, 0.0 if suspended else share, reason)
            if suspended or job.state != JobState.RUNNING:
                continue
            if share < 1:
                self._throttled.add(job.id)
            for index in job.placement.devices:
                per_gpu.setdefault(index, {})[job.id] = job.spec.kind == JobKind.KERNEL
                shares[index] = min(shares.get(index, 1.0), share)
        for index in set(self._throttlers) | set(per_gpu):
            throttler = self._throttlers.get(index)
            if throttler is None:
                throttler = self._throttlers[index] = _Throttler(index, self._pause, self._resume)
            throttler.set(shares.get(index, 1.0), per_gpu.get(index, {}))
        live = {j.id for j in placed}
        self._suspended &= live
        self._throttled &= live
        for job_id in [j for j in self._logged if j not in live]:
            del self._logged[job_id]
        self._statuses = statuses

    def _suspend(self, job: Job, now: float) -> bool:
        """Whether ``job`` is (being) suspended for an SLO."""
        if job.id in self._suspended:
            return True
        if job.state != JobState.RUNNING:
            return False
        for throttler in self._throttlers.values():
            throttler.drop(job.id)
        if self.lifecycle.suspend(job, now, requeue=False):  # type: ignore[attr-defined]
            self._suspended.add(job.id)
            return True
        return False

    def _restore(self, job: Job, now: float) -> None:
        if job.state != JobState.PAUSED or job.placement is None:
            return
        if self.lifecycle.restore(job, job.placement.devices[0], now):  # type: ignore[attr-defined]
            self._suspended.discard(job.id)

    def _record(self, job: Job, share: float, reason: str) -> None:
        """An event when a neighbour's share moved by a step (or reached 1 or 0) since the last."""
        last = self._logged.get(job.id, 1.0)
        if abs(share - last) < EVENT_STEP - 1e-9 and not (share != last and share in (0.0, 1.0)):
            return
        self._logged[job.id] = share
        kind = "unthrottled" if share >= 1 else "throttled"
        try:
            self.store.update(job.id, event=kind, event_message=f"share {share:.0%}: {reason}")
        except Exception as exc:  # noqa: BLE001 - an event lost must not stop the throttle
            log.warning("job %s: cannot record its %s event: %s", job.id, kind, exc)

    # -- signals, from the throttler threads ----------------------------------------------------

    def _pause(self, job_id: str, kernel: bool) -> None:
        # As Lifecycle.pause: a kernel job stops itself at its next atom boundary, a process
        # job's whole group stops at once.
        self.runtime.signal(job_id, signal.SIGUSR1 if kernel else signal.SIGSTOP, tree=not kernel)

    def _resume(self, job_id: str) -> None:
        self.runtime.signal(job_id, signal.SIGCONT)
