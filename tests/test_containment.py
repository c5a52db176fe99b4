"""Every process of a job ends with it, even one that left its process group with ``setsid``,
and a job's GPUs are given back only once all its processes are gone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.jobs import JobState, Reason
from gpuos.runtime.contain import JobCgroup
from gpuos.v1 import jobs_pb2
from tests.conftest import _kill_leftover_jobs, make_config, wait_for

GiB = 1024**3


def escaping_job(base: Path, name: str = "escaped") -> tuple[list[str], Path]:
    """A job that starts a ``setsid`` sleep (out of its process group), records its pid, and sleeps."""
    pidfile = base / f"{name}.pid"
    return ["sh", "-c", f"setsid sleep 1000 & echo $! > {pidfile}; sleep 1000"], pidfile


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def escaped_pid(pidfile: Path) -> int:
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
    pid = int(pidfile.read_text())
    assert alive(pid)
    return pid


@pytest.fixture
def reap_strays() -> Iterator[list[int]]:
    """Pids a failing test may leave running; killed afterwards whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_cancel_stops_a_descendant_that_left_the_process_group(client: Client, short_dir: Path,
                                                               reap_strays: list[int]) -> None:
    command, pidfile = escaping_job(short_dir)
    job = client.submit(command)
    pid = escaped_pid(pidfile)
    reap_strays.append(pid)
    client.cancel(job.id)
    assert client.wait(job.id, timeout=30).state == jobs_pb2.CANCELLED
    assert not alive(pid)


def test_preemption_stops_a_descendant_that_left_the_process_group(daemon: Daemon, client: Client, short_dir: Path,
                                                                   reap_strays: list[int]) -> None:
    command, pidfile = escaping_job(short_dir)
    job = client.submit(command)
    pid = escaped_pid(pidfile)
    reap_strays.append(pid)
    controller = daemon.controller
    with controller._lock:
        stored = controller.store.get(job.id)
        controller._begin_stop(stored, JobState.PENDING, Reason.PREEMPTED, "preempted by the test")
    wait_for(lambda: "requeued" in [e.kind for e in client.events(job_id=job.id)], timeout=30)
    assert not alive(pid)
    client.cancel(job.id)


def test_a_memory_kill_stops_a_descendant_that_left_the_process_group(daemon: Daemon, client: Client,
                                                                      short_dir: Path,
                                                                      reap_strays: list[int]) -> None:
    command, pidfile = escaping_job(short_dir)
    job = client.submit(command, gpu_fraction=0.25, memory="10GiB")
    pid = escaped_pid(pidfile)
    reap_strays.append(pid)
    placed = wait_for(lambda: (j := daemon.store.active_job(job.id)) and j.child_pid and j)
    daemon.backend.set_process_memory(placed.placement.devices[0], placed.child_pid, 12 * GiB)  # type: ignore[attr-defined]
    final = client.wait(job.id, timeout=30)
    assert final.state == jobs_pb2.FAILED and final.reason == "memory-limit"
    assert not alive(pid)


def test_a_job_holds_its_gpu_until_the_processes_it_left_behind_are_gone(short_dir: Path,
                                                                         reap_strays: list[int]) -> None:
    # A long grace, so the leftover outlives its main process for as long as the test looks.
    daemon = Daemon(make_config(short_dir, kill_grace_seconds=60.0))
    daemon.controller.tick = 0.05
    daemon.start()
    try:
        pidfile, release = short_dir / "left.pid", short_dir / "release"
        # The leftover ignores SIGTERM and leaves when the test says so; the main process exits as
        # soon as the leftover has said (by its pidfile) that it ignores SIGTERM.
        leftover = f"trap '' TERM; echo \\$\\$ > {pidfile}; while [ ! -e {release} ]; do sleep 0.05; done"
        main = f"setsid sh -c \"{leftover}\" & while [ ! -s {pidfile} ]; do sleep 0.05; done"
        with Client(socket=daemon.config.socket) as client:
            job = client.submit(["sh", "-c", main], gpus=2)
            pid = escaped_pid(pidfile)
            reap_strays.append(pid)
            main_pid = wait_for(lambda: (j := daemon.store.active_job(job.id)) and j.child_pid)
            wait_for(lambda: not alive(main_pid))
            assert alive(pid)
            got = client.get(job.id)
            assert got.state == jobs_pb2.RUNNING and list(got.placement.devices) == [0, 1]
            other = client.submit(["true"], gpus=1)
            time.sleep(0.5)
            assert client.get(other.id).state == jobs_pb2.PENDING  # the GPUs are still the first job's
            release.touch()
            assert client.wait(job.id, timeout=30).state == jobs_pb2.SUCCEEDED
            assert not alive(pid)
            assert client.wait(other.id, timeout=30).state == jobs_pb2.SUCCEEDED
    finally:
        daemon.stop()
        _kill_leftover_jobs(short_dir / "state")


def test_a_job_runs_in_its_own_cgroup_where_cgroup_v2_is_writable(daemon: Daemon, client: Client, short_dir: Path,
                                                                  reap_strays: list[int]) -> None:
    probe = JobCgroup.create("gpuos-test-probe")
    if probe is None:
        pytest.skip("cgroup v2 is not writable here; jobs are contained by the subreaper alone")
    probe.remove()
    command, pidfile = escaping_job(short_dir)
    job = client.submit(command)
    pid = escaped_pid(pidfile)
    reap_strays.append(pid)
    cgroup = JobCgroup.of(job.id)
    assert cgroup is not None and pid in cgroup.pids()
    client.cancel(job.id)
    client.wait(job.id, timeout=30)
    wait_for(lambda: JobCgroup.of(job.id) is None)  # removed once empty
