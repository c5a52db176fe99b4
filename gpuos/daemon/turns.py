"""Whose turn it is on each time-shared GPU, kept between rounds (the planning is gpuos.partitions.timeslice)."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

from gpuos.jobs import Job, PartitionKind
from gpuos.partitions.timeslice import MIN_TURN, Plan, Sharer, Turn, next_deadline, plan_turns
from gpuos.scheduler.snapshot import MILLI

# While a turn waits for its job's memory (a suspend or restore in flight), the loop looks again
# this often: a transfer ends on a worker thread, and the turn should start soon after it.
RECHECK = 0.05


class Turns:
    """The current turn on each time-shared GPU."""

    def __init__(self) -> None:
        self._turns: dict[int, Turn] = {}
        # Each current turn's length, so a turn whose job must first get its memory back can
        # start over when it does (postpone).
        self._lengths: dict[int, float] = {}
        # When each time-sharer's turn last held its GPU: the residency rule suspends the least
        # recently run first (gpuos.partitions.residency).
        self._last_ran: dict[str, float] = {}
        self._recheck: float | None = None

    def deadline(self) -> float | None:
        """When the earliest turn ends (the control loop wakes then); None when no GPU is time-shared."""
        due = next_deadline(self._turns)
        if self._recheck is not None:
            due = self._recheck if due is None else min(due, self._recheck)
        return due

    def last_ran(self, job_id: str) -> float:
        """When ``job_id``'s turn last held its GPU (0: never, as far as this daemon saw)."""
        return self._last_ran.get(job_id, 0.0)

    def postpone(self, gpu: int, now: float) -> None:
        """GPU ``gpu``'s runner cannot run yet (its memory is not back): its turn starts over from
        ``now``, so it gets its whole turn once it can run, and the loop looks again soon."""
        turn = self._turns.get(gpu)
        if turn is not None:
            self._turns[gpu] = Turn(turn.job_id, now + self._lengths.get(gpu, MIN_TURN))
        self._recheck = now + RECHECK

    def give(self, gpu: int, job_id: str, now: float, length: float) -> None:
        """Start a turn of ``length`` seconds for ``job_id`` on GPU ``gpu`` now: a time-sharer whose
        start had to wait for room (its neighbour's memory suspended for it) runs first, rather than
        the round-robin handing the GPU straight back to the neighbour it displaced."""
        length = max(MIN_TURN, length)
        self._turns[gpu] = Turn(job_id, now + length)
        self._lengths[gpu] = length
        self._last_ran[job_id] = now

    def forget(self, job_id: str) -> None:
        """``job_id`` left its GPUs: the turns it held end now."""
        for gpu, turn in list(self._turns.items()):
            if turn.job_id == job_id:
                del self._turns[gpu]
        self._last_ran.pop(job_id, None)

    def plan(
        self, placed: Iterable[Job], stopping: Container[str], now: float, quantum: Callable[[Job], float]
    ) -> tuple[Plan, dict[str, Job]] | None:
        """Advance the turns of the time-shared jobs among ``placed`` (those not ``stopping``) to ``now``.

        Returns the plan (who runs, who pauses) and the jobs it names by id; None when no GPU is
        time-shared and none was.
        """
        sharers: dict[int, list[Sharer]] = {}
        jobs: dict[str, Job] = {}
        for job in placed:
            placement = job.placement
            if placement is None or placement.kind is not PartitionKind.TIMESLICE or job.id in stopping:
                continue
            jobs[job.id] = job
            weight = (placement.granted.gpu_milli or MILLI) / MILLI
            for index in placement.devices:
                sharers.setdefault(index, []).append(Sharer(job.id, int(job.spec.priority), weight))
        if not sharers and not self._turns:
            return None
        plan = plan_turns(sharers, self._turns, now, lambda job_id: quantum(jobs[job_id]))
        self._lengths = {
            gpu: turn.until - now if self._turns.get(gpu) != turn else self._lengths.get(gpu, turn.until - now)
            for gpu, turn in plan.turns.items()
        }
        self._turns = plan.turns
        self._recheck = None
        for job_id in plan.run:
            self._last_ran[job_id] = now
        return plan, jobs
