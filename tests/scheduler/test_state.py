"""The one cluster-state model: its operations, its rules and its one definition of service."""

from __future__ import annotations

import pytest

from gpuos.jobs import TIMESLICE, Resources
from gpuos.mig import Instance
from gpuos.scheduler import GpuView, JobView, NodeView, Place, Policy, get_policy
from gpuos.scheduler.framework import schedule
from gpuos.scheduler.sim import SimConfig, Trace, TraceJob, parse_gpus
from gpuos.scheduler.sim.cluster import gpu_type
from gpuos.scheduler.sim.engine import Simulator
from gpuos.scheduler.state import Cadence, ClusterState, Costs, StateError
from gpuos.units import GiB


def h100s(count: int = 1) -> ClusterState:
    kind = gpu_type("H100-80GB")
    gpus = tuple(GpuView(i, kind.name, kind.memory, kind.memory, mig_profiles=kind.mig_profiles) for i in range(count))
    return ClusterState([NodeView("n", gpus)])


def start(state: ClusterState, job_id: str, request: Resources, now: float = 0.0, priority: int = 1,
          quantum: float = 1.0) -> Place:
    """Submit a job and place it where the framework would (FIFO, first fit)."""
    state.submit(JobView(job_id, request, priority=priority, submitted_at=now))
    decisions = [d for d in schedule(state.snapshot(now), get_policy("fifo")) if isinstance(d, Place)]
    mine = next(d for d in decisions if d.job_id == job_id)
    state.place(mine, now, quantum=quantum)
    return mine


def test_service_is_the_share_of_a_gpu_held_whatever_the_sharing() -> None:
    state = h100s(4)
    start(state, "whole", Resources(gpus=2))
    start(state, "mps", Resources(gpu_milli=250))
    start(state, "mig", Resources(mig_profile="3g.40gb"))
    assert state.attained("whole", 10.0) == pytest.approx(20.0)
    assert state.attained("mps", 10.0) == pytest.approx(2.5)
    # A 3g slice holds 3 of the GPU's 7 compute slices.
    assert state.attained("mig", 7.0) == pytest.approx(3.0, abs=0.01)
    # A policy reads the same figure from the snapshot, without the model folding anything.
    running = {j.id: j for j in state.snapshot(10.0).running}
    assert running["mps"].attained(10.0) == pytest.approx(2.5)


def test_time_sharers_earn_their_turns_share_and_only_the_top_priority_takes_turns() -> None:
    state = h100s(1)
    start(state, "a", Resources(sharing=TIMESLICE, gpu_milli=500, memory_bytes=GiB))
    assert state.attained("a", 10.0) == pytest.approx(10.0)  # alone: the whole GPU
    start(state, "b", Resources(sharing=TIMESLICE, gpu_milli=500, memory_bytes=GiB), now=10.0)
    assert state.attained("a", 20.0) == pytest.approx(15.0)
    assert state.attained("b", 20.0) == pytest.approx(5.0)
    start(state, "urgent", Resources(sharing=TIMESLICE, memory_bytes=GiB), now=20.0, priority=2)
    assert state.attained("a", 30.0) == pytest.approx(15.0)  # waits while a higher priority shares
    assert state.attained("urgent", 30.0) == pytest.approx(10.0)
    assert state.rate("a") == 0.0 and state.rate("urgent") == 1.0
    state.finish("urgent", 30.0)
    assert state.attained("a", 40.0) == pytest.approx(20.0)


def test_time_sharers_progress_by_turns_less_the_switch_cost() -> None:
    state = ClusterState(h100s(1).nodes, Costs(context_switch=0.1))
    start(state, "a", Resources(sharing=TIMESLICE, memory_bytes=GiB), quantum=0.9)
    start(state, "b", Resources(sharing=TIMESLICE, memory_bytes=GiB), quantum=0.9)
    assert state.rate("a") == pytest.approx(0.9 / 2.0)


def test_mps_neighbours_slow_each_other_by_the_interference_model() -> None:
    state = ClusterState(h100s(1).nodes, Costs(interference=0.4))
    start(state, "a", Resources(gpu_milli=500))
    assert state.rate("a") == 1.0
    start(state, "b", Resources(gpu_milli=500))
    assert state.rate("a") == pytest.approx(1 / 1.2)


def test_a_requeued_job_keeps_its_service_and_counts_the_preemption() -> None:
    state = h100s(1)
    start(state, "a", Resources(gpus=1))
    state.requeue("a", 30.0)
    waiting = state.view("a")
    assert waiting is not None and waiting.attained_service == pytest.approx(30.0)
    assert waiting.preemptions == 1 and waiting.gpus == ()
    assert state.gpu("n", 0).idle


def test_a_waiting_time_sharer_shows_paused_when_paused() -> None:
    state = h100s(1)
    start(state, "low", Resources(sharing=TIMESLICE, memory_bytes=GiB))
    start(state, "high", Resources(sharing=TIMESLICE, memory_bytes=GiB), priority=2)
    state.pause("low", 1.0)  # its share was 0 already (a higher priority shares the GPU)
    view = state.view("low")
    assert view is not None and view.paused


def test_a_paused_job_keeps_its_place_but_earns_nothing() -> None:
    state = h100s(1)
    start(state, "a", Resources(gpus=1))
    state.pause("a", 10.0)
    assert state.attained("a", 50.0) == pytest.approx(10.0)
    assert state.gpu("n", 0).jobs == ("a",)
    view = state.view("a")
    assert view is not None and view.paused
    state.resume("a", 50.0)
    assert state.attained("a", 60.0) == pytest.approx(20.0)


@pytest.mark.parametrize("bad", [
    Place("ghost", "n", (0,), 1000, 80 * GiB),  # not waiting
    Place("a", "elsewhere", (0,), 1000, 80 * GiB),  # no such node
    Place("a", "n", (5,), 1000, 80 * GiB),  # no such GPU
    Place("a", "n", (0,), 500, 80 * GiB),  # not what the job asks
])
def test_a_placement_that_breaks_the_rules_is_refused_and_changes_nothing(bad: Place) -> None:
    state = h100s(1)
    state.submit(JobView("a", Resources(gpus=1)))
    before = state.node_tuple()
    with pytest.raises(StateError):
        state.place(bad, 0.0)
    assert state.node_tuple() == before and "a" in state.pending


def test_a_busy_gpu_refuses_a_second_exclusive_job() -> None:
    state = h100s(1)
    start(state, "a", Resources(gpus=1))
    state.submit(JobView("b", Resources(gpus=1)))
    with pytest.raises(StateError):
        state.place(Place("b", "n", (0,), 1000, 80 * GiB), 0.0)


def test_a_recorded_mig_slot_is_kept_and_foreign_instances_take_room() -> None:
    state = h100s(1)
    state.set_foreign_instances("n", 0, [Instance("3g.40gb", 0)])
    gpu = state.gpu("n", 0)
    assert gpu.sharing == "mig" and gpu.mig_slices_used == 3 and not gpu.idle
    state.submit(JobView("a", Resources(mig_profile="3g.40gb")))
    with pytest.raises(StateError):  # slot 0 is taken by the foreign instance
        state.place(Place("a", "n", (0,), 428, 40 * GiB, "3g.40gb", 0, "mig"), 0.0)
    state.place(Place("a", "n", (0,), 428, 40 * GiB, "3g.40gb", 4, "mig"), 0.0)
    state.set_foreign_instances("n", 0, [])
    assert state.gpu("n", 0).mig_instances == (Instance("3g.40gb", 4),)
    state.finish("a", 1.0)
    assert state.gpu("n", 0).idle


def test_cadence_runs_time_only_rounds_while_jobs_wait_and_others_run() -> None:
    every_minute = Cadence.of(60.0)
    assert every_minute.next_round(100.0, pending=True, running=True) == 160.0
    assert every_minute.next_round(100.0, pending=True, running=False) is None
    assert Cadence.of(0.0).next_round(100.0, pending=True, running=True) is None


class FailAfterFault(Policy):
    name = "fail-after-fault"

    def requeue_after_fault(self, job: JobView) -> bool:
        return False


def test_the_simulator_asks_the_policy_what_a_fault_does_to_a_job() -> None:
    trace = Trace("t", parse_gpus("1xH100-80GB"), (TraceJob("a", 0.0, 1e5, Resources(gpus=1)),))
    config = SimConfig(failures_per_gpu_hour=10.0, repair_seconds=10.0, check_invariants=True)
    kept = Simulator(trace, get_policy("fifo"), config=config).run()
    assert kept.records[0].finish is not None and kept.records[0].preemptions >= 1
    failed = Simulator(trace, FailAfterFault(), config=config).run()
    assert failed.records[0].failed and failed.records[0].finish is None
