"""The kernel executor's priority gate: whose atom runs next on the executor's GPU.

Every job in the executor holds the gate while it runs (its kernels' atoms and the host work
between them) and passes through it between atoms (:meth:`PriorityGate.boundary`). One job holds
it at a time. At a boundary the holder keeps the gate unless another job of the same or a higher
priority is waiting; then the gate goes to the waiter with the highest priority (high > normal >
low) that has waited longest, and the old holder queues behind it. So a high-priority job waits
for at most the atom in flight, jobs of equal priority take turns atom by atom (round robin), and
a lower-priority job runs only while no higher one wants the GPU.

A paused job takes no atoms: it gives the gate up at its next boundary and waits, without
blocking anyone, until resumed (``on_park`` tells its client once it has let go). A cancelled job's
next :meth:`~PriorityGate.enter` or boundary raises :class:`Cancelled`, waking it if it waits.

Pure Python, no torch: the executor's threads share one gate, and tests drive it with threads.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


class Cancelled(Exception):
    """The job was cancelled (client gone, revoked, executor stopping); ``reason`` says which."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id} cancelled: {reason}")


@dataclass
class _Entry:
    rank: int
    ticket: int = 0
    waiting: bool = False
    paused: bool = False
    announced: bool = False  # on_park has run for the current pause
    cancelled: str = ""
    atoms: int = 0


class PriorityGate:
    """Thread-safe; job ids are the executor's. ``on_grant(job_id)``, if given, is called (under
    the gate's lock, so it must be quick) each time a job is granted an atom."""

    def __init__(self, on_grant: Callable[[str], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._jobs: dict[str, _Entry] = {}
        self._holder: str | None = None
        self._tickets = itertools.count()
        self._on_grant = on_grant

    def add(self, job_id: str, priority: str) -> None:
        if priority not in PRIORITY_RANK:
            raise ValueError(f"priority {priority!r} is not one of {', '.join(PRIORITY_RANK)}")
        with self._cond:
            if job_id in self._jobs:
                raise ValueError(f"job {job_id} is already at the gate")
            self._jobs[job_id] = _Entry(PRIORITY_RANK[priority])

    def remove(self, job_id: str) -> None:
        """Forget the job, giving the gate up if it holds it (a wait of its own raises Cancelled)."""
        with self._cond:
            entry = self._jobs.pop(job_id, None)
            if entry is not None and not entry.cancelled:
                entry.cancelled = "removed from the gate"
            if self._holder == job_id:
                self._holder = None
            self._cond.notify_all()

    def enter(self, job_id: str, on_park: Callable[[], None] | None = None) -> None:
        """Wait until ``job_id`` may run its next atom, and take the gate."""
        with self._cond:
            entry = self._entry(job_id)
            if self._holder == job_id:
                raise RuntimeError(f"job {job_id} already holds the gate")
            self._wait(job_id, entry, on_park)

    def leave(self, job_id: str) -> None:
        with self._cond:
            if self._holder == job_id:
                self._holder = None
                self._cond.notify_all()

    def boundary(self, job_id: str, on_park: Callable[[], None] | None = None) -> None:
        """Between two atoms of the holder: keep the gate, or hand it over and wait for it back."""
        with self._cond:
            entry = self._entry(job_id)
            if self._holder != job_id:
                raise RuntimeError(f"job {job_id} does not hold the gate")
            if not entry.cancelled and not entry.paused and not self._contender(entry.rank):
                self._grant(job_id, entry)
                return
            self._holder = None
            self._cond.notify_all()
            self._wait(job_id, entry, on_park)

    @contextmanager
    def holding(self, job_id: str, on_park: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the gate for the block (its first atom onwards); give it up however it ends."""
        self.enter(job_id, on_park)
        try:
            yield
        finally:
            self.leave(job_id)

    def pause(self, job_id: str) -> bool:
        """Pause the job from its next boundary on; False if it was paused already."""
        with self._cond:
            entry = self._jobs.get(job_id)
            if entry is None or entry.paused:
                return False
            entry.paused, entry.announced = True, False
            self._cond.notify_all()
            return True

    def resume(self, job_id: str) -> None:
        with self._cond:
            entry = self._jobs.get(job_id)
            if entry is not None and entry.paused:
                entry.paused = False
                self._cond.notify_all()

    def cancel(self, job_id: str, reason: str) -> None:
        with self._cond:
            entry = self._jobs.get(job_id)
            if entry is not None and not entry.cancelled:
                entry.cancelled = reason
                self._cond.notify_all()

    def holder(self) -> str | None:
        with self._cond:
            return self._holder

    def waiting(self, job_id: str) -> bool:
        """Whether the job is blocked at the gate (queued for an atom, or parked while paused)."""
        with self._cond:
            entry = self._jobs.get(job_id)
            return entry is not None and entry.waiting

    def paused(self, job_id: str) -> bool:
        with self._cond:
            entry = self._jobs.get(job_id)
            return entry is not None and entry.paused

    def parked(self, job_id: str) -> bool:
        """Whether the job is paused and has let go of the gate (its ``on_park`` has run)."""
        with self._cond:
            entry = self._jobs.get(job_id)
            return entry is not None and entry.paused and entry.announced

    def cancelled(self, job_id: str) -> bool:
        """Whether the job was cancelled and has yet to reach the boundary that ends it."""
        with self._cond:
            entry = self._jobs.get(job_id)
            return entry is not None and bool(entry.cancelled)

    def atoms(self, job_id: str) -> int:
        """Atoms granted to the job so far (its first, and one per boundary passed)."""
        with self._cond:
            entry = self._jobs.get(job_id)
            return entry.atoms if entry is not None else 0

    # --- under the lock ---------------------------------------------------------------------

    def _entry(self, job_id: str) -> _Entry:
        entry = self._jobs.get(job_id)
        if entry is None:
            raise KeyError(f"job {job_id} is not at the gate")
        return entry

    def _contender(self, rank: int) -> bool:
        return any(e.waiting and not e.paused and not e.cancelled and e.rank <= rank for e in self._jobs.values())

    def _next(self) -> str | None:
        eligible = [(e.rank, e.ticket, job_id) for job_id, e in self._jobs.items()
                    if e.waiting and not e.paused and not e.cancelled]
        return min(eligible)[2] if eligible else None

    def _wait(self, job_id: str, entry: _Entry, on_park: Callable[[], None] | None) -> None:
        entry.ticket = next(self._tickets)
        entry.waiting = True
        self._cond.notify_all()  # a waiter's arrival can change who is next
        try:
            while True:
                if entry.cancelled:
                    raise Cancelled(job_id, entry.cancelled)
                if entry.paused and not entry.announced and on_park is not None:
                    entry.announced = True
                    # The callback talks to the client: never under the lock, which every job needs.
                    self._cond.release()
                    try:
                        on_park()
                    finally:
                        self._cond.acquire()
                    continue
                if self._holder is None and self._next() == job_id:
                    break
                self._cond.wait()
        finally:
            entry.waiting = False
            self._cond.notify_all()
        self._holder = job_id
        self._grant(job_id, entry)

    def _grant(self, job_id: str, entry: _Entry) -> None:
        entry.atoms += 1
        if self._on_grant is not None:
            self._on_grant(job_id)
