"""Suspend-to-host in use: oversubscribed time-slicing, preemption that suspends, drain by migration.

The pure rules first (which sharers stay resident, what a drain does), then gpuosd itself on the
simulated backend, whose suspend and restore take bytes / the host link's bandwidth.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gpuos.client import ApiError, Client
from gpuos.daemon.daemon import Daemon
from gpuos.draining import Occupant, plan_drain
from gpuos.errors import InvalidArgument
from gpuos.partitions.residency import Resident, plan_residency
from gpuos.v1 import jobs_pb2
from tests.conftest import make_config, serve

GIB = 1 << 30


# -- the resident-set rule --------------------------------------------------------------------


def test_a_runner_that_fits_beside_the_resident_set_runs_at_once() -> None:
    sharers = [Resident("a", 40 * GIB, last_ran=1.0), Resident("b", 40 * GIB, last_ran=2.0)]
    assert plan_residency(sharers, "a", 80 * GIB).ready


def test_the_least_recently_run_paused_sharer_is_suspended_to_make_room() -> None:
    sharers = [
        Resident("a", 40 * GIB, resident=False, last_ran=1.0),
        Resident("b", 40 * GIB, last_ran=3.0),
        Resident("c", 40 * GIB, last_ran=2.0),
    ]
    residency = plan_residency(sharers, "a", 80 * GIB)
    # c ran longer ago than b; a's own memory comes back only once c's has left.
    assert residency.suspend == ("c",) and not residency.restore and not residency.ready


def test_a_suspended_runner_is_restored_once_there_is_room() -> None:
    sharers = [Resident("a", 40 * GIB, resident=False), Resident("b", 40 * GIB), Resident("c", 40 * GIB, resident=False)]
    residency = plan_residency(sharers, "a", 80 * GIB)
    assert residency.restore and residency.suspend == () and not residency.wait


def test_only_as_many_sharers_as_needed_are_suspended() -> None:
    sharers = [
        Resident("run", 50 * GIB, resident=False),
        Resident("x", 10 * GIB, last_ran=1.0),
        Resident("y", 30 * GIB, last_ran=2.0),
        Resident("z", 20 * GIB, last_ran=3.0),
    ]
    # 60 GiB resident beside the runner's 50 on 80: x (10) is not enough, x and y (40) are.
    assert plan_residency(sharers, "run", 80 * GIB).suspend == ("x", "y")


def test_a_sharer_in_transfer_counts_as_resident_and_the_runner_waits_for_it() -> None:
    sharers = [Resident("a", 40 * GIB, resident=False), Resident("b", 40 * GIB),
               Resident("c", 40 * GIB, transferring=True)]
    residency = plan_residency(sharers, "a", 80 * GIB)
    assert residency.wait and not residency.restore and residency.suspend == ()


def test_a_runner_in_transfer_waits_and_nothing_is_moved_for_it_twice() -> None:
    sharers = [Resident("a", 40 * GIB, resident=False, transferring=True), Resident("b", 40 * GIB)]
    residency = plan_residency(sharers, "a", 80 * GIB)
    assert residency.wait and not residency.restore


def test_a_sharer_that_cannot_be_suspended_stays_and_the_runner_waits() -> None:
    sharers = [Resident("a", 60 * GIB, resident=False), Resident("b", 40 * GIB, suspendable=False)]
    residency = plan_residency(sharers, "a", 80 * GIB)
    assert residency.wait and residency.suspend == ()


def test_a_runner_not_among_the_sharers_is_an_error() -> None:
    with pytest.raises(ValueError, match="not one of"):
        plan_residency([Resident("a", GIB)], "b", 80 * GIB)


# -- the drain rule ---------------------------------------------------------------------------


def test_drain_moves_the_movable_jobs_where_the_driver_restores_across_gpus() -> None:
    plan = plan_drain(0, [Occupant("a", True), Occupant("b", False)], cross_gpu=True, spare=True, requeue=False)
    assert (plan.migrate, plan.requeue, plan.stay) == (("a",), (), ("b",))


def test_drain_without_cross_gpu_restore_says_so_and_requeues_on_request() -> None:
    plan = plan_drain(1, [Occupant("a", True)], cross_gpu=False, spare=True, requeue=True, why_not="driver r550")
    assert plan.migrate == () and plan.requeue == ("a",)
    assert "no job can move to another GPU here (driver r550)" in plan.message


def test_drain_with_no_other_gpu_of_the_model_moves_nothing() -> None:
    plan = plan_drain(0, [Occupant("a", True)], cross_gpu=True, spare=False, requeue=False)
    assert plan.stay == ("a",) and "no other GPU of the same model" in plan.message


# -- the config key ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.5, 8.5])
def test_memory_oversubscription_outside_1_to_8_is_refused_naming_the_key(tmp_path: Path, value: float) -> None:
    with pytest.raises(InvalidArgument, match="memory_oversubscription"):
        make_config(tmp_path, memory_oversubscription=value)


# -- gpuosd on the simulated backend ----------------------------------------------------------


def _sleeper(seconds: float, mark: Path | None = None) -> list[str]:
    """A process job that sleeps; with ``mark``, it first appends its pid there (one line per start)."""
    script = f"sleep {seconds}" if mark is None else f"echo $$ >> {mark}; sleep {seconds}"
    return ["/bin/sh", "-c", script]


def _wait(client: Client, ids: list[str], timeout: float, daemon: Daemon | None = None) -> tuple[list, int]:
    """Wait for ``ids`` to end; also the most GPU 0 memory the backend reported meanwhile."""
    peak = 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        if daemon is not None:
            peak = max(peak, daemon.backend.status()[0].memory_used)
        jobs = [client.get(i) for i in ids]
        if all(j.state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED) for j in jobs):
            return jobs, peak
        time.sleep(0.02)
    raise AssertionError(f"jobs did not end: {[(j.id, jobs_pb2.JobState.Name(j.state), j.reason) for j in jobs]}")


@pytest.fixture
def one_h100(short_dir: Path) -> Iterator[Daemon]:
    yield from serve(short_dir, sim_gpus="1xH100-80GB", policy="fifo")


def test_three_40gib_time_sharers_run_on_one_80gib_gpu_with_memory_in_use_within_it(one_h100: Daemon) -> None:
    with Client(socket=one_h100.config.socket) as client:
        ids = [client.submit(_sleeper(1.5), sharing="timeslice", memory=40 * GIB, name=f"t{i}").id for i in range(3)]
        jobs, peak = _wait(client, ids, 40, one_h100)
        events = [e for i in ids for e in client.events(job_id=i)]
    assert [j.exit_code for j in jobs] == [0, 0, 0]
    assert 0 < peak <= 80 * GIB
    # All three were admitted together (none waited for another to end), and made room by suspending.
    first_end = min(e.seq for e in events if e.kind == "succeeded")
    assert sum(e.kind == "started" and e.seq < first_end for e in events) == 3
    assert any(e.kind == "suspended" for e in events) and any(e.kind == "restored" for e in events)


def test_a_sharer_that_cannot_fit_beside_one_running_alone_starts_without_waiting_for_its_end(one_h100: Daemon) -> None:
    # 50 + 50 GiB do not fit in 80: the job running alone has no turn to end, so it is suspended
    # for the newcomer, which then gets the first turn (it is not handed straight back).
    with Client(socket=one_h100.config.socket) as client:
        first = client.submit(_sleeper(30), sharing="timeslice", memory=50 * GIB).id
        _running(client, first)
        second = client.submit(_sleeper(30), sharing="timeslice", memory=50 * GIB).id
        _running(client, second, timeout=15)
        assert client.get(first).state == jobs_pb2.PAUSED and "suspended" in _kinds(client, first)
        for job_id in (first, second):
            client.cancel(job_id)


def test_oversubscription_is_the_fallback_an_idle_gpu_comes_first(short_dir: Path) -> None:
    for daemon in serve(short_dir, sim_gpus="2xH100-80GB"):
        with Client(socket=daemon.config.socket) as client:
            ids = [client.submit(_sleeper(30), sharing="timeslice", memory=50 * GIB).id for _ in range(2)]
            for job_id in ids:
                _running(client, job_id)
            assert sorted(client.get(i).placement.devices[0] for i in ids) == [0, 1]
            assert not any("suspended" in _kinds(client, i) for i in ids)
            for job_id in ids:
                client.cancel(job_id)


@pytest.mark.parametrize("off", ["config", "backend"])
def test_without_oversubscription_the_third_40gib_sharer_waits(short_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                               off: str) -> None:
    # Turned off by the config key, or by a backend that cannot suspend (the simulator's switch).
    if off == "backend":
        monkeypatch.setenv("GPUOS_SIM_SUSPEND", "0")
    settings = {"memory_oversubscription": 1.0} if off == "config" else {}
    for daemon in serve(short_dir, sim_gpus="1xH100-80GB", **settings):
        with Client(socket=daemon.config.socket) as client:
            ids = [client.submit(_sleeper(30), sharing="timeslice", memory=40 * GIB).id for _ in range(3)]
            deadline = time.time() + 10
            while time.time() < deadline and sum(client.get(i).state != jobs_pb2.PENDING for i in ids) < 2:
                time.sleep(0.05)
            time.sleep(0.3)  # rounds after both started
            states = [client.get(i).state for i in ids]
            assert states.count(jobs_pb2.PENDING) == 1 and client.get(ids[2]).state == jobs_pb2.PENDING
            for i in ids:
                client.cancel(i)


def _running(client: Client, job_id: str, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while client.get(job_id).state != jobs_pb2.RUNNING:
        assert time.time() < deadline, f"{job_id} did not start"
        time.sleep(0.02)
    time.sleep(0.3)  # attached to its GPU: only a job whose process the GPU knows can be suspended


def _kinds(client: Client, job_id: str) -> list[str]:
    return [e.kind for e in client.events(job_id=job_id)]


def test_a_preempting_policy_suspends_its_victim_which_resumes_without_restarting(short_dir: Path) -> None:
    mark = short_dir / "starts"
    for daemon in serve(short_dir, sim_gpus="1xH100-80GB", policy="priority"):
        with Client(socket=daemon.config.socket) as client:
            # 8 GiB, not the whole GPU's 80: the sim's transfers take bytes / 50 GB/s of test time.
            victim = client.submit(_sleeper(2.5, mark), gpus=1, memory=8 * GIB, qos="BE").id
            _running(client, victim)
            urgent = client.submit(_sleeper(0.3), gpus=1, qos="LS").id
            jobs, _ = _wait(client, [victim, urgent], 30)
            kinds = _kinds(client, victim)
    assert [j.exit_code for j in jobs] == [0, 0]
    # One start: the process that was suspended is the one that finished.
    assert len(mark.read_text().split()) == 1
    assert "suspended" in kinds and "restored" in kinds and "requeued" not in kinds


def test_drain_moves_a_job_to_the_other_gpu_by_suspend_and_restore(short_dir: Path) -> None:
    mark = short_dir / "starts"
    for daemon in serve(short_dir, sim_gpus="2xH100-80GB"):
        with Client(socket=daemon.config.socket) as client:
            job = client.submit(_sleeper(2.0, mark), gpus=1, memory=8 * GIB).id
            _running(client, job)
            assert list(client.get(job).placement.devices) == [0]
            reply = client.drain(0)
            assert list(reply.migrating) == [job] and reply.device.draining
            jobs, _ = _wait(client, [job], 30)
            draining = [d.draining for d in client.devices().devices]
            client.drain(0, undrain=True)
            after = [d.draining for d in client.devices().devices]
    assert jobs[0].exit_code == 0 and list(jobs[0].placement.devices) == [1]
    assert len(mark.read_text().split()) == 1
    assert draining == [True, False] and after == [False, False]


def test_drain_names_the_bad_field(daemon: Daemon) -> None:
    with Client(socket=daemon.config.socket) as client:
        with pytest.raises(ApiError) as no_gpu:
            client.drain(7)
        with pytest.raises(ApiError) as both:
            client.drain(0, undrain=True, requeue=True)
    assert no_gpu.value.code == grpc.StatusCode.INVALID_ARGUMENT and "index" in no_gpu.value.details
    assert both.value.code == grpc.StatusCode.INVALID_ARGUMENT and "requeue" in both.value.details
