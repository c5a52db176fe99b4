"""Whose turn it is on each time-shared GPU, kept between rounds (the planning is gpuos.partitions.timeslice)."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

from gpuos.jobs import Job, PartitionKind
from gpuos.partitions.timeslice import Plan, Sharer, Turn, next_deadline, plan_turns
from gpuos.scheduler.snapshot import MILLI


class Turns:
    """The current turn on each time-shared GPU."""

    def __init__(self) -> None:
        self._turns: dict[int, Turn] = {}

    def deadline(self) -> float | None:
        """When the earliest turn ends (the control loop wakes then); None when no GPU is time-shared."""
        return next_deadline(self._turns)

    def forget(self, job_id: str) -> None:
        """``job_id`` left its GPUs: the turns it held end now."""
        for gpu, turn in list(self._turns.items()):
            if turn.job_id == job_id:
                del self._turns[gpu]

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
        self._turns = plan.turns
        return plan, jobs
