"""Validity that covers intent: priority is monotone, tenants are treated within a bound of the
human policies, and no job starves past a bound."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from gpuos.agents.objectives import TraceRun
from gpuos.agents.sandbox import load_policy_class
from gpuos.agents.validity import (
    JAIN_BOUND,
    STARVATION_FACTOR,
    STARVATION_MAKESPAN_SHARE,
    Order,
    fairness_problem,
    policy_order,
    priority_inversions,
    priority_probes,
    starvation_bound,
    starvation_problem,
)
from gpuos.scheduler import JobView, Snapshot, available, get_policy

HUMAN = [name for name in available() if not name.startswith("evolved-")]


def by(key: object) -> Order:
    return lambda pending, snap: [j.id for j in sorted(pending, key=key)]  # type: ignore[arg-type]


def test_every_probe_pairs_two_jobs_identical_but_for_priority() -> None:
    probes = priority_probes()
    assert len(probes) >= 20 and probes == priority_probes()  # fixed and seeded
    for probe in probes:
        high, low = probe.snapshot.pending[:2]
        assert high.priority > low.priority
        assert {k: v for k, v in vars_of(high).items() if k not in ("id", "priority")} == \
               {k: v for k, v in vars_of(low).items() if k not in ("id", "priority")}


def vars_of(job: JobView) -> dict[str, object]:
    return {name: getattr(job, name) for name in job.__slots__}  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", HUMAN)
def test_every_human_policy_keeps_priority_monotone(name: str) -> None:
    assert priority_inversions(policy_order(get_policy(name))) == []


def test_lower_priority_first_is_an_inversion_on_every_probe() -> None:
    problems = priority_inversions(by(lambda j: (j.priority, j.submitted_at, j.id)))
    assert len(problems) == len(priority_probes())
    assert "a HIGH job ranks behind an otherwise equal NORMAL one" in problems[0]


@pytest.mark.parametrize("tie_break", [
    lambda j: j.id, lambda j: tuple(-ord(c) for c in j.id),  # by id, either way round
])
def test_a_tie_broken_by_id_alone_is_no_inversion(tie_break: object) -> None:
    assert priority_inversions(by(tie_break)) == []


def test_a_tie_broken_by_input_position_alone_is_no_inversion() -> None:
    keep = lambda pending, snap: [j.id for j in pending]  # noqa: E731
    backwards = lambda pending, snap: [j.id for j in reversed(pending)]  # noqa: E731
    assert priority_inversions(keep) == [] and priority_inversions(backwards) == []


def test_leaving_the_higher_priority_job_out_is_an_inversion() -> None:
    def drop_high(pending: Sequence[JobView], snap: Snapshot) -> list[str]:
        top = max(j.priority for j in pending[:2])
        return [j.id for j in pending if not (j.id.startswith("probe-") and j.priority == top)]

    assert len(priority_inversions(drop_high)) == len(priority_probes())


def test_the_withdrawn_evolved_p99_latency_ranks_high_behind_normal_once_jobs_have_service() -> None:
    # Its rank, log1p(service) x max(preemptions, priority, latency) / (GPUs + log1p(service)),
    # grows with priority, and is 0 for every job without service (then arrival decides).
    source = (Path(__file__).resolve().parents[2] / "bench" / "withdrawn" / "evolved_p99_latency.py").read_text()
    problems = priority_inversions(policy_order(load_policy_class(source)()))
    assert problems
    assert any("HIGH job ranks behind an otherwise equal NORMAL one" in p for p in problems)
    assert all("ran before" in p or "with service" in p for p in problems)


def run(jain: float = 1.0, max_wait: float = 0.0, never: int = 0, finished: int = 10,
        makespan: float = 1000.0) -> TraceRun:
    return TraceRun({"makespan": makespan}, jobs=10, finished=finished, never_started=never, max_wait=max_wait,
                    wall_seconds=0.0, jain=jain, gpu_max_wait=max_wait, gpu_never_started=never)


HUMANS = {"fifo": run(jain=0.95), "drf": run(jain=0.99), "srtf": run(jain=0.90)}


def test_fairness_within_the_bound_of_the_least_fair_human_policy_passes() -> None:
    assert fairness_problem(run(jain=0.90 - JAIN_BOUND + 0.001), HUMANS) is None


def test_fairness_past_the_bound_names_the_figures() -> None:
    problem = fairness_problem(run(jain=0.80), HUMANS, trace="t")
    assert problem is not None
    assert "on t" in problem and "0.800" in problem and "srtf, 0.900" in problem


def test_the_starvation_bound_is_the_larger_of_twice_the_worst_human_wait_and_a_share_of_fifo_makespan() -> None:
    humans = {"fifo": run(max_wait=100.0, makespan=1000.0), "srtf": run(max_wait=300.0)}
    assert starvation_bound(humans, humans["fifo"]) == STARVATION_FACTOR * 300.0
    assert starvation_bound({"fifo": run(max_wait=1.0, makespan=1000.0)}, run(makespan=1000.0)) == \
        STARVATION_MAKESPAN_SHARE * 1000.0


def test_a_wait_past_the_bound_is_starvation() -> None:
    assert starvation_problem(run(max_wait=600.0), run(), bound=600.0) is None
    problem = starvation_problem(run(max_wait=601.0), run(), bound=600.0, trace="t")
    assert problem == "starvation on t: a GPU job waited 601 s, bound 600 s"


def test_more_jobs_unstarted_or_unfinished_than_fifo_is_starvation() -> None:
    fifo = run(never=1, finished=9)
    assert starvation_problem(run(never=1, finished=9), fifo, bound=1e9) is None
    assert starvation_problem(run(never=2, finished=9), fifo, bound=1e9) is not None
    assert starvation_problem(run(never=1, finished=8), fifo, bound=1e9) is not None
