"""SLO-driven colocation's controller: a latency job's samples in, its best-effort neighbours' share out.

Pure: :func:`tick` maps the controller's :class:`SloState`, the latency samples that arrived
since the last tick and the time to the next state; nothing here reads a clock, a file or a
process, so the simulator and the tests drive it exactly as gpuosd does
(gpuos/daemon/colocation.py applies the share by pausing the neighbours a duty cycle at a time).

The share ``d`` is the fraction of time the best-effort jobs sharing the latency job's GPU may
run, in [floor, 1]. Each tick judges the p99 of the samples taken at the current share (those
that completed after the last change had settled):

- p99 above the SLO: multiplicative decrease (``d *= decrease``), and the share that broke it
  becomes a ceiling that increases stay below for ``probe_after`` seconds;
- p99 below ``(1 - margin) * SLO``: additive increase (``d += increase``);
- in between, or with fewer than ``min_samples`` fresh samples: hold. The dead band and the
  fresh-samples rule are the hysteresis: noise inside the band moves nothing, and a change is
  judged only on samples taken after it.

At the floor, ``suspend_after`` verdicts that still break the SLO ask for the neighbours'
suspension; ``restore_after`` seconds of comfortable verdicts while suspended ask for their
restore. With no samples for ``idle_seconds`` the load has left and the share climbs back to 1
a step per tick. Right-sizing: the largest share that held the SLO over a whole window is kept
(and forgotten when that share later breaks it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

# Shares closer than this are the same share (floating-point steps).
_EPS = 1e-9


@dataclass(frozen=True)
class Sample:
    """One request's latency as the job reported it: when it completed (Unix time) and how long it took."""

    time: float
    seconds: float


@dataclass(frozen=True)
class SloSettings:
    """The controller's constants; docs/partitions.md says why each has its value."""

    window: int = 200
    window_seconds: float = 10.0
    min_samples: int = 50
    settle_seconds: float = 0.2
    margin: float = 0.1
    decrease: float = 0.5
    increase: float = 0.05
    floor: float = 0.05
    suspend_after: int = 2
    restore_after: float = 5.0
    probe_after: float = 30.0
    idle_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.min_samples < 1 or self.window < self.min_samples:
            raise ValueError(f"need 1 <= min_samples <= window, got {self.min_samples} and {self.window}")
        if not 0 < self.decrease < 1 or not 0 < self.increase <= 1 or not 0 <= self.margin < 1:
            raise ValueError("decrease must be in (0, 1), increase in (0, 1], margin in [0, 1)")
        if not 0 <= self.floor < 1:
            raise ValueError(f"floor must be in [0, 1), got {self.floor}")


@dataclass(frozen=True)
class SloState:
    """What the controller remembers between ticks."""

    share: float = 1.0
    # The latest samples (at most ``window``, none older than ``window_seconds``), oldest first.
    recent: tuple[Sample, ...] = ()
    # When the share last changed (or suspension began or ended): verdicts use later samples only.
    changed_at: float = 0.0
    # A share that broke the SLO, and when: increases stay below it until ``probe_after`` passed.
    ceiling: float = 1.0
    ceiling_at: float = -math.inf
    # The largest share that held the SLO over a whole window; None until one did.
    right_share: float | None = None
    # Verdicts at the floor that still broke the SLO, in a row.
    failed_at_floor: int = 0
    suspend: bool = False
    # Suspension did not hold the SLO (it fails on its own): not again before this time.
    no_suspend_until: float = -math.inf
    last_sample: float = -math.inf
    # Why the share is what it is, for people (the latest verdict).
    why: str = field(default="", compare=False)


def p99(latencies: Sequence[float]) -> float:
    """The 99th percentile (nearest rank) of ``latencies``; 0 for none."""
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.99 * len(ordered)) - 1))]


def attainment(latencies: Sequence[float], target: float) -> float:
    """The fraction of ``latencies`` within ``target`` (1 for none)."""
    if not latencies:
        return 1.0
    return sum(1 for x in latencies if x <= target) / len(latencies)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def tick(state: SloState, samples: Sequence[Sample], now: float, target: float,
         settings: SloSettings = SloSettings()) -> SloState:
    """The state after one tick at time ``now`` with the ``samples`` that arrived since the last."""
    s = settings
    if samples:
        last = max(state.last_sample, max(x.time for x in samples))
        merged = sorted((*state.recent, *samples), key=lambda x: x.time)
    else:
        last, merged = state.last_sample, list(state.recent)
    recent = tuple(x for x in merged[-s.window:] if x.time > now - s.window_seconds)
    state = replace(state, recent=recent, last_sample=last)

    if now - last >= s.idle_seconds:
        # The load left: nothing to protect, and what was learnt under it is stale.
        if state.share >= 1 - _EPS and not state.suspend:
            return replace(state, ceiling=1.0, ceiling_at=-math.inf, failed_at_floor=0, why="no load")
        return replace(state, share=min(1.0, state.share + s.increase), suspend=False, changed_at=now,
                       ceiling=1.0, ceiling_at=-math.inf, failed_at_floor=0, why="no load: letting go")

    fresh = [x.seconds for x in recent if x.time >= state.changed_at + s.settle_seconds]
    if len(fresh) < s.min_samples:
        return state
    measured = p99(fresh)
    full = len(fresh) >= s.window or (
        len(recent) > 1 and recent[-1].time - max(recent[0].time, state.changed_at) >= s.window_seconds * 0.8)

    if measured > target:
        why = f"p99 {_ms(measured)} > SLO {_ms(target)}"
        right = state.right_share
        if right is not None and state.share <= right + _EPS and not state.suspend:
            right = None  # a share once right-sized broke the SLO: the load changed, learn anew
        if state.suspend and now - state.changed_at >= s.restore_after:
            # It fails with the neighbours suspended too: not theirs to hold. Back to the floor,
            # and no suspension again until a probe's time has passed.
            return replace(state, suspend=False, failed_at_floor=0, changed_at=now, right_share=right,
                           no_suspend_until=now + s.probe_after,
                           why=why + " with the neighbours suspended: restored to the floor")
        if state.share <= s.floor + _EPS:
            failed = state.failed_at_floor + 1
            suspend = state.suspend or (failed >= s.suspend_after and now >= state.no_suspend_until)
            return replace(state, failed_at_floor=failed, suspend=suspend, right_share=right,
                           changed_at=now if suspend != state.suspend else state.changed_at,
                           ceiling=state.share, ceiling_at=now,
                           why=why + (": suspended" if suspend else ": at the floor"))
        share = max(s.floor, state.share * s.decrease)
        return replace(state, share=share, changed_at=now, ceiling=state.share, ceiling_at=now, right_share=right,
                       failed_at_floor=0, why=why + ": throttled")

    # The SLO held at this share.
    right = state.right_share
    if full and not state.suspend:
        right = state.share if right is None else max(right, state.share)
    state = replace(state, right_share=right)
    if measured >= (1 - s.margin) * target:
        return replace(state, why=f"p99 {_ms(measured)} within SLO {_ms(target)}: holding")
    why = f"p99 {_ms(measured)} well within SLO {_ms(target)}"
    if state.suspend:
        if now - state.changed_at >= s.restore_after:
            return replace(state, suspend=False, failed_at_floor=0, changed_at=now, why=why + ": restored")
        return replace(state, why=why + ": suspended a while longer")
    limit = 1.0
    if now - state.ceiling_at < s.probe_after:
        limit = max(state.share, state.ceiling - s.increase)
    share = min(limit, state.share + s.increase)
    if share <= state.share + _EPS:
        return replace(state, failed_at_floor=0, why=why + f": held below {state.ceiling:.2f}, which broke it")
    return replace(state, share=share, changed_at=now, failed_at_floor=0, why=why + ": letting go")


@dataclass(frozen=True)
class ColocationStatus:
    """What colocation shows for one job (gpuosctl get, the API's Job.colocation, the metrics).

    A job with an SLO fills the first group of fields; a best-effort job throttled for one, the
    second (``share``: its fraction of time, 1 when not held back; ``reason``: why).
    """

    slo_p99_seconds: float = 0.0
    p99_seconds: float = 0.0
    attainment: float = 1.0
    samples: int = 0
    neighbour_share: float = 1.0
    right_share: float | None = None
    share: float = 1.0
    reason: str = ""
    suspended: bool = False

    @property
    def has_slo(self) -> bool:
        return self.slo_p99_seconds > 0


def status_of(state: SloState, target: float) -> ColocationStatus:
    """A job with an SLO as its controller's ``state`` shows it."""
    latencies = [x.seconds for x in state.recent]
    return ColocationStatus(
        slo_p99_seconds=target, p99_seconds=p99(latencies), attainment=attainment(latencies, target),
        samples=len(latencies), neighbour_share=0.0 if state.suspend else state.share,
        right_share=state.right_share, reason=state.why, suspended=state.suspend,
    )
