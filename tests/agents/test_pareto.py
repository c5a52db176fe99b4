"""The Pareto front keeps specialists, and selection leans toward where the incumbent fails."""

from __future__ import annotations

import random

from gpuos.agents.pareto import Scored, dominates, failures, pareto_front, select_parent

GENERALIST = Scored("generalist", 1.10, {"a": 1.10, "b": 1.10})
SPECIALIST = Scored("specialist", 1.00, {"a": 0.80, "b": 1.25})
DOMINATED = Scored("dominated", 0.90, {"a": 0.90, "b": 0.90})
INVALID = Scored("invalid", 0.0, {"a": 0.0, "b": 0.0})


def test_a_candidate_better_everywhere_dominates() -> None:
    assert dominates(GENERALIST, DOMINATED)
    assert not dominates(GENERALIST, SPECIALIST) and not dominates(SPECIALIST, GENERALIST)


def test_the_front_keeps_specialists_and_drops_dominated_and_invalid_candidates() -> None:
    front = pareto_front([GENERALIST, SPECIALIST, DOMINATED, INVALID])
    assert {c.key for c in front} == {"generalist", "specialist"}


def test_failures_name_the_traces_where_the_incumbent_trails() -> None:
    assert failures(GENERALIST, [GENERALIST, SPECIALIST]) == [("b", 1.25 / 1.10)]


def test_selection_picks_the_specialist_for_the_trace_the_incumbent_fails() -> None:
    rng = random.Random(0)
    picks = [select_parent([GENERALIST, SPECIALIST, DOMINATED], rng, explore=1.0).key for _ in range(20)]
    assert set(picks) == {"specialist"}


def test_without_exploration_selection_is_a_tournament_on_the_combined_score() -> None:
    rng = random.Random(0)
    picks = [select_parent([GENERALIST, SPECIALIST, DOMINATED], rng, explore=0.0).key for _ in range(20)]
    assert set(picks) == {"generalist"}
