"""Shadow mode: a candidate decides beside the active policy each round, and nothing it decides is applied."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from gpuos.client import ApiError, Client, jobs_pb2
from gpuos.daemon.daemon import Daemon
from gpuos.daemon.shadow import Shadow, window_trace
from gpuos.groups import GroupMode
from gpuos.history import HistoryJob, RunTime
from gpuos.jobs import Job, JobKind, JobSpec, JobState, Resources
from gpuos.policy_choice import PolicyChoice
from gpuos.scheduler.framework import schedule
from gpuos.scheduler.index import WHOLE, NodeIndex
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.sim.cluster import GPU_TYPES, NodeSpec, node_view
from gpuos.scheduler.snapshot import GroupView, JobView, NodeView, Place, Preempt, Snapshot
from gpuos.shadowing import compare
from gpuos.store import Store
from tests.conftest import wait_for

# Places nothing: the active policy in the test that the shadow applies nothing.
HOLD = '''
from gpuos.scheduler import Policy


class Hold(Policy):
    name = "hold-everything"
    description = "places no job"

    def fits(self, job, node, gpus, snap):
        return False
'''
# Preempts every running job for any waiting one.
EVICT = '''
from gpuos.scheduler import Policy


class Evict(Policy):
    name = "evict-everyone"
    description = "preempts every running job for the queue's first"

    def victims(self, job, snap):
        return [j.id for j in snap.running]
'''
RAISES = '''
from gpuos.scheduler import Policy


class Raises(Policy):
    name = "raises-in-order"
    description = "a candidate with a bug"

    def order(self, pending, snap):
        raise RuntimeError("candidate bug")
'''
# Decides for far longer than the shadow's limit in the test (and then returns, so that its thread,
# which nothing can stop, does not outlive the test by much).
SLOW = '''
from gpuos.scheduler import Policy


class Slow(Policy):
    name = "slow-to-order"
    description = "a candidate stuck in a loop"

    def order(self, pending, snap):
        for _ in range(10 ** 7):
            pass
        return list(pending)
'''


def _place(job: str, gpus: tuple[int, ...] = (0,)) -> Place:
    return Place(job, "n0", gpus, 1000, 1)


# -- what counts as a difference -----------------------------------------------------------------


def test_equal_decisions_do_not_differ() -> None:
    decisions = [_place("a"), _place("b", (1,))]
    assert not compare(decisions, list(decisions), 0.0).differs


def test_a_job_placed_by_one_policy_only_is_named_on_its_side() -> None:
    diff = compare([_place("a"), _place("b", (1,))], [_place("b", (1,)), _place("c", (0,))], 0.0)
    assert diff.placed_only_by_active == ("a",)
    assert diff.placed_only_by_candidate == ("c",)


def test_the_same_job_on_another_gpu_is_a_difference() -> None:
    diff = compare([_place("a", (0,))], [_place("a", (1,))], 0.0)
    assert diff.other_gpus == ("a",) and not diff.placed_only_by_active


def test_the_same_jobs_in_another_order_is_a_difference() -> None:
    diff = compare([_place("a"), _place("b", (1,))], [_place("b", (1,)), _place("a")], 0.0)
    assert diff.order_differs and diff.counts()["order_differs"] == 1


def test_preemptions_asked_by_one_policy_only_are_named() -> None:
    diff = compare([Preempt("x")], [Preempt("y"), _place("a")], 0.0)
    assert diff.preempted_only_by_active == ("x",)
    assert diff.preempted_only_by_candidate == ("y",)


# -- in gpuosd -----------------------------------------------------------------------------------


def test_a_shadowed_policy_never_starts_a_job(client: Client) -> None:
    client.set_policy(source=HOLD, filename="hold.py")
    client.shadow("fifo")
    jobs = [client.submit(["sleep", "5"], gpus=1) for _ in range(3)]
    wait_for(lambda: client.shadow_report(simulate=False).counts.placed_only_by_candidate >= 2)
    time.sleep(0.3)  # more rounds: fifo would have started them several times over
    assert all(client.get(j.id).state == jobs_pb2.PENDING for j in jobs)
    assert not [e for e in client.events() if e.kind == "started"]


def test_a_shadowed_policy_never_preempts_a_job(client: Client) -> None:
    running = [client.submit(["sleep", "30"], gpus=1) for _ in range(2)]
    wait_for(lambda: all(client.get(j.id).state == jobs_pb2.RUNNING for j in running))
    client.shadow(source=EVICT, filename="evict.py")
    client.submit(["sleep", "1"], gpus=1)
    wait_for(lambda: client.shadow_report(simulate=False).counts.preempted_only_by_candidate >= 2)
    assert all(client.get(j.id).state == jobs_pb2.RUNNING for j in running)
    assert not [e for e in client.events() if e.reason == "preempted" or e.kind == "requeued"]
    report = client.shadow_report(examples=1, simulate=False)
    assert set(report.examples[0].preempted_only_by_candidate) == {j.id for j in running}


def test_a_candidate_that_raises_is_switched_off_with_an_event_and_rounds_go_on(client: Client) -> None:
    client.shadow(source=RAISES, filename="raises.py")
    job = client.submit(["true"], gpus=1)
    wait_for(lambda: client.get(job.id).state == jobs_pb2.SUCCEEDED)
    state = client.policy_status().shadow
    assert not state.on and "RuntimeError: candidate bug" in state.disabled_reason
    events = [e for e in client.events() if e.kind == "shadow-disabled"]
    assert events and "raises-in-order" in events[0].message
    # The daemon goes on scheduling with its active policy.
    second = client.submit(["true"], gpus=1)
    wait_for(lambda: client.get(second.id).state == jobs_pb2.SUCCEEDED)


def test_a_candidate_past_its_time_limit_is_switched_off_with_an_event_and_rounds_go_on(
        daemon: Daemon, client: Client) -> None:
    daemon.controller.shadow.limit = 0.02
    client.shadow(source=SLOW, filename="slow.py")
    job = client.submit(["true"], gpus=1)
    wait_for(lambda: client.get(job.id).state == jobs_pb2.SUCCEEDED)
    state = client.policy_status().shadow
    assert not state.on and "took over 0.02 s to decide a round" in state.disabled_reason
    events = [e for e in client.events() if e.kind == "shadow-disabled"]
    assert [(e.reason, "slow-to-order" in e.message) for e in events] == [("candidate-too-slow", True)]
    second = client.submit(["true"], gpus=1)
    wait_for(lambda: client.get(second.id).state == jobs_pb2.SUCCEEDED)


class _Meddler(Policy):
    """Tries to change what it is shown: to drop the groups and to mark the node full in the index."""

    name = "meddler"

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        for meddle in (lambda: snap.groups.clear(),  # type: ignore[attr-defined]
                       lambda: snap.index.update(0, NodeView(snap.nodes[0].name, ()))):  # type: ignore[union-attr]
            try:
                meddle()
            except (AttributeError, TypeError):
                pass
        return super().order(pending, snap)


def test_a_candidate_cannot_change_the_snapshot_the_daemon_keeps(tmp_path: Path) -> None:
    nodes = (node_view(NodeSpec("n0", (GPU_TYPES["H100-80GB"],) * 2)),)
    index = NodeIndex(nodes)
    group = GroupView("t", "g", GroupMode.ALL, 0, 0.0, 0.0, ("a",), 0, 0)
    snap = Snapshot(0.0, nodes, (JobView("a", Resources(gpus=1), tenant="t", group="g"),), (), index,
                    {("t", "g"): group})
    store = Store(tmp_path)
    shadow = Shadow(store)
    shadow.start(PolicyChoice("meddler"), _Meddler(), 0.0)
    active = schedule(snap, Policy())
    diff = shadow.round(snap, active)
    store.close()
    assert diff is not None and not diff.differs and shadow.on
    assert dict(snap.groups) == {("t", "g"): group}
    assert index.nodes is nodes and index.bound(WHOLE, 0) == 2
    assert schedule(snap, Policy()) == active


def test_the_report_replays_an_ended_job_for_its_run_time_as_the_export_does() -> None:
    # Submitted at 100, first started at 110, preempted and run again, ended at 200: it held its
    # GPU for 30 s of those 90, and a trace export says 30 s too (gpuos/history.py).
    job = Job("j", JobSpec("j", JobKind.PROCESS, Resources(gpus=1)), 0, JobState.SUCCEEDED, created_at=100.0,
              started_at=180.0, finished_at=200.0)
    node = NodeSpec("gpuosd", (GPU_TYPES["H100-80GB"],))
    trace, left_out = window_trace([HistoryJob(job, RunTime(30.0, 110.0))], 50.0, node)
    assert left_out == 0 and [(j.arrival, j.duration) for j in trace.jobs] == [(50.0, 30.0)]


def test_the_report_simulates_the_window_under_both_policies(client: Client) -> None:
    client.shadow("srtf")
    jobs = [client.submit(["sleep", "0.3"], gpus=1, qos="LS", estimated_seconds=0.3) for _ in range(3)]
    wait_for(lambda: all(client.get(j.id).state == jobs_pb2.SUCCEEDED for j in jobs))
    # Still running, with no estimate: it replays for its run time so far.
    running = client.submit(["sleep", "30"], gpus=1)
    wait_for(lambda: client.get(running.id).state == jobs_pb2.RUNNING)
    report = client.shadow_report()
    assert report.simulated_jobs == 4
    assert (report.active.policy, report.candidate.policy) == ("fifo", "srtf")
    assert report.active.mean_jct > 0 and 0 <= report.candidate.slo_attainment <= 1


def test_stopping_the_shadow_keeps_its_counts_readable(client: Client) -> None:
    client.shadow("srtf")
    client.stop_shadow()
    report = client.shadow_report(simulate=False)
    assert not report.status.on and report.status.candidate == "srtf"
    assert "no candidate" in client.shadow_report().simulation_note


def test_a_policy_file_named_like_a_registered_policy_is_refused(client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.shadow(source=HOLD.replace("hold-everything", "fifo"), filename="fifo.py")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "source" in caught.value.details
