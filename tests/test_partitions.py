"""Partitions end to end through the daemon on the simulated backend: MIG slices, MPS shares,
time-slicing, memory limits and injected faults."""

from __future__ import annotations

import sys
import time

from gpuos.client import Client
from gpuos.v1 import jobs_pb2
from tests.conftest import wait_for

PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(60)"]
GiB = 1024**3


def running(client: Client, job_id: str) -> bool:
    return client.get(job_id).state == jobs_pb2.RUNNING


def env_of(client: Client, job_id: str) -> dict[str, str]:
    out = b"".join(d for s, d in client.logs(job_id) if s == "stdout").decode()
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


PRINT_ENV = [PY, "-c", "import os\nfor k, v in sorted(os.environ.items()):\n    print(f'{k}={v}')"]


def test_a_mig_job_gets_its_own_mig_device(client: Client) -> None:
    job = client.wait(client.submit(PRINT_ENV, mig_profile="3g.40gb").id, timeout=30)
    assert job.state == jobs_pb2.SUCCEEDED
    assert job.placement.partition == "mig:3g.40gb"
    assert env_of(client, job.id)["CUDA_VISIBLE_DEVICES"] == job.placement.mig_device_uuid
    assert job.placement.mig_device_uuid.startswith("MIG-")


def test_two_slices_share_a_gpu_and_vanish_when_their_jobs_end(client: Client) -> None:
    a, b = (client.submit(SLEEP, mig_profile="3g.40gb") for _ in range(2))
    wait_for(lambda: running(client, a.id) and running(client, b.id))
    ga, gb = client.get(a.id).placement, client.get(b.id).placement
    assert ga.devices == gb.devices and ga.mig_device_uuid != gb.mig_device_uuid
    gpu = client.devices().devices[ga.devices[0]]
    assert sorted((m.profile, m.start) for m in gpu.mig_instances) == [("3g.40gb", 0), ("3g.40gb", 4)]
    client.cancel(a.id)
    client.cancel(b.id)
    wait_for(lambda: not client.devices().devices[ga.devices[0]].mig_instances)


def test_a_slice_that_nvidia_would_refuse_waits(client: Client) -> None:
    # 3g + 3g fill all eight memory slices of an H100; no 1g slice fits beside them.
    holders = [client.submit(SLEEP, mig_profile="3g.40gb") for _ in range(4)]
    wait_for(lambda: all(running(client, j.id) for j in holders))
    small = client.submit(SLEEP, mig_profile="1g.10gb")
    time.sleep(0.5)
    assert client.get(small.id).state == jobs_pb2.PENDING
    client.cancel(holders[0].id)
    wait_for(lambda: running(client, small.id))
    for j in (*holders[1:], small):
        client.cancel(j.id)


def test_mps_clients_get_their_thread_share_and_pinned_memory_limit(client: Client) -> None:
    job = client.wait(client.submit(PRINT_ENV, gpu_fraction=0.25, memory="10GiB").id, timeout=30)
    env = env_of(client, job.id)
    assert job.placement.partition == "mps"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=10240M"
    assert env["CUDA_MPS_PIPE_DIRECTORY"].endswith("/pipe")


def test_the_mps_daemon_runs_while_it_has_clients_and_a_while_after(daemon, client: Client) -> None:  # type: ignore[no-untyped-def]
    daemon.controller.partitions.mps_linger = 2.0
    job = client.submit(SLEEP, gpu_fraction=0.5)
    wait_for(lambda: running(client, job.id))
    gpu = client.get(job.id).placement.devices[0]
    wait_for(lambda: client.devices().devices[gpu].mps_daemon_running)
    client.cancel(job.id)
    client.wait(job.id, timeout=30)
    # A share that follows soon finds it still up (no second start); unused past the linger, it stops.
    assert client.devices().devices[gpu].mps_daemon_running
    assert wait_for(lambda: not client.devices().devices[gpu].mps_daemon_running)


def test_a_job_over_its_memory_limit_is_stopped_and_its_neighbour_survives(daemon, client: Client) -> None:  # type: ignore[no-untyped-def]
    greedy = client.submit(SLEEP, gpu_fraction=0.25, memory="10GiB")
    neighbour = client.submit(SLEEP, gpu_fraction=0.25, memory="10GiB")
    wait_for(lambda: running(client, greedy.id) and running(client, neighbour.id))
    job = wait_for(lambda: (j := daemon.store.active_job(greedy.id)) and j.child_pid and j)
    daemon.backend.set_process_memory(job.placement.devices[0], job.child_pid, 12 * GiB)
    final = client.wait(greedy.id, timeout=30)
    assert final.state == jobs_pb2.FAILED and final.reason == "memory-limit"
    assert "10.0 GiB" in final.message
    assert running(client, neighbour.id)
    client.cancel(neighbour.id)


def test_time_shared_jobs_take_turns(client: Client) -> None:
    jobs = [client.submit(SLEEP, sharing="timeslice", memory="8GiB") for _ in range(2)]
    wanted = {(j.id, s) for j in jobs for s in ("RUNNING", "PAUSED")}
    seen: set[tuple[str, str]] = set()
    deadline = time.time() + 10
    while time.time() < deadline and seen != wanted:
        for j in jobs:
            seen.add((j.id, jobs_pb2.JobState.Name(client.get(j.id).state)))
        seen &= wanted
        time.sleep(0.1)
    assert seen == wanted
    assert client.get(jobs[0].id).placement.devices == client.get(jobs[1].id).placement.devices
    for j in jobs:
        client.cancel(j.id)


def test_a_high_priority_job_preempts_time_sharers_within_one_quantum(daemon, client: Client) -> None:  # type: ignore[no-untyped-def]
    low = [client.submit(SLEEP, sharing="timeslice", memory="8GiB", priority="low") for _ in range(2)]
    wait_for(lambda: any(running(client, j.id) for j in low))
    high = client.submit(SLEEP, sharing="timeslice", memory="8GiB", priority="high")
    submitted = time.time()
    wait_for(lambda: running(client, high.id) and all(client.get(j.id).state == jobs_pb2.PAUSED for j in low),
             timeout=5)
    assert time.time() - submitted < 1.0  # the default quantum
    time.sleep(1.5)  # longer than a quantum: the low jobs still wait
    assert all(client.get(j.id).state == jobs_pb2.PAUSED for j in low)
    # PAUSED is real: the paused jobs' processes are stopped by the kernel.
    import psutil

    for j in low:
        pid = daemon.store.active_job(j.id).child_pid
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    for j in (*low, high):
        client.cancel(j.id)


def test_a_failed_gpu_is_drained_and_its_job_requeued_elsewhere(client: Client) -> None:
    job = client.submit(SLEEP, gpus=1)
    wait_for(lambda: running(client, job.id))
    failed_gpu = client.get(job.id).placement.devices[0]
    device = client.inject_fault(failed_gpu, "gpu-fail")
    assert not device.healthy

    def moved() -> bool:
        # One read: between two, the job may have left RUNNING and lost its placement.
        now = client.get(job.id)
        return now.state == jobs_pb2.RUNNING and now.placement.devices[0] != failed_gpu

    wait_for(moved)
    kinds = [(e.kind, e.reason) for e in client.events(job_id=job.id)]
    assert ("requeued", "device-lost") in kinds
    other = client.submit(SLEEP, gpus=1)
    time.sleep(0.5)
    assert client.get(other.id).state == jobs_pb2.PENDING  # nothing lands on the failed GPU
    client.inject_fault(failed_gpu, "gpu-restore")
    wait_for(lambda: running(client, other.id))
    for j in (job, other):
        client.cancel(j.id)


def test_a_dead_mps_daemon_is_restarted_and_its_clients_requeued(client: Client) -> None:
    job = client.submit(SLEEP, gpu_fraction=0.5)
    wait_for(lambda: running(client, job.id))
    gpu = client.get(job.id).placement.devices[0]
    wait_for(lambda: client.devices().devices[gpu].mps_daemon_running)
    client.inject_fault(gpu, "mps-crash")
    wait_for(lambda: ("requeued", "mps-daemon-lost") in [(e.kind, e.reason) for e in client.events(job_id=job.id)])
    wait_for(lambda: running(client, job.id))
    wait_for(lambda: client.devices().devices[client.get(job.id).placement.devices[0]].mps_daemon_running)
    client.cancel(job.id)


def test_only_admins_inject_faults_and_indexes_are_checked(client: Client) -> None:
    import pytest

    from gpuos.client import ApiError

    with pytest.raises(ApiError) as err:
        client.inject_fault(9, "gpu-fail")
    assert err.value.code.name == "INVALID_ARGUMENT"


def test_slices_made_outside_gpuos_are_left_alone_and_worked_around(daemon, client: Client) -> None:  # type: ignore[no-untyped-def]
    # An administrator made a 4g slice on GPU 0 by hand: gpuos must neither use GPU 0 whole nor
    # tear the slice down, and may still place slices beside it.
    daemon.backend.create_mig_instance(0, "4g.40gb", 0)
    daemon.controller.check_now()
    whole = client.submit(SLEEP, gpus=1)
    wait_for(lambda: running(client, whole.id))
    assert client.get(whole.id).placement.devices[0] == 1
    beside = client.submit(SLEEP, mig_profile="3g.40gb")
    wait_for(lambda: running(client, beside.id))
    placement = client.get(beside.id).placement
    assert placement.devices[0] == 0
    client.cancel(beside.id)
    wait_for(lambda: [m.profile for m in client.devices().devices[0].mig_instances] == ["4g.40gb"])
    client.cancel(whole.id)
