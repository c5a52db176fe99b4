"""Job groups and deduplication in the model, the simulator and the speculate policy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpuos.groups import GROUP_BUDGET, SIBLING_SUCCEEDED, Group, make_spec
from gpuos.jobs import Resources
from gpuos.scheduler import Place, get_policy, schedule
from gpuos.scheduler.sim import SimConfig, Trace, TraceJob, parse_gpus
from gpuos.scheduler.sim.agentic import AgenticParams, generate, labels, plainly
from gpuos.scheduler.sim.engine import JobRecord, Simulator
from gpuos.scheduler.sim.metrics import agentic_stats
from gpuos.scheduler.sim.traces import TraceGroup
from gpuos.scheduler.snapshot import GroupView
from gpuos.scheduler.state import ClusterState

from .helpers import job, node, snap

AZURE = Path(__file__).resolve().parents[1] / "data" / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"


def member(id: str, duration: float, arrival: float = 0.0, succeeds: bool = True, group: str = "g",
           tenant: str = "t", key: str = "") -> TraceJob:
    return TraceJob(id, arrival, duration, Resources(gpus=1), tenant=tenant, estimate=duration, group=group,
                    dedupe_key=key, succeeds=succeeds)


def run(jobs: list[TraceJob], mode: str = "all", budget: float = 0.0, gpus: str = "1x4xH100-80GB",
        policy: str = "fifo") -> dict[str, JobRecord]:
    groups = tuple({(j.tenant, j.group) for j in jobs if j.group})
    trace = Trace("t", parse_gpus(gpus), tuple(jobs),
                  groups=tuple(TraceGroup(t, make_spec(g, mode, budget)) for t, g in sorted(groups)))
    outcome = Simulator(trace, get_policy(policy), config=SimConfig(check_invariants=True)).run()
    return {r.job.id: r for r in outcome.records}


# -- the simulator applies the group rules -------------------------------------------------------


def test_first_success_stops_running_siblings_at_that_instant():
    recs = run([member("fail", 10, succeeds=False), member("win", 20), member("slow", 30)], "first-success")
    assert (recs["win"].finish, recs["win"].succeeded) == (20, True)
    assert (recs["slow"].finish, recs["slow"].reason, recs["slow"].succeeded) == (20, SIBLING_SUCCEEDED, False)
    assert recs["slow"].attained == pytest.approx(20)  # it ran 20 s of its 30
    assert recs["fail"].finish == 10 and not recs["fail"].reason  # a member that fails runs its whole duration


def test_first_success_withdraws_waiting_siblings_without_running_them():
    recs = run([member("a", 10), member("b", 10, arrival=1)], "first-success", gpus="1x1xH100-80GB")
    assert (recs["b"].finish, recs["b"].reason, recs["b"].first_start) == (10, SIBLING_SUCCEEDED, None)


def test_best_of_k_stops_once_k_members_succeeded():
    recs = run([member("a", 10), member("b", 20), member("c", 30)], "best-of:2")
    assert [recs[i].succeeded for i in "abc"] == [True, True, False]
    assert (recs["c"].finish, recs["c"].reason) == (20, SIBLING_SUCCEEDED)


def test_all_mode_runs_every_member_to_its_end():
    recs = run([member("a", 10), member("b", 20), member("c", 30)], "all")
    assert [recs[i].finish for i in "abc"] == [10, 20, 30] and not any(recs[i].reason for i in "abc")


def test_budget_stops_the_members_at_the_instant_it_is_reached():
    recs = run([member("a", 20), member("b", 20), member("late", 5, arrival=1)], "all", budget=25,
               gpus="1x2xH100-80GB")
    # a and b run from 0 at 1 GPU-second per second each: 25 GPU-seconds at t = 12.5.
    for i in ("a", "b"):
        assert recs[i].finish == pytest.approx(12.5) and recs[i].reason == GROUP_BUDGET
    assert recs["late"].first_start is None and recs["late"].reason == GROUP_BUDGET
    assert sum(r.attained for r in recs.values()) == pytest.approx(25)


def test_member_arriving_for_an_ended_group_never_runs():
    recs = run([member("a", 10), member("b", 10, arrival=50)], "first-success")
    assert (recs["b"].finish, recs["b"].reason, recs["b"].first_start) == (50, SIBLING_SUCCEEDED, None)


def test_duplicate_of_a_running_job_takes_its_outcome_and_end_without_running():
    recs = run([member("a", 10, key="k", group=""), member("b", 10, arrival=2, key="k", group="")])
    assert recs["b"].duplicate_of == "a"
    assert (recs["b"].finish, recs["b"].succeeded, recs["b"].first_start, recs["b"].attained) == (10, True, None, 0)


def test_duplicate_of_a_succeeded_job_returns_at_once():
    recs = run([member("a", 10, key="k", group=""), member("b", 10, arrival=30, key="k", group="")])
    assert (recs["b"].finish, recs["b"].succeeded, recs["b"].duplicate_of) == (30, True, "a")


def test_keys_never_match_across_tenants():
    recs = run([member("a", 10, key="k", group="", tenant="t1"), member("b", 10, arrival=2, key="k", group="",
                                                                       tenant="t2")])
    assert recs["b"].duplicate_of == "" and recs["b"].first_start == 2


def test_a_failed_job_absorbs_no_later_duplicate():
    recs = run([member("a", 10, key="k", group="", succeeds=False), member("b", 10, arrival=20, key="k", group="")])
    assert recs["b"].duplicate_of == "" and recs["b"].first_start == 20


def test_duplicate_success_counts_for_its_own_group():
    jobs = [member("a", 10, key="k", group="g1"), member("copy", 10, arrival=1, key="k", group="g2"),
            member("sib", 40, arrival=1, group="g2")]
    recs = run(jobs, "first-success")
    assert (recs["sib"].finish, recs["sib"].reason) == (10, SIBLING_SUCCEEDED)


def test_group_figures_count_gpu_seconds_and_first_success():
    trace_jobs = [member("fail", 10, succeeds=False), member("win", 20), member("slow", 30)]
    recs = run(trace_jobs, "first-success")
    stats = agentic_stats(list(recs.values()))
    assert stats.gpu_seconds == pytest.approx(10 + 20 + 20)
    assert (stats.first_success_mean, stats.stopped, stats.groups_succeeded) == (20, 1, 1)


# -- the model and the snapshot -----------------------------------------------------------------


def test_snapshot_shows_a_groups_spending_live_and_its_unfinished_members():
    state = ClusterState([node("n", 2)])
    state.set_group(Group("t", make_spec("g", "first-success", 100), 0.0, spent=7.0))
    for i in ("a", "b"):
        state.submit(job(i, tenant="t", group="g"))
    state.place(Place("a", "n", (0,), 1000, node("n").gpus[0].memory_total), now=0.0)
    view = state.snapshot(10.0).groups[("t", "g")]
    assert (view.spent, view.members, view.running, view.budget_left) == (17.0, ("a", "b"), 1, 83.0)
    state.finish("a", 10.0)
    assert state.snapshot(10.0).groups[("t", "g")].members == ("b",)


def test_snapshot_without_groups_has_none():
    state = ClusterState([node("n", 1)])
    state.submit(job("a"))
    assert not state.snapshot(0.0).groups
    state.set_group(Group("t", make_spec("g"), 0.0))
    state.drop_group("t", "g")
    assert not state.snapshot(0.0).groups


# -- the speculate policy -----------------------------------------------------------------------


def group_view(name: str, members: tuple[str, ...], budget: float = 0.0, spent: float = 0.0) -> GroupView:
    return GroupView("t", name, make_spec(name).mode, 0, budget, spent, members, 0, 0)


def test_speculate_starts_one_member_of_every_group_before_a_second_of_any():
    pending = [job("a1", tenant="t", group="A", submitted_at=0.0), job("a2", tenant="t", group="A", submitted_at=1.0),
               job("b1", tenant="t", group="B", submitted_at=2.0)]
    s = snap([node("n", 2)], pending)
    s = type(s)(s.now, s.nodes, s.pending, groups={("t", "A"): group_view("A", ("a1", "a2")),
                                                   ("t", "B"): group_view("B", ("b1",))})
    fifo = [d.job_id for d in schedule(s, get_policy("fifo"))]
    fair = [d.job_id for d in schedule(s, get_policy("speculate"))]
    assert (fifo, fair) == (["a1", "a2"], ["a1", "b1"])


def test_speculate_starts_no_member_its_group_budget_cannot_pay_for():
    pending = [job("big", tenant="t", group="A", estimated_seconds=50.0),
               job("small", tenant="t", group="A", estimated_seconds=5.0, submitted_at=1.0)]
    s = snap([node("n", 2)], pending)
    s = type(s)(s.now, s.nodes, s.pending, groups={("t", "A"): group_view("A", ("big", "small"), 100, 90)})
    assert [d.job_id for d in schedule(s, get_policy("speculate"))] == ["small"]
    assert [d.job_id for d in schedule(s, get_policy("fifo"))] == ["big", "small"]


def test_speculate_without_groups_is_fifo():
    s = snap([node("n", 1)], [job("b", submitted_at=1.0), job("a", submitted_at=0.0)])
    assert schedule(s, get_policy("speculate")) == schedule(s, get_policy("fifo"))


# -- the agentic generator ----------------------------------------------------------------------


def small(**kw: object) -> AgenticParams:
    return AgenticParams(**{"groups": 30, **kw})  # type: ignore[arg-type]


def test_generator_is_deterministic_per_seed():
    assert generate(small(), seed=3, arrivals=AZURE) == generate(small(), seed=3, arrivals=AZURE)
    assert generate(small(), seed=3, arrivals=AZURE).jobs != generate(small(), seed=4, arrivals=AZURE).jobs


def test_generator_parameters_shape_the_workload():
    none = generate(small(duplicate_rate=0.0, success=0.0), arrivals=AZURE)
    many = generate(small(duplicate_rate=0.5, success=1.0), arrivals=AZURE)
    assert not any(j.succeeds for j in none.jobs) and all(j.succeeds for j in many.jobs)
    keys = [j.dedupe_key for j in many.jobs]
    assert len(set(j.dedupe_key for j in none.jobs)) == len(none.jobs) and len(set(keys)) < 0.8 * len(keys)
    assert len(none.groups) == 30 and {g.spec.mode_text for g in none.groups} <= {"first-success", "best-of:2", "all"}


def test_groups_and_dedupe_spend_fewer_gpu_seconds_than_plain_submits():
    trace = generate(small(), arrivals=AZURE)
    grouped = Simulator(trace, get_policy("fifo")).run()
    plain = Simulator(plainly(trace), get_policy("fifo")).run()
    with_groups = agentic_stats(grouped.records)
    without = agentic_stats(plain.records, labels(trace))
    assert with_groups.gpu_seconds < without.gpu_seconds
    assert without.stopped == without.duplicates == 0 and with_groups.duplicates > 0
    assert not math.isnan(with_groups.first_success_mean)
