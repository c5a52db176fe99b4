"""Time-slicing: jobs that share one GPU take turns, one at a time, in quanta.

A pure planner. Given who shares each GPU and whose turn it is, it says which job runs now and
which must pause. The control loop applies that (SIGSTOP/SIGCONT of a process job's group, or a
yield request at the next kernel boundary for a kernel job).

Rules, per GPU:
- Only the jobs of the highest priority present take turns; a job of higher priority that
  arrives takes the GPU at the next round, well within one quantum of the job it displaces.
- Among equals, turns go round-robin in a stable order (by job id), each lasting the policy's
  quantum scaled by the job's weight (its GPU fraction) relative to the others' mean weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MIN_TURN = 0.05


@dataclass(frozen=True)
class Sharer:
    job_id: str
    priority: int
    weight: float = 1.0


@dataclass(frozen=True)
class Turn:
    job_id: str
    until: float


@dataclass(frozen=True)
class Plan:
    turns: dict[int, Turn]
    run: frozenset[str]
    pause: frozenset[str]


def plan_turns(
    sharers: Mapping[int, Sequence[Sharer]],
    turns: Mapping[int, Turn],
    now: float,
    quantum: Callable[[str], float],
) -> Plan:
    """Whose turn it is on each GPU at ``now``; ``quantum(job_id)`` is the policy's quantum."""
    new_turns: dict[int, Turn] = {}
    run: set[str] = set()
    pause: set[str] = set()
    for gpu, group in sharers.items():
        if not group:
            continue
        if len(group) == 1:
            run.add(group[0].job_id)
            continue
        top = max(s.priority for s in group)
        eligible = sorted((s for s in group if s.priority == top), key=lambda s: s.job_id)
        current = turns.get(gpu)
        ids = [s.job_id for s in eligible]
        if current is not None and current.job_id in ids and now < current.until:
            runner = current.job_id
            until = current.until
        else:
            if current is not None and current.job_id in ids:
                runner = ids[(ids.index(current.job_id) + 1) % len(ids)]
            else:
                # No turn yet, or the holder left or was outranked: the next in order after it.
                later = [i for i in ids if current is None or i > current.job_id]
                runner = later[0] if later else ids[0]
            mean_weight = sum(s.weight for s in eligible) / len(eligible)
            weight = next(s.weight for s in eligible if s.job_id == runner)
            until = now + turn_length(quantum(runner), weight, mean_weight)
        new_turns[gpu] = Turn(runner, until)
        run.add(runner)
        pause.update(s.job_id for s in group if s.job_id != runner)
    # A multi-GPU job runs only where it holds every turn; waiting anywhere pauses it.
    run -= pause
    return Plan(new_turns, frozenset(run), frozenset(pause))


def turn_length(quantum: float, weight: float, mean_weight: float) -> float:
    """Seconds one turn lasts: the policy's quantum scaled by the job's weight over the mean weight
    of those taking turns (the scheduler's model of time-slicing uses the same rule)."""
    return max(MIN_TURN, quantum * weight / mean_weight)


def next_deadline(turns: Mapping[int, Turn]) -> float | None:
    """When the earliest turn ends (the control loop wakes then)."""
    return min((t.until for t in turns.values()), default=None)
