"""The time-slice planner: round-robin turns among equals, priority first, weighted quanta."""

from __future__ import annotations

from gpuos.partitions.timeslice import Sharer, Turn, plan_turns


def quantum(_: str) -> float:
    return 1.0


def test_a_lone_job_just_runs() -> None:
    plan = plan_turns({0: [Sharer("a", 1)]}, {}, 0.0, quantum)
    assert plan.run == {"a"} and not plan.pause and not plan.turns


def test_equals_take_turns_round_robin() -> None:
    group = {0: [Sharer("b", 1), Sharer("a", 1), Sharer("c", 1)]}
    order = []
    turns: dict[int, Turn] = {}
    now = 0.0
    for _ in range(4):
        plan = plan_turns(group, turns, now, quantum)
        (runner,) = plan.run
        order.append(runner)
        assert plan.pause == {"a", "b", "c"} - {runner}
        turns = plan.turns
        now = turns[0].until
    assert order == ["a", "b", "c", "a"]


def test_a_turn_lasts_its_quantum() -> None:
    group = {0: [Sharer("a", 1), Sharer("b", 1)]}
    first = plan_turns(group, {}, 0.0, quantum)
    midway = plan_turns(group, first.turns, 0.5, quantum)
    assert midway.run == first.run


def test_a_higher_priority_job_takes_the_gpu_at_once() -> None:
    low = [Sharer("a", 0), Sharer("b", 0)]
    plan = plan_turns({0: low}, {}, 0.0, quantum)
    assert plan.run == {"a"}
    plan = plan_turns({0: [*low, Sharer("z", 2)]}, plan.turns, 0.1, quantum)
    assert plan.run == {"z"} and plan.pause == {"a", "b"}


def test_lower_priority_jobs_wait_while_a_higher_one_shares_the_gpu() -> None:
    group = {0: [Sharer("a", 0), Sharer("h1", 2), Sharer("h2", 2)]}
    turns: dict[int, Turn] = {}
    now = 0.0
    runners = set()
    for _ in range(6):
        plan = plan_turns(group, turns, now, quantum)
        runners |= plan.run
        turns, now = plan.turns, plan.turns[0].until
    assert runners == {"h1", "h2"}


def test_weights_scale_the_turn_length() -> None:
    group = {0: [Sharer("a", 1, weight=0.75), Sharer("b", 1, weight=0.25)]}
    plan = plan_turns(group, {}, 0.0, quantum)
    assert plan.run == {"a"} and plan.turns[0].until == 1.5
    plan = plan_turns(group, plan.turns, 1.5, quantum)
    assert plan.run == {"b"} and abs(plan.turns[0].until - 2.0) < 1e-9


def test_a_multi_gpu_job_waiting_on_one_gpu_pauses_on_all() -> None:
    plan = plan_turns({0: [Sharer("m", 1)], 1: [Sharer("m", 1), Sharer("a", 1)]}, {}, 0.0, quantum)
    assert plan.run == {"a"} and "m" in plan.pause
