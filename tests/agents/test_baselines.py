"""Baselines: tuned human policies, order x placement combinations, clairvoyant ceilings."""

from __future__ import annotations

from gpuos.agents import baselines
from gpuos.agents.ceilings import LatencyFirstSrtf, ceiling, clairvoyant
from gpuos.agents.objectives import simulate
from gpuos.agents.workloads import STAGE1, load_workload
from gpuos.scheduler.policies.srtf import ShortestRemainingTimeFirst
from gpuos.scheduler.policies.tiresias import Tiresias


def test_a_tuned_policy_carries_the_constants_and_says_so_in_its_name() -> None:
    policy = baselines.tuned_policy("tiresias", {"thresholds[0]": 900.0, "thresholds[1]": 500.0,
                                                 "promote_knob": 2.0}, "tuned-mean_jct")
    assert isinstance(policy, Tiresias)
    assert policy.name == "tiresias@tuned-mean_jct"
    assert policy.thresholds == (500.0, 900.0)  # kept ascending
    assert policy.promote_knob == 2.0
    assert Tiresias.promote_knob == 8.0  # the human policy itself is untouched


def test_tuning_never_returns_constants_worse_than_the_defaults_on_its_workloads() -> None:
    values = baselines.tune("srtf", STAGE1, "mean_jct", trials=4, seed=1)
    trace = load_workload(STAGE1[0])
    tuned = simulate(trace, baselines.tuned_policy("srtf", values)).metrics["mean_jct"]
    assert tuned <= simulate(trace, "srtf").metrics["mean_jct"]


def test_the_baseline_set_holds_human_policies_and_every_combination() -> None:
    names = [p if isinstance(p, str) else p.name for p in baselines.baseline_set("no-such-objective")]
    assert {"tiresias", "tiresias-gittins", "srtf", "fgd", "srtf+fgd", "tiresias+bestfit"} <= set(names)
    assert not [n for n in names if n.startswith("evolved")]


def test_a_clairvoyant_trace_gives_every_job_its_true_duration_as_estimate() -> None:
    trace = clairvoyant(load_workload(STAGE1[0]))
    assert all(j.estimate == j.duration for j in trace.jobs)


def test_the_latency_ceiling_preempts_best_effort_work_for_a_latency_job() -> None:
    from gpuos.scheduler import Preempt, schedule
    from tests.scheduler.helpers import job, node, place, snap

    n, be = place(node("a", 1), job("be", qos="BE", estimated_seconds=10.0, service_rate=1.0))
    ls = job("ls", qos="LS", estimated_seconds=1000.0, submitted_at=1)
    assert schedule(snap([n], [ls], [be], now=2), LatencyFirstSrtf()) == [Preempt("be")]
    assert schedule(snap([n], [ls], [be], now=2), ShortestRemainingTimeFirst()) == []


def test_the_mean_jct_ceiling_runs_srtf_on_true_durations() -> None:
    trace = load_workload(STAGE1[0])
    assert ceiling(trace, "mean_jct").metrics == simulate(clairvoyant(trace), "srtf").metrics
