"""The ship rule of the held-out protocol (gpuos.agents.verify): every condition can fail alone."""

from __future__ import annotations

import pytest

from gpuos.agents.stats import Gain, bootstrap_gain
from gpuos.agents.verify import ROBUSTNESS, ship_reasons

CLEAR_WIN = bootstrap_gain([1.15, 1.2, 1.12, 1.18, 1.25])
GUARDS = {"slowdown": 0.01, "slo_miss": -0.01}
ROBUST = dict.fromkeys(ROBUSTNESS, 0.08)


def test_a_clear_robust_win_that_loses_no_guard_ships() -> None:
    assert CLEAR_WIN.low > 0.1
    assert ship_reasons(CLEAR_WIN, GUARDS, ROBUST) == []


@pytest.mark.parametrize(
    ("gain", "guards", "robust", "invalid", "why"),
    [
        (bootstrap_gain([1.05, 1.08, 1.06, 1.07, 1.09]), GUARDS, ROBUST, "", "under the 10% needed"),
        (bootstrap_gain([1.9, 0.8, 0.85, 1.7, 0.9]), GUARDS, ROBUST, "", "does not exclude 0"),
        (CLEAR_WIN, {**GUARDS, "idle_while_waiting": -0.03}, ROBUST, "", "guard idle_while_waiting loses 3.0%"),
        (CLEAR_WIN, GUARDS, {**ROBUST, next(iter(ROBUSTNESS)): -0.01}, "", "does not hold at interference 0.1"),
        (CLEAR_WIN, GUARDS, ROBUST, "starvation on t", "invalid: starvation on t"),
    ],
)
def test_each_condition_alone_stops_shipping(gain: Gain, guards: dict[str, float], robust: dict[str, float],
                                             invalid: str, why: str) -> None:
    reasons = ship_reasons(gain, guards, robust, invalid)
    assert len(reasons) >= 1 and any(why in r for r in reasons), reasons


def test_the_robustness_corners_span_interference_and_preemption_cost() -> None:
    corners = {(c.interference, c.preemption_cost) for c in ROBUSTNESS.values()}
    assert corners == {(0.1, 10.0), (0.1, 120.0), (0.5, 10.0), (0.5, 120.0)}
