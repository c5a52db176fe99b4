"""Which time-sharers' memory stays on an oversubscribed GPU: the resident-set rule.

A pure planner. On a time-shared GPU whose jobs can be suspended to host memory, the sharers'
memory limits may add up to more than the GPU holds (``memory_oversubscription``); what must fit
is the resident set, the sharers whose memory is on the GPU now. Before the job whose turn it is
runs, its memory must be resident, and the resident set with it must fit. This module says what
that takes on one GPU; the control loop applies it through the lifecycle's suspend and restore.

Rules, per GPU:
- The runner, if suspended, is restored first (``restore``), once the room for it is free; its
  turn starts when the restore is done.
- Paused sharers are suspended, least recently run first (the one whose next turn is furthest
  off in round-robin, so the one least likely to be wanted back soon), until the runner's memory
  fits beside the rest. Only as many as needed: memory is moved only when a turn needs the room.
- While any sharer of the GPU is in transfer (suspending or restoring), nothing else moves and
  the runner waits (``wait``): what the transfer frees or takes decides what else must move, so
  deciding before it ends could move memory for nothing.
- A sharer that cannot be suspended (its process not attached yet, say) stays resident; if the
  runner cannot fit without moving it, the runner waits too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """One time-sharer of the GPU as the rule sees it."""

    job_id: str
    memory: int  # its memory limit on the GPU, bytes
    resident: bool = True  # its memory is on the GPU (False: suspended to host)
    last_ran: float = 0.0  # when its turn last held the GPU (0: never)
    transferring: bool = False  # a suspend or restore of it is in flight
    suspendable: bool = True  # its memory can be moved out now


@dataclass(frozen=True)
class Residency:
    """What one GPU needs before its runner may run."""

    suspend: tuple[str, ...] = ()  # paused sharers to move to host memory, in this order
    # The runner's own memory must come back now (room is free for it); a suspended runner
    # whose room is still being made has ``suspend`` or ``wait`` instead, and this next round.
    restore: bool = False
    # The runner cannot run yet even after the moves above: a transfer is in flight that it must
    # wait for, or the room cannot be made now (unsuspendable neighbours).
    wait: bool = False

    @property
    def ready(self) -> bool:
        """The runner may run now: nothing to move and nothing to wait for."""
        return not (self.suspend or self.restore or self.wait)


def plan_residency(sharers: Sequence[Resident], runner: str, memory_total: int) -> Residency:
    """What GPU ``memory_total`` bytes big needs so that ``runner`` (one of ``sharers``) can run.

    Raises ValueError when ``runner`` is not among ``sharers``.
    """
    me = next((s for s in sharers if s.job_id == runner), None)
    if me is None:
        raise ValueError(f"runner {runner!r} is not one of the GPU's sharers")
    others = [s for s in sharers if s.job_id != runner]
    if me.transferring or any(s.transferring for s in others):
        # What a transfer in flight frees (or takes) decides what else must move: decide after it.
        return Residency(wait=True)
    used = sum(s.memory for s in others if s.resident)
    # Least recently run first; ties (never ran) by id, so the choice is stable between rounds.
    movable = sorted((s for s in others if s.resident and not s.transferring and s.suspendable),
                     key=lambda s: (s.last_ran, s.job_id))
    suspend: list[str] = []
    for sharer in movable:
        if used + me.memory <= memory_total:
            break
        suspend.append(sharer.job_id)
        used -= sharer.memory
    # Room will come only once a neighbour can be moved.
    wait = used + me.memory > memory_total
    # The runner's memory comes back only into room already free: not while the suspends it
    # needs are still to be done.
    restore = not me.resident and not me.transferring and not suspend and not wait
    return Residency(tuple(suspend), restore=restore, wait=wait)
