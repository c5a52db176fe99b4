"""The GPU-job metrics of a run, on hand-made traces whose answers can be worked out by hand.

Costs are the defaults: no start or stop latency, so FIFO's schedule on one node is exact.
"""

from __future__ import annotations

import pytest

from gpuos.jobs import Resources
from gpuos.scheduler.sim import SimConfig, SimResult, Trace, TraceJob, parse_gpus, run_simulation
from gpuos.scheduler.sim.metrics import SLOWDOWN_TAU

ONE = Resources(gpus=1)
TWO = Resources(gpus=2)
CPU_ONLY = Resources(gpus=0)


def fifo(cluster: str, *jobs: TraceJob, horizon: float = float("inf")) -> SimResult:
    return run_simulation(Trace("hand", parse_gpus(cluster), jobs), "fifo", config=SimConfig(horizon=horizon))


# On two GPUs, "a" takes one at 0 for 100 s; "b" needs both, so it waits 100 s with one GPU idle,
# then runs 5 s.
BLOCKED = (
    TraceJob("a", 0, 100, ONE, tenant="t1", qos="LS", slo=1000),
    TraceJob("b", 0, 5, TWO, tenant="t2", qos="LS", slo=50),
)


def test_waits_jct_and_bounded_slowdown_of_gpu_jobs() -> None:
    r = fifo("1x2xH100-80GB", *BLOCKED)
    assert r.gpu_jct_mean == pytest.approx((100 + 105) / 2)
    assert r.latency_wait_p99 == pytest.approx(0 + 0.99 * (100 - 0))  # numpy's linear p99 of {0, 100}
    assert r.gpu_max_wait == pytest.approx(100)
    # a: 100 s for 100 s of work; b: 105 s for 5 s, judged against SLOWDOWN_TAU = 10 s.
    assert SLOWDOWN_TAU == 10.0
    assert r.slowdown_mean == pytest.approx((1.0 + 105 / SLOWDOWN_TAU) / 2)


def test_unallocated_share_counts_while_a_job_that_could_fit_waits() -> None:
    r = fifo("1x2xH100-80GB", *BLOCKED)
    # For 100 s "b" waits with one of two GPUs free; afterwards nothing waits.
    assert r.idle_while_waiting == pytest.approx(0.5)


def test_a_job_no_empty_node_could_hold_is_not_waiting_on_the_policy() -> None:
    r = fifo("1x1xH100-80GB", TraceJob("a", 0, 10, ONE), TraceJob("huge", 0, 10, TWO))
    assert r.gpu_never_started == 1
    assert r.idle_while_waiting == 0.0


def test_slo_attainment_is_over_latency_class_gpu_jobs_and_misses_its_unfinished_ones() -> None:
    jobs = (
        TraceJob("a", 0, 100, ONE, qos="LS", slo=1000),
        TraceJob("b", 0, 100, ONE, qos="LS", slo=1000),  # starts at 100, still running at 150
        TraceJob("be", 0, 1, ONE, qos="BE"),  # not latency class
        TraceJob("pod", 0, 50, CPU_ONLY, qos="LS", slo=1),  # would miss, but holds no GPU
    )
    r = fifo("1x1xH100-80GB", *jobs, horizon=150)
    assert r.slo_attainment == pytest.approx(0.5)


def test_a_job_never_started_waits_until_the_run_stops_and_no_latency_class_means_all_gpu_jobs() -> None:
    r = fifo("1x1xH100-80GB", TraceJob("a", 0, 100, ONE), TraceJob("b", 0, 100, ONE), horizon=50)
    assert r.outcome.end == 50
    assert r.gpu_never_started == 1
    assert r.latency_wait_p99 == pytest.approx(0.99 * 50)  # waits {0, 50}: b's counted up to the horizon


def test_unfinished_jobs_count_in_slowdown_at_the_horizon() -> None:
    # "b" waits 100 s behind "a", then is cut off at 300 s, 200 s into its 1000 s of work.
    r = fifo("1x1xH100-80GB", TraceJob("a", 0, 100, ONE), TraceJob("b", 0, 1000, ONE), horizon=300)
    assert r.finished == 1
    assert r.slowdown_mean == pytest.approx((1.0 + 1.0) / 2)  # b: max(1, 300 / 1000)
    assert r.gpu_jct_mean == pytest.approx(100)  # over finished GPU jobs only


def test_a_cpu_only_pod_changes_no_gpu_metric() -> None:
    pod = TraceJob("pod", 0, 50, CPU_ONLY, tenant="t3", qos="LS", slo=1)
    without, with_pod = fifo("1x2xH100-80GB", *BLOCKED), fifo("1x2xH100-80GB", *BLOCKED, pod)
    assert with_pod.overall.jct_mean != without.overall.jct_mean  # the pod did run
    for metric in ("gpu_jct_mean", "latency_wait_p99", "slowdown_mean", "idle_while_waiting", "slo_attainment",
                   "jain", "gpu_max_wait", "gpu_never_started"):
        assert getattr(with_pod, metric) == getattr(without, metric), metric


def test_jain_index_is_over_tenants_of_gpu_jobs() -> None:
    r = fifo("1x2xH100-80GB", *BLOCKED)
    ratios = [1.0, 5 / 105]  # t1: duration / JCT of a; t2: of b
    assert r.jain == pytest.approx(sum(ratios) ** 2 / (2 * sum(x * x for x in ratios)))
