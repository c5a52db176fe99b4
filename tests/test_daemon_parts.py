"""The daemon's parts on their own, over the simulated backend: device health, partitions and
time-slice turns, each without a control loop, a store or a process."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from gpuos.daemon.health import MPS_DAEMON_LOST, Health
from gpuos.daemon.partitioning import Partitions
from gpuos.daemon.turns import Turns
from gpuos.devices.backend import DeviceStatus
from gpuos.devices.sim import SimBackend
from gpuos.jobs import Job, JobKind, JobSpec, JobState, Partition, PartitionKind, Placement, Reason, Resources
from gpuos.mig import Instance

GiB = 1024**3


class FlakyBackend(SimBackend):
    """Simulated GPUs whose next ``fail[i]`` samples of GPU i cannot be read."""

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.fail: dict[int, int] = {}

    def status(self) -> list[DeviceStatus]:
        statuses = super().status()
        for i, left in self.fail.items():
            if left:
                self.fail[i] = left - 1
                statuses[i] = replace(statuses[i], healthy=False, sample_error="Unknown Error")
        return statuses


def placed(job_id: str, *devices: int, kind: PartitionKind = PartitionKind.EXCLUSIVE, milli: int = 0) -> Job:
    spec = JobSpec(name=job_id, kind=JobKind.PROCESS, resources=Resources(gpus=len(devices), gpu_milli=milli))
    placement = Placement(devices=devices, partition=Partition(kind), granted=Resources(gpus=len(devices),
                                                                                          gpu_milli=milli))
    return Job(job_id, spec, owner_uid=0, state=JobState.RUNNING, placement=placement)


def parts(tmp_path: Path, backend: SimBackend, failures_before_lost: int = 3) -> tuple[Partitions, Health]:
    partitions = Partitions(backend, backend.devices(), tmp_path / "mps")
    return partitions, Health(backend, backend.devices(), partitions, failures_before_lost)


def test_a_gpu_whose_samples_fail_is_lost_only_after_the_configured_number_in_a_row(tmp_path: Path) -> None:
    backend = FlakyBackend("2xH100-80GB")
    _, health = parts(tmp_path, backend, failures_before_lost=3)
    jobs = [placed("on-both", 0, 1), placed("on-0", 0)]
    backend.fail[1] = 3
    verdicts = [health.check(float(t), jobs) for t in range(3)]
    assert [f.faults for f in verdicts[:2]] == [(), ()]
    assert health.healthy == {0: True, 1: False}
    assert [(f.job.id, f.reason) for f in verdicts[2].faults] == [("on-both", Reason.DEVICE_LOST)]
    assert verdicts[2].changed


def test_a_good_sample_between_failed_ones_starts_the_count_again(tmp_path: Path) -> None:
    backend = FlakyBackend("1xH100-80GB")
    _, health = parts(tmp_path, backend, failures_before_lost=2)
    backend.fail[0] = 1
    health.check(0.0, [])
    health.check(1.0, [])  # a good one
    backend.fail[0] = 1
    assert not health.check(2.0, []).changed
    assert health.healthy == {0: True}


def test_a_gpu_the_backend_knows_failed_counts_at_once_and_healthy_again_when_restored(tmp_path: Path) -> None:
    backend = SimBackend("2xH100-80GB")
    _, health = parts(tmp_path, backend)
    backend.fail_device(0)
    first = health.check(0.0, [placed("a", 0), placed("b", 1)])
    assert first.changed and [f.job.id for f in first.faults] == ["a"]
    assert not health.check(1.0, []).changed  # still failed: nothing new
    backend.restore_device(0)
    assert health.check(2.0, []).changed and health.healthy == {0: True, 1: True}


def test_health_is_sampled_once_per_interval_unless_asked_sooner(tmp_path: Path) -> None:
    _, health = parts(tmp_path, SimBackend("1xH100-80GB"))
    health.check(10.0, [])
    assert not health.due(10.5) and health.due(11.0)
    health.sample_next_round()
    assert health.due(10.5)


def test_a_process_over_its_memory_grant_is_an_overrun_of_its_job(tmp_path: Path) -> None:
    backend = SimBackend("1xH100-80GB")
    _, health = parts(tmp_path, backend)
    job = placed("hungry", 0)
    assert job.placement is not None
    job.placement = replace(job.placement, granted=replace(job.placement.granted, memory_bytes=GiB))
    job.child_pid = os.getpgid(0)  # the test's own process group stands in for the job's
    backend.attach(0, os.getpid(), GiB, 1000)
    backend.set_process_memory(0, os.getpid(), 2 * GiB)
    (over,) = health.check(0.0, [job]).overruns
    assert (over.job_id, over.gpu, over.used, over.limit) == ("hungry", 0, 2 * GiB, GiB)


def test_a_mig_partition_is_selected_by_its_instances_uuid_and_destroyed_on_release(tmp_path: Path) -> None:
    backend = SimBackend("1xH100-80GB")
    partitions, _ = parts(tmp_path, backend)
    placement = Placement(devices=(0,), partition=Partition(PartitionKind.MIG, "3g.40gb"),
                          granted=Resources(mig_profile="3g.40gb"), mig_slot=0)
    made = partitions.create(placement)
    (instance,) = backend.mig_instances(0)
    assert made.placement.mig_uuid == instance.uuid
    assert made.env == {"CUDA_VISIBLE_DEVICES": instance.uuid}
    partitions.release(made.placement, [])
    assert backend.mig_instances(0) == []


def test_a_reattached_jobs_vanished_mig_instance_is_made_again_in_its_slot(tmp_path: Path) -> None:
    backend = SimBackend("1xH100-80GB")
    partitions, _ = parts(tmp_path, backend)
    lost = Placement(devices=(0,), partition=Partition(PartitionKind.MIG, "1g.10gb"),
                     granted=Resources(mig_profile="1g.10gb"), mig_slot=2, mig_uuid="MIG-gone")
    again = partitions.readopt(lost)
    (instance,) = backend.mig_instances(0)
    assert (again.mig_uuid, instance.start) == (instance.uuid, 2)
    assert partitions.readopt(again) == again  # present: left alone


def test_mig_slices_no_job_holds_are_foreign(tmp_path: Path) -> None:
    backend = SimBackend("1xH100-80GB")
    partitions, _ = parts(tmp_path, backend)
    ours = backend.create_mig_instance(0, "1g.10gb", 0)
    backend.create_mig_instance(0, "2g.20gb", 2)  # an administrator's
    job = placed("ours", 0)
    job.placement = Placement(devices=(0,), partition=Partition(PartitionKind.MIG, "1g.10gb"),
                              granted=Resources(mig_profile="1g.10gb"), mig_slot=0, mig_uuid=ours.uuid)
    partitions.survey([job])
    assert partitions.foreign_slices == {0: [Instance("2g.20gb", 2)]}


def test_the_job_whose_turn_it_was_leaving_gives_the_turn_to_the_first_in_order() -> None:
    turns = Turns()
    a, b, c = (placed(i, 0, kind=PartitionKind.TIMESLICE) for i in ("a", "b", "c"))
    turns.plan([a, b, c], set(), 0.0, lambda _: 1.0)
    second = turns.plan([a, b, c], set(), 1.0, lambda _: 1.0)
    assert second is not None and second[0].run == {"b"}
    turns.forget("b")
    after = turns.plan([a, c], set(), 1.1, lambda _: 1.0)
    assert after is not None and after[0].run == {"a"} and after[0].pause == {"c"}


def test_jobs_being_stopped_take_no_turns() -> None:
    turns = Turns()
    a, b = placed("a", 0, kind=PartitionKind.TIMESLICE), placed("b", 0, kind=PartitionKind.TIMESLICE)
    plan = turns.plan([a, b], {"a"}, 0.0, lambda _: 1.0)
    assert plan is not None and plan[0].run == {"b"} and plan[0].pause == frozenset()


def test_turns_have_nothing_to_plan_where_no_gpu_is_time_shared() -> None:
    assert Turns().plan([placed("x", 0)], set(), 0.0, lambda _: 1.0) is None


def test_an_mps_gpu_whose_daemon_died_faults_its_mps_clients_once(tmp_path: Path) -> None:
    backend = SimBackend("1xH100-80GB")
    partitions, health = parts(tmp_path, backend)
    if partitions.mps is None:
        raise AssertionError("the simulated backend ships an MPS control stand-in")
    client = placed("client", 0, kind=PartitionKind.MPS, milli=500)
    try:
        assert client.placement is not None
        made = partitions.create(client.placement)
        assert made.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
        partitions.kill_mps_daemon(0)
        partitions.await_mps_gone(0)
        assert [(f.job.id, f.reason) for f in health.check(0.0, [client]).faults] == [("client", MPS_DAEMON_LOST)]
        assert health.check(1.0, [client]).faults == ()
    finally:
        partitions.mps.stop_all()


def test_an_unused_mps_daemon_lingers_then_quits_without_holding_up_the_loop(tmp_path: Path) -> None:
    backend = SimBackend("1xH100-80GB")
    partitions, _ = parts(tmp_path, backend)
    assert partitions.mps is not None
    partitions.mps_linger = 10.0
    client = placed("client", 0, kind=PartitionKind.MPS, milli=500)
    try:
        assert client.placement is not None
        partitions.create(client.placement)
        first = partitions.mps.ensure(0).pid
        partitions.release(client.placement, [])
        partitions.stop_idle_mps(time.time())
        assert partitions.mps.running(0)  # within the linger: kept for the next share
        partitions.stop_idle_mps(time.time() + 11.0)
        assert not partitions.mps.running(0)  # asked to quit, on a thread of its own
        partitions.create(client.placement)  # a share soon after waits for the old one, starts anew
        assert partitions.mps.running(0) and partitions.mps.ensure(0).pid != first
    finally:
        partitions.mps.stop_all()
