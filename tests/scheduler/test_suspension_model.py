"""Suspend-to-host, memory oversubscription and atoms in the one cluster-state model (issue 14).

The model (scheduler/state.py) and the framework (scheduler/framework.py) carry what the daemon's
suspension does; the simulator (scheduler/sim/engine.py) charges what it costs. A cluster that
cannot suspend decides and simulates exactly as before any of it existed.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gpuos.agents import wire
from gpuos.agents.sandbox import run_candidate
from gpuos.agents.workloads import load_workload
from gpuos.errors import InvalidArgument
from gpuos.jobs import EXECUTOR, TIMESLICE, Resources
from gpuos.scheduler.explain import explain
from gpuos.scheduler.framework import gpu_fits, schedule
from gpuos.scheduler.policies.fifo import Fifo
from gpuos.scheduler.policies.priority import StrictPriority
from gpuos.scheduler.policies.tiresias import Tiresias
from gpuos.scheduler.sim import SimConfig, run_simulation
from gpuos.scheduler.sim.cluster import GPU_TYPES, NodeSpec
from gpuos.scheduler.sim.traces import Trace, TraceJob
from gpuos.scheduler.snapshot import GpuView, JobView, NodeView, Place, Snapshot
from gpuos.scheduler.state import ClusterState, Costs, StateError

GIB = 1 << 30
MEM = 80 * GIB
LINK = Costs().host_link_bytes_per_s


def gpu(index: int = 0, model: str = "A100-80GB", **kw: object) -> GpuView:
    return GpuView(index, model, MEM, MEM, suspend=True, **kw)  # type: ignore[arg-type]


def sharer(job_id: str, memory: int, **kw: object) -> JobView:
    return JobView(job_id, Resources(gpus=1, memory_bytes=memory, sharing=TIMESLICE), **kw)  # type: ignore[arg-type]


def whole(job_id: str, **kw: object) -> JobView:
    return JobView(job_id, Resources(gpus=1), **kw)  # type: ignore[arg-type]


def run_round(state: ClusterState, now: float = 0.0) -> list[Place]:
    """One FIFO round on the model, applied to it; the placements made."""
    placed = [d for d in schedule(state.snapshot(now), Fifo()) if isinstance(d, Place)]
    for place in placed:
        state.place(place, now)
    return placed


def suspended_on(state: ClusterState, job: JobView, index: int, now: float = 10.0) -> JobView:
    """``job`` run on GPU ``index`` of node n0 from 0 to ``now``, then preempted by suspension."""
    state.submit(job)
    state.place(Place(job.id, "n0", (index,), 1000, MEM), 0.0)
    state.requeue(job.id, now, suspended=True)
    view = state.view(job.id)
    assert view is not None
    return view


# -- admission with oversubscription --------------------------------------------------------------


def test_an_oversubscribed_gpu_admits_time_sharers_whose_limits_add_up_beyond_its_memory() -> None:
    state = ClusterState([NodeView("n0", (gpu(oversubscription=2.0),))])
    for i in range(4):
        state.submit(sharer(f"s{i}", 50 * GIB, submitted_at=float(i)))
    assert [p.job_id for p in run_round(state)] == ["s0", "s1", "s2"]  # 150 GiB of 160; a fourth is 200
    assert state.gpu("n0", 0).memory_free == MEM - 150 * GIB
    assert "s3" in state.pending


def test_without_oversubscription_time_sharers_limits_fit_the_memory() -> None:
    state = ClusterState([NodeView("n0", (gpu(),))])
    for i in range(2):
        state.submit(sharer(f"s{i}", 50 * GIB, submitted_at=float(i)))
    assert [p.job_id for p in run_round(state)] == ["s0"]


def test_each_limit_still_fits_the_gpu_and_other_sharing_modes_are_not_oversubscribed() -> None:
    roomy = gpu(oversubscription=4.0)
    assert not gpu_fits(Resources(gpus=1, memory_bytes=MEM + 1, sharing=TIMESLICE), roomy)
    assert gpu_fits(Resources(gpus=1, memory_bytes=MEM, sharing=TIMESLICE), roomy)
    # An MPS share or a whole GPU asks memory that must be there: oversubscription is the time-sharers'.
    assert not gpu_fits(Resources(gpus=1, gpu_milli=500, memory_bytes=MEM + 1), roomy)
    half_committed = replace(roomy, memory_free=MEM // 2, jobs=("t",), sharing="timeslice")
    assert not gpu_fits(Resources(gpus=1, gpu_milli=500), half_committed)


# -- where a suspended job may resume ------------------------------------------------------------


def test_a_suspended_job_waits_for_its_own_gpu_even_when_another_is_free() -> None:
    state = ClusterState([NodeView("n0", (gpu(0), gpu(1)))])
    suspended_on(state, whole("v"), index=1)
    state.submit(whole("x", submitted_at=-1.0))
    state.place(Place("x", "n0", (1,), 1000, MEM), 10.0)  # someone else took GPU 1 meanwhile
    assert run_round(state, 11.0) == []
    state.finish("x", 20.0)
    assert [(p.job_id, p.gpus) for p in run_round(state, 20.0)] == [("v", (1,))]


def test_a_node_that_restores_across_gpus_offers_another_gpu_of_the_same_model_only() -> None:
    nodes = (gpu(0, model="H100-80GB"), gpu(1), gpu(2))
    state = ClusterState([NodeView("n0", nodes, cross_gpu_restore=True)])
    suspended_on(state, whole("v"), index=1)
    state.submit(whole("x", submitted_at=-1.0))
    state.place(Place("x", "n0", (1,), 1000, MEM), 10.0)
    assert [(p.job_id, p.gpus) for p in run_round(state, 11.0)] == [("v", (2,))]


def test_the_model_refuses_to_restore_a_suspended_job_where_it_may_not_resume() -> None:
    state = ClusterState([NodeView("n0", (gpu(0), gpu(1)))])
    suspended_on(state, whole("v"), index=1)
    with pytest.raises(StateError, match="cannot resume"):
        state.place(Place("v", "n0", (0,), 1000, MEM), 11.0)
    assert "v" in state.pending


def test_a_suspended_jobs_wait_does_not_hold_back_a_job_of_the_same_shape() -> None:
    state = ClusterState([NodeView("n0", (gpu(0), gpu(1)))])
    suspended_on(state, whole("v"), index=1)
    state.submit(whole("x", submitted_at=-1.0))
    state.place(Place("x", "n0", (1,), 1000, MEM), 10.0)
    state.submit(whole("w", submitted_at=5.0))  # queued after v, same request
    assert [(p.job_id, p.gpus) for p in run_round(state, 11.0)] == [("w", (0,))]


def test_why_a_suspended_job_waits_names_the_gpu_it_waits_for() -> None:
    state = ClusterState([NodeView("n0", (gpu(0), gpu(1)))])
    suspended_on(state, whole("v"), index=1)
    state.submit(whole("x", submitted_at=-1.0))
    state.place(Place("x", "n0", (1,), 1000, MEM), 10.0)
    snap = state.snapshot(11.0)
    reason = explain(snap, Fifo(), schedule(snap, Fifo())).get("v")
    assert reason is not None and "suspended to host memory from GPU 1 of n0" in reason.message


# -- the model's operations ---------------------------------------------------------------------


def test_a_suspended_requeue_keeps_service_and_says_where_it_may_resume() -> None:
    state = ClusterState([NodeView("n0", (gpu(0),), host_memory_free=200 * GIB)])
    view = suspended_on(state, whole("v"), index=0, now=10.0)
    assert (view.suspended, view.suspended_bytes, view.suspended_model, view.suspended_gpu) == (
        True, MEM, "A100-80GB", ("n0", 0))
    assert view.attained_service == pytest.approx(10.0) and view.preemptions == 1
    assert state.nodes[0].host_memory_free == 120 * GIB  # its memory waits on the host
    run_round(state, 12.0)
    running = state.view("v")
    assert running is not None and running.node == "n0" and not running.suspended
    assert state.nodes[0].host_memory_free == 200 * GIB


def test_a_gpu_that_cannot_suspend_refuses_a_suspended_requeue_and_nothing_changes() -> None:
    state = ClusterState([NodeView("n0", (replace(gpu(0), suspend=False),))])
    state.submit(whole("v"))
    state.place(Place("v", "n0", (0,), 1000, MEM), 0.0)
    with pytest.raises(StateError, match="cannot suspend"):
        state.requeue("v", 10.0, suspended=True)
    assert "v" in state.running


def test_a_host_without_room_refuses_a_suspension() -> None:
    state = ClusterState([NodeView("n0", (gpu(0),), host_memory_free=MEM - 1)])
    state.submit(whole("v"))
    state.place(Place("v", "n0", (0,), 1000, MEM), 0.0)
    with pytest.raises(StateError, match="host memory"):
        state.requeue("v", 10.0, suspended=True)


def test_a_resubmitted_record_keeps_the_suspension_until_it_is_dropped() -> None:
    state = ClusterState([NodeView("n0", (gpu(0), gpu(1)), host_memory_free=100 * GIB)])
    suspended_on(state, whole("v"), index=1)
    state.submit(whole("v", attained_service=10.0))  # the daemon's record knows no suspension
    view = state.view("v")
    assert view is not None and view.suspended_gpu == ("n0", 1)
    assert state.nodes[0].host_memory_free == 20 * GIB  # charged once, not twice
    state.drop_suspension("v")  # its restore failed: it restarts anywhere
    view = state.view("v")
    assert view is not None and not view.suspended and state.nodes[0].host_memory_free == 100 * GIB


def test_a_paused_time_sharer_suspended_in_place_frees_resident_memory_not_its_commitment() -> None:
    state = ClusterState([NodeView("n0", (gpu(oversubscription=2.0),))])
    state.submit(sharer("a", 60 * GIB))
    state.submit(sharer("b", 60 * GIB, submitted_at=1.0))
    run_round(state)
    with pytest.raises(StateError, match="pause it"):
        state.set_resident("a", False, 1.0)
    state.pause("a", 1.0)
    state.set_resident("a", False, 1.0)
    out = state.gpu("n0", 0)
    assert (out.memory_free, out.memory_suspended) == (MEM - 120 * GIB, 60 * GIB)
    view = state.view("a")
    assert view is not None and view.suspended and view.suspended_gpu == ("n0", 0) and view.paused
    with pytest.raises(StateError, match="restore it"):
        state.resume("a", 2.0)
    state.set_resident("a", True, 2.0)
    state.resume("a", 2.0)
    assert state.gpu("n0", 0).memory_suspended == 0


# -- costs in the simulator ---------------------------------------------------------------------


def _one_gpu(*jobs: TraceJob, host: int = 1 << 60) -> Trace:
    return Trace("one-gpu", (NodeSpec("n0", (GPU_TYPES["A100-80GB"],), host_memory=host),), jobs)


BE_AND_LS = (
    TraceJob("be", 0, 100, Resources(gpus=1), qos="BE"),
    TraceJob("ls", 10, 5, Resources(gpus=1), qos="LS"),
)


def _finishes(trace: Trace, policy: object, config: SimConfig) -> dict[str, float]:
    result = run_simulation(trace, policy, config=config)  # type: ignore[arg-type]
    return {r.job.id: r.finish for r in result.outcome.records}  # type: ignore[misc]


def test_preemption_by_suspension_costs_the_transfer_both_ways_not_a_restart() -> None:
    config = SimConfig(suspend=True, preemption_cost=30, check_invariants=True)
    transfer = MEM / LINK  # 80 GiB over 25 GB/s: 3.4 s each way
    finish = _finishes(_one_gpu(*BE_AND_LS), "priority", config)
    assert finish["ls"] == pytest.approx(15 + transfer)  # it waits while the victim's memory moves out
    assert finish["be"] == pytest.approx(15 + transfer + 90 + transfer)  # its 90 s left, after the restore


def test_a_policy_that_says_not_to_suspend_pays_the_restart_cost() -> None:
    class Restarts(StrictPriority):
        def suspend(self, job: JobView, snap: Snapshot) -> bool:
            return False

    finish = _finishes(_one_gpu(*BE_AND_LS), Restarts(), SimConfig(suspend=True, preemption_cost=30))
    assert finish == {"ls": 15, "be": pytest.approx(15 + 90 + 30)}


def test_a_host_without_room_for_the_victim_falls_back_to_a_restart() -> None:
    finish = _finishes(_one_gpu(*BE_AND_LS, host=MEM - 1), "priority", SimConfig(suspend=True, preemption_cost=30))
    assert finish == {"ls": 15, "be": pytest.approx(135)}


def test_oversubscribed_turns_pay_for_moving_memory_only_when_the_limits_do_not_fit() -> None:
    def rate(memory: int) -> float:
        state = ClusterState([NodeView("n0", (gpu(oversubscription=2.0),))])
        state.submit(sharer("a", memory))
        state.submit(sharer("b", memory, submitted_at=1.0))
        run_round(state)
        return state.rate("a")

    switch = Costs().context_switch
    assert rate(40 * GIB) == pytest.approx(1.0 / (2 * (1.0 + switch)))  # both fit: as ever
    assert rate(60 * GIB) == pytest.approx(1.0 / (2 * (1.0 + switch + 2 * 60 * GIB / LINK)))


def test_a_high_priority_kernel_job_waits_one_atom_for_the_executor() -> None:
    kernel = Resources(gpus=1, sharing=EXECUTOR)
    trace = _one_gpu(TraceJob("be", 0, 100, kernel, priority=0), TraceJob("hi", 10, 5, kernel, priority=2))
    finish = _finishes(trace, "fifo", SimConfig())
    assert finish["hi"] == pytest.approx(15 + Costs().atom_seconds)


def test_a_cluster_that_can_suspend_simulates_as_before_when_its_policy_never_suspends() -> None:
    class NeverSuspends(Tiresias):
        def suspend(self, job: JobView, snap: Snapshot) -> bool:
            return False

    trace = load_workload("synthetic:bursty?n=60&seed=5|gpus=1x8xA100-80GB|load=1.5")
    plain = run_simulation(trace, NeverSuspends(), config=SimConfig(stop_latency=1.0))
    able = run_simulation(trace, NeverSuspends(), config=SimConfig(stop_latency=1.0, suspend=True))
    assert able.preemptions == plain.preemptions > 0
    assert [(r.job.id, r.finish) for r in able.outcome.records] == [(r.job.id, r.finish) for r in plain.outcome.records]


def test_a_trace_without_suspension_simulates_as_before_issue_14() -> None:
    # Figures from the simulator at the commit before suspension entered the model (88f2ec4).
    trace = load_workload("synthetic:bursty?n=60&seed=5|gpus=1x8xA100-80GB|load=1.5")
    for policy, finishes, preemptions, end in (("priority", 662181.258194117, 13, 31069.522977390916),
                                               ("tiresias", 647173.6542608698, 16, 30980.95658190093)):
        result = run_simulation(trace, policy, config=SimConfig(stop_latency=1.0))
        assert sum(r.finish for r in result.outcome.records) == pytest.approx(finishes, rel=1e-12)  # type: ignore[misc]
        assert (result.preemptions, result.outcome.end) == (preemptions, pytest.approx(end, rel=1e-12))


def test_oversubscription_without_suspension_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument, match="oversubscription"):
        SimConfig(oversubscription=2.0)
    with pytest.raises(InvalidArgument, match="oversubscription"):
        SimConfig(suspend=True, oversubscription=0.5)


# -- across the candidate's process boundary ------------------------------------------------------


def test_the_new_fields_survive_the_wire() -> None:
    node = NodeView("n0", (gpu(0, oversubscription=1.5, memory_suspended=GIB),), cross_gpu_restore=True)
    job = replace(whole("v"), suspended=True, suspended_bytes=MEM, suspended_model="A100-80GB", suspended_gpu=("n0", 0))
    snap = Snapshot(1.0, (node,), (job,))
    assert wire.decode_snapshot(json.loads(json.dumps(wire.encode_snapshot(snap)))) == snap
    bad = wire.encode_job(job)
    bad["suspended_gpu"] = ["n0"]
    with pytest.raises(wire.WireError, match=r"job\.suspended_gpu"):
        wire.decode_job(bad)


RESTARTS = '''
from gpuos.scheduler.policies.priority import StrictPriority


class Restarts(StrictPriority):
    name = "restarts"

    def suspend(self, job, snap):
        return False


POLICY = Restarts
'''


def test_a_candidate_answers_suspend_from_its_own_process() -> None:
    trace = _one_gpu(*BE_AND_LS)
    outcome = run_candidate(RESTARTS, [trace], timeout=60, variants={"suspend": SimConfig(suspend=True)})
    assert outcome.ok, outcome.error
    # Its no costs the victim a restart (30 s), as the same policy run here says.
    assert outcome.variants["suspend"][trace.name]["metrics"]["makespan"] == pytest.approx(135)
