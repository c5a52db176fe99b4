"""Draining a GPU: what becomes of each job on it, a pure rule the daemon applies.

A draining GPU takes no new placement. Its jobs that can move are suspended to host memory and
requeued, and the scheduler restores each onto another GPU of the same model: that needs the
driver to restore across GPUs (``SuspendSupport.cross_gpu``) and such a GPU to exist. A job
moves only if it is a single-GPU job of our own process (not a reservation for work started
elsewhere) holding a whole GPU or a time-slice turn: an MPS client or a MIG slice is tied to a
partition the target GPU would first have to have. The others finish where they are, or, when
the caller asks (``requeue``), are stopped and requeued for a restart elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuos.jobs import Job, JobKind, PartitionKind


@dataclass(frozen=True)
class Occupant:
    """A job on the GPU being drained, as the rule sees it."""

    job_id: str
    movable: bool  # single GPU, our process, a whole GPU or a turn (module docstring)


@dataclass(frozen=True)
class DrainPlan:
    """What draining one GPU does to its jobs, and the words that say so."""

    index: int
    migrate: tuple[str, ...] = ()  # suspended and restored on another GPU
    requeue: tuple[str, ...] = ()  # stopped and requeued for a restart
    stay: tuple[str, ...] = ()  # left to finish on the draining GPU
    message: str = ""


def plan_drain(index: int, occupants: Sequence[Occupant], *, cross_gpu: bool, spare: bool,
               requeue: bool, why_not: str = "") -> DrainPlan:
    """Drain GPU ``index``: ``cross_gpu`` says whether the driver restores onto another GPU
    (``why_not`` says why not, when it cannot), ``spare`` whether another healthy GPU of the same
    model is in service, ``requeue`` whether the jobs that cannot move are stopped and requeued."""
    can_move = cross_gpu and spare
    migrate = tuple(o.job_id for o in occupants if can_move and o.movable)
    rest = tuple(o.job_id for o in occupants if o.job_id not in migrate)
    requeued, stay = (rest, ()) if requeue else ((), rest)
    parts = [f"GPU {index} is draining: it takes no new work"]
    if not cross_gpu:
        parts.append(f"no job can move to another GPU here ({why_not or 'cross-GPU restore unsupported'})")
    elif not spare:
        parts.append("no other GPU of the same model is in service to move jobs to")
    if migrate:
        parts.append(f"{_count(migrate)} moving to another GPU by suspend and restore")
    if requeued:
        parts.append(f"{_count(requeued)} stopped and requeued for a restart")
    if stay:
        parts.append(f"{_count(stay)} left to finish here (--requeue restarts them elsewhere)")
    if not occupants:
        parts.append("no jobs were on it")
    return DrainPlan(index, migrate, requeued, stay, "; ".join(parts))


def _count(ids: Sequence[str]) -> str:
    return f"{len(ids)} job{'s' if len(ids) != 1 else ''} ({', '.join(ids)})"


def can_move(job: Job) -> bool:
    """Whether ``job``'s memory may be suspended and restored elsewhere (module docstring): the
    one rule for draining and for preemption by suspension."""
    placement = job.placement
    return (
        placement is not None and len(placement.devices) == 1 and job.spec.kind != JobKind.EXTERNAL
        and placement.kind in (PartitionKind.EXCLUSIVE, PartitionKind.TIMESLICE)
    )
