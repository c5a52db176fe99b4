"""Simulator invariants, loaders on the excerpts, and the public API."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuos.errors import InvalidArgument
from gpuos.jobs import Resources
from gpuos.scheduler import Place, get_policy
from gpuos.scheduler.policies.fifo import Fifo
from gpuos.scheduler.sim import (
    SimConfig,
    Trace,
    TraceJob,
    fill_cluster,
    load_trace,
    parse_gpus,
    run_simulation,
)
from gpuos.scheduler.sim.engine import SimulationError, Simulator


def excerpt(data_dir: Path) -> Path:
    return data_dir / "alibaba-gpu-2023" / "openb_pod_list_default.csv"


def test_alibaba_loader_reads_times_requests_and_the_node_list(data_dir: Path) -> None:
    trace = load_trace(excerpt(data_dir))
    assert len(trace.jobs) == 500 and len(trace.nodes) == 40
    first = next(j for j in trace.jobs if j.id == "openb-pod-0001")
    assert first.request == Resources(gpus=1, gpu_milli=460)
    assert first.arrival == 427061 and first.duration == 12902960 - 427061
    assert {j.qos for j in trace.jobs} <= {"LS", "BE", "Burstable", "Guaranteed"}
    assert all(j.duration >= 0 for j in trace.jobs)


def test_genai_loader_maps_requests_to_latency_class_jobs(data_dir: Path) -> None:
    trace = load_trace(data_dir / "alibaba-genai-2026" / "lora_request_trace.csv")
    assert len(trace.jobs) == 300
    assert all(j.qos == "LS" and j.duration >= 1 and j.slo > j.duration for j in trace.jobs)
    assert trace.jobs[0].arrival == 0.0 and trace.jobs[-1].arrival > 0


def test_multigpu_lists_without_times_are_completed_from_the_default_list(tmp_path: Path, data_dir: Path) -> None:
    src = excerpt(data_dir).read_text().splitlines()
    rows = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli"]
    rows += [",".join(r.split(",")[:5]) for r in src[1:11]]
    rows.append("openb-pod-9999,16000,65536,4,1000")
    (tmp_path / "openb_pod_list_multigpu.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "openb_pod_list_default.csv").write_text("\n".join(src) + "\n")
    (tmp_path / "openb_node_list_gpu_node.csv").write_text(
        (data_dir / "alibaba-gpu-2023" / "openb_node_list_gpu_node.csv").read_text())
    trace = load_trace(tmp_path / "openb_pod_list_multigpu.csv")
    assert len(trace.jobs) == 11
    extra = next(j for j in trace.jobs if j.id == "openb-pod-9999")
    assert extra.request.gpus == 4 and extra.duration >= 0


def test_synthetic_traces_are_seeded_and_sized() -> None:
    a = load_trace("synthetic:llm-decode?n=200&seed=1")
    b = load_trace("synthetic:llm-decode?n=200&seed=1")
    c = load_trace("synthetic:llm-decode?n=200&seed=2")
    assert len(a.jobs) == 200 and a.jobs == b.jobs and a.jobs != c.jobs
    assert "synthetic" in a.source


def test_gpus_spec_forms() -> None:
    assert [len(n.gpus) for n in parse_gpus("16xH100-80GB")] == [16]
    assert [len(n.gpus) for n in parse_gpus("4x8xA100-80GB,2x2xT4")] == [8] * 4 + [2] * 2
    assert len(parse_gpus("3 nodes x 8 H100-80GB")) == 3
    with pytest.raises(InvalidArgument):
        parse_gpus("lots of GPUs")


@pytest.mark.parametrize("policy", ["fifo", "priority", "tiresias", "gandiva", "fgd", "srtf", "drf"])
def test_no_overcommit_and_every_job_accounted_at_every_event(policy: str) -> None:
    trace = load_trace("synthetic:llm-decode?n=300&seed=4&load=1.5")
    config = SimConfig(check_invariants=True, failures_per_gpu_hour=0.05, repair_seconds=600)
    result = run_simulation(trace, policy, config=config)
    assert result.finished == result.jobs


def test_bursty_training_trace_conserves_jobs_under_preemption() -> None:
    trace = load_trace("synthetic:bursty?n=300&seed=2&load=1.2")
    result = run_simulation(trace, "tiresias", config=SimConfig(check_invariants=True))
    assert result.finished == result.jobs
    assert result.preemptions > 0


def test_same_seed_same_result_different_seed_different_trace() -> None:
    a = run_simulation("synthetic:bursty?n=300", "fgd", seed=1)
    b = run_simulation("synthetic:bursty?n=300", "fgd", seed=1)
    c = run_simulation("synthetic:bursty?n=300", "fgd", seed=2)
    assert a.table().split("(")[0] == b.table().split("(")[0]
    assert a.overall.jct_mean != c.overall.jct_mean


def _one_gpu_trace(*jobs: TraceJob) -> Trace:
    return Trace("hand", parse_gpus("1xH100-80GB"), tuple(jobs))


def test_colocated_shares_slow_each_other_by_the_interference_model() -> None:
    share = Resources(gpus=1, gpu_milli=500)
    trace = _one_gpu_trace(TraceJob("a", 0, 100, share), TraceJob("b", 0, 100, share))
    result = run_simulation(trace, "fifo", config=SimConfig(interference=0.2))
    finishes = sorted(r.finish for r in result.outcome.records)  # type: ignore[type-var]
    assert finishes == pytest.approx([100 * 1.1, 100 * 1.1])


def test_time_sliced_jobs_share_turns_and_pay_the_switch_cost() -> None:
    turn = Resources(gpus=1, gpu_milli=500, sharing="timeslice")
    trace = _one_gpu_trace(TraceJob("a", 0, 100, turn), TraceJob("b", 0, 100, turn))
    result = run_simulation(trace, "fifo", config=SimConfig(context_switch=0.01))
    q = Fifo().quantum(None, None)  # type: ignore[arg-type]  # the base quantum ignores its arguments
    for r in result.outcome.records:
        assert r.finish == pytest.approx(100 / 0.5 * (q + 0.01) / q)


def test_mig_slices_pack_up_to_seven_compute_slices() -> None:
    slice_ = Resources(gpus=1, mig_profile="1g.10gb")
    trace = _one_gpu_trace(*(TraceJob(f"m{i}", 0, 10, slice_) for i in range(8)))
    result = run_simulation(trace, "fifo", config=SimConfig(check_invariants=True))
    starts = sorted(r.first_start for r in result.outcome.records)  # type: ignore[type-var]
    assert starts == [0] * 7 + [10]


def test_preemption_costs_the_victim_extra_work() -> None:
    trace = _one_gpu_trace(
        TraceJob("be", 0, 100, Resources(gpus=1), qos="BE"),
        TraceJob("ls", 10, 5, Resources(gpus=1), qos="LS"),
    )
    result = run_simulation(trace, "priority", config=SimConfig(preemption_cost=30))
    by_id = {r.job.id: r for r in result.outcome.records}
    assert by_id["ls"].finish == 15
    assert by_id["be"].finish == pytest.approx(15 + 90 + 30)
    assert result.preemptions == 1


def test_a_bad_decision_stops_the_run() -> None:
    trace = _one_gpu_trace(TraceJob("a", 0, 10, Resources(gpus=1)))
    sim = Simulator(trace, get_policy("fifo"))
    sim._enqueue(sim.records["a"], 0.0)
    with pytest.raises(SimulationError):
        sim._start(Place("a", "node-0000", (0,), 500, 1), 0.0)


def test_table_and_plot(tmp_path: Path, data_dir: Path) -> None:
    result = run_simulation(excerpt(data_dir), "fifo")
    text = result.table()
    assert "LS" in text and "makespan" in text and "Jain" in text
    out = result.plot(tmp_path / "r.png")
    assert out.stat().st_size > 10_000


def test_fill_experiment_fgd_leaves_no_more_unallocated_than_random(data_dir: Path) -> None:
    trace = load_trace(excerpt(data_dir))
    fgd = fill_cluster(trace, get_policy("fgd"), seed=0, until=1.2)
    rnd = fill_cluster(trace, get_policy("random-fit"), seed=0, until=1.2)
    assert fgd.arrived[-1] >= 1.2
    assert fgd.unallocated_at(1.0) <= rnd.unallocated_at(1.0)


def test_trace_names_resolve_against_the_trace_dir(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("GPUOS_TRACES", str(data_dir))
    assert len(load_trace("alibaba-gpu-2023").jobs) == 500
    assert len(load_trace("alibaba-genai-2026").jobs) == 300
