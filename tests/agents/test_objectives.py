"""The objectives a search optimises: what each measures, which guard the others, and runs
under other cost models."""

from __future__ import annotations

import math

import pytest

from gpuos.agents.objectives import (
    IDLE_FLOOR,
    OBJECTIVES,
    SLO_MISS_FLOOR,
    WAIT_FLOOR,
    TraceRun,
    get_objective,
    horizon,
    simulate,
)
from gpuos.jobs import Resources
from gpuos.scheduler.sim import SimConfig, Trace, TraceJob, parse_gpus, run_simulation

SHARE = Resources(gpus=1, gpu_milli=500)
TRACE = Trace("hand", parse_gpus("1x2xH100-80GB"), (
    TraceJob("a", 0, 100, Resources(gpus=1), qos="LS", slo=1000),
    TraceJob("b", 0, 5, Resources(gpus=2), qos="LS", slo=50),
    TraceJob("pod", 0, 50, Resources(gpus=0)),
    TraceJob("s1", 200, 100, SHARE), TraceJob("s2", 200, 100, SHARE),
))


def test_the_objectives_users_of_shared_gpus_care_about() -> None:
    assert list(OBJECTIVES) == ["mean_jct", "slo_miss", "latency_wait_p99", "slowdown", "idle_while_waiting",
                                "fragmentation", "makespan"]


def test_makespan_is_reported_but_guards_nothing() -> None:
    assert [name for name, o in OBJECTIVES.items() if not o.guard] == ["makespan"]


def test_p99_latency_is_gone_and_the_error_lists_the_known_objectives() -> None:
    with pytest.raises(ValueError, match="unknown objective 'p99_latency'; known: mean_jct, slo_miss"):
        get_objective("p99_latency")


def test_each_objective_reads_its_gpu_job_metric_with_its_floor() -> None:
    result = run_simulation(TRACE, "fifo")
    measured = simulate(TRACE, "fifo").metrics
    assert measured["mean_jct"] == result.gpu_jct_mean != result.overall.jct_mean
    assert measured["slo_miss"] == pytest.approx(1 - result.slo_attainment + SLO_MISS_FLOOR)
    assert measured["latency_wait_p99"] == pytest.approx(result.latency_wait_p99 + WAIT_FLOOR)
    assert measured["slowdown"] == result.slowdown_mean
    assert measured["idle_while_waiting"] == pytest.approx(result.idle_while_waiting + IDLE_FLOOR)


def test_a_run_repeats_under_other_costs_and_keeps_the_horizon() -> None:
    calm = simulate(TRACE, "fifo", SimConfig(interference=0.1))
    noisy = simulate(TRACE, "fifo", SimConfig(interference=0.5))
    # s1 and s2 share a GPU from 200 s: each runs at 1 / (1 + interference x 0.5).
    assert noisy.metrics["mean_jct"] > calm.metrics["mean_jct"]
    assert noisy.metrics["makespan"] == pytest.approx(200 + 100 * (1 + 0.5 * 0.5))


def test_a_run_stops_at_the_callers_horizon_else_at_the_evaluators() -> None:
    assert simulate(TRACE, "fifo", SimConfig(horizon=150)).finished == 3  # s1 and s2 arrive at 200
    assert simulate(TRACE, "fifo", SimConfig()).finished == 5
    assert horizon(TRACE) < math.inf


def test_a_trace_run_round_trips_through_json_with_what_validity_needs() -> None:
    r = simulate(TRACE, "fifo")
    assert TraceRun.from_json(r.to_json()) == r
    assert r.gpu_max_wait == pytest.approx(100) and r.gpu_never_started == 0 and 0 < r.jain <= 1
