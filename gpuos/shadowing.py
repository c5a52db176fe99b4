"""What shadow mode reports: where a candidate's decisions differ from the active policy's, and their simulated effect.

gpuos/daemon/shadow.py runs the shadow; these are the records it hands the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gpuos.scheduler.snapshot import Decision, Place, Preempt

DIFF_KINDS = ("placed_only_by_active", "placed_only_by_candidate", "other_gpus", "order_differs",
              "preempted_only_by_active", "preempted_only_by_candidate")


@dataclass(frozen=True)
class RoundDiff:
    """Where one round's candidate decisions differ from the active policy's (jobs by id)."""

    time: float
    placed_only_by_active: tuple[str, ...] = ()
    placed_only_by_candidate: tuple[str, ...] = ()
    other_gpus: tuple[str, ...] = ()
    order_differs: bool = False
    preempted_only_by_active: tuple[str, ...] = ()
    preempted_only_by_candidate: tuple[str, ...] = ()

    @property
    def differs(self) -> bool:
        return any(getattr(self, kind) for kind in DIFF_KINDS)

    def counts(self) -> dict[str, int]:
        """Jobs per kind of difference (``order_differs``: 1 for a round in another order)."""
        return {kind: int(v) if isinstance(v := getattr(self, kind), bool) else len(v) for kind in DIFF_KINDS}


def compare(active: Sequence[Decision], candidate: Sequence[Decision], now: float) -> RoundDiff:
    """How ``candidate``'s decisions for a round differ from ``active``'s."""

    def places(decisions: Sequence[Decision]) -> dict[str, Place]:
        return {d.job_id: d for d in decisions if isinstance(d, Place)}

    def preempts(decisions: Sequence[Decision]) -> set[str]:
        return {d.job_id for d in decisions if isinstance(d, Preempt)}

    mine, theirs = places(active), places(candidate)
    both = [j for j in mine if j in theirs]
    in_their_order = [j for j in theirs if j in mine]
    moved = tuple(j for j in both if (mine[j].node, mine[j].gpus, mine[j].sharing, mine[j].mig_profile)
                  != (theirs[j].node, theirs[j].gpus, theirs[j].sharing, theirs[j].mig_profile))
    stop_mine, stop_theirs = preempts(active), preempts(candidate)
    return RoundDiff(
        time=now,
        placed_only_by_active=tuple(j for j in mine if j not in theirs),
        placed_only_by_candidate=tuple(j for j in theirs if j not in mine),
        other_gpus=moved,
        order_differs=both != in_their_order,
        preempted_only_by_active=tuple(sorted(stop_mine - stop_theirs)),
        preempted_only_by_candidate=tuple(sorted(stop_theirs - stop_mine)),
    )


@dataclass(frozen=True)
class ShadowState:
    on: bool
    candidate: str
    since: float
    rounds: int
    differing_rounds: int
    disabled_reason: str
    counts: dict[str, int] = field(default_factory=dict)
    examples: tuple[RoundDiff, ...] = ()


@dataclass(frozen=True)
class Effect:
    """One policy's simulated figures over the shadow's window (the simulator's definitions)."""

    policy: str
    mean_jct: float
    p99_queue_delay_ls: float
    slo_attainment: float


@dataclass(frozen=True)
class SimulatedEffect:
    active: Effect | None
    candidate: Effect | None
    jobs: int
    left_out: int
    note: str = ""
