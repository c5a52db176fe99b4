"""Suspend and restore transfers, run off the control loop.

A transfer moves a process's GPU memory over the host link (gigabytes, so up to seconds): the
control loop must never wait for one. :class:`Transfers` runs each on a worker thread, one per
GPU (two transfers through the same GPU's host link would only share its bandwidth), and hands
the results back to the control loop, which collects them each round and records them: store
writes stay on the control loop's thread, as everywhere else in the lifecycle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from gpuos.devices.backend import Transfer
from gpuos.errors import GpuosError

SUSPEND = "suspend"
RESTORE = "restore"


@dataclass(frozen=True)
class Move:
    """One transfer asked for: a job's memory leaving GPU ``index`` (suspend) or coming onto it
    (restore, from the GPU it left, ``from_index``)."""

    job_id: str
    kind: str  # SUSPEND or RESTORE
    index: int
    pid: int
    from_index: int = -1
    requeue: bool = False  # a suspend that preempts: the job goes back to the queue when done
    started_at: float = 0.0


@dataclass(frozen=True)
class Moved:
    """A finished transfer: its figures, or the error that stopped it (then ``transfer`` is None)."""

    move: Move
    transfer: Transfer | None
    error: str = ""


class Transfers:
    """The transfers in flight, one worker thread per GPU, and the ones finished but not yet collected."""

    def __init__(self, done: Callable[[], None] | None = None) -> None:
        # ``done`` is called (on the worker thread) when a transfer ends, to wake the control loop.
        self._done = done
        self._lock = threading.Lock()
        self._workers: dict[int, ThreadPoolExecutor] = {}
        self._busy: dict[str, Move] = {}
        self._finished: list[Moved] = []

    def busy(self, job_id: str) -> bool:
        """A transfer of ``job_id`` is in flight or finished but not yet collected."""
        with self._lock:
            return job_id in self._busy

    def in_flight(self) -> list[Move]:
        with self._lock:
            return list(self._busy.values())

    def begin(self, move: Move, work: Callable[[], Transfer]) -> bool:
        """Run ``work`` (which does ``move``) on GPU ``move.index``'s worker; False if the job
        already has a transfer under way."""
        with self._lock:
            if move.job_id in self._busy:
                return False
            self._busy[move.job_id] = move
            worker = self._workers.get(move.index)
            if worker is None:
                worker = self._workers[move.index] = ThreadPoolExecutor(1, f"gpuos-transfer-{move.index}")
        future = worker.submit(work)
        future.add_done_callback(lambda f: self._finish(move, f))
        return True

    def _finish(self, move: Move, future: Future[Transfer]) -> None:
        error = future.exception()
        if error is None:
            moved = Moved(move, future.result())
        elif isinstance(error, GpuosError):
            moved = Moved(move, None, str(error))
        else:
            # Not the driver's refusal but a fault of ours; still the job's record must say it.
            moved = Moved(move, None, f"{type(error).__name__}: {error}")
        with self._lock:
            self._finished.append(moved)
        if self._done is not None:
            self._done()

    def collect(self) -> list[Moved]:
        """The transfers that ended since the last call, in the order they ended; their jobs are
        no longer busy once collected (the caller records each)."""
        with self._lock:
            out, self._finished = self._finished, []
            for moved in out:
                self._busy.pop(moved.move.job_id, None)
        return out

    def close(self) -> None:
        """Wait for the transfers in flight (a half-copied process must not be abandoned)."""
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.shutdown(wait=True)


def describe(transfer: Transfer) -> str:
    """The figures an event shows: bytes, seconds and GB/s."""
    rate = transfer.bytes_per_s / 1e9
    return f"{transfer.bytes / 1e9:.2f} GB in {transfer.seconds:.3f} s ({rate:.1f} GB/s)"
