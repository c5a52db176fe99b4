"""After a ``kill -9`` of gpuosd a job never runs twice, MPS control daemons left without clients
are stopped, and the killed daemon's private directory is removed at the next start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from gpuos.client import Client
from gpuos.daemon.rundir import temp_prefix
from gpuos.jobs import JobKind, JobSpec, Resources
from gpuos.runtime.process import CRASH_AFTER_SPAWN
from gpuos.store import Store
from gpuos.v1 import jobs_pb2
from tests.conftest import DaemonProcess, _kill_leftover_jobs, wait_for


def test_a_crash_between_spawning_a_job_and_recording_it_does_not_run_it_twice(
        gpuosd: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = gpuosd.base / "ran"
    gpuosd.stop()
    # Queued while the daemon is down, so that its first round starts it (and the hook fires)
    # with no client call in flight. Still running when the daemon comes back: its supervisor
    # must be found by its lock.
    store = Store(gpuosd.state)
    spec = JobSpec(name="once", kind=JobKind.PROCESS, resources=Resources(gpus=1), tenant="root",
                   command=("sh", "-c", f"echo ran >> {ran}; sleep 3"), env=(("PATH", "/usr/bin:/bin"),))
    job, _ = store.submit(spec, 0)
    store.close()
    monkeypatch.setenv(CRASH_AFTER_SPAWN, "1")
    assert gpuosd.proc is not None
    gpuosd.proc = subprocess.Popen(
        [sys.executable, "-m", "gpuos.daemon.main", "--socket", gpuosd.socket, "--state-dir", str(gpuosd.state),
         "--backend", "sim"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    monkeypatch.delenv(CRASH_AFTER_SPAWN)
    assert gpuosd.proc.wait(timeout=30) == -9  # the hook killed it right after the spawn
    gpuosd.start()
    with Client(socket=gpuosd.socket) as c:
        assert c.wait(job.id, timeout=60).state == jobs_pb2.SUCCEEDED
        assert "reattached" in [e.kind for e in c.events(job_id=job.id)]
    assert ran.read_text() == "ran\n"


def mps_daemons(state: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "gpuos.devices.sim_mps" in (proc.info.get("cmdline") or []):
            try:
                if proc.environ().get("CUDA_MPS_PIPE_DIRECTORY", "").startswith(str(state)) \
                        and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                pass
    return found


def test_an_mps_daemon_whose_clients_ended_while_gpuosd_was_down_is_stopped(gpuosd: DaemonProcess) -> None:
    release = gpuosd.base / "release"
    with Client(socket=gpuosd.socket) as c:
        job = c.submit([sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(release)!r}): "
                                              "time.sleep(0.05)"], gpu_fraction=0.5)
        wait_for(lambda: c.get(job.id).state == jobs_pb2.RUNNING)
    wait_for(lambda: mps_daemons(gpuosd.state) and (gpuosd.state / "jobs" / job.id / "child.json").exists())
    gpuosd.kill9()
    release.touch()
    wait_for(lambda: (gpuosd.state / "jobs" / job.id / "exit.json").exists())
    gpuosd.start()
    with Client(socket=gpuosd.socket) as c:
        assert c.get(job.id).state == jobs_pb2.SUCCEEDED
    wait_for(lambda: not mps_daemons(gpuosd.state))


def private_dirs(proc: psutil.Popen | psutil.Process, public_socket: str) -> set[str]:
    """The directories of the Unix sockets a daemon listens on, but its public one."""
    return {os.path.dirname(c.laddr) for c in proc.net_connections(kind="unix")
            if c.laddr.startswith("/") and c.laddr != public_socket}


def test_a_killed_daemons_private_dir_is_in_its_state_dir_and_removed_at_the_next_start(
        gpuosd: DaemonProcess) -> None:
    assert gpuosd.proc is not None
    dirs = private_dirs(psutil.Process(gpuosd.proc.pid), gpuosd.socket)
    assert dirs == {str(gpuosd.state / "run")}  # nothing of it in /tmp
    left = gpuosd.state / "run" / "left-behind"
    gpuosd.kill9()
    left.touch()
    gpuosd.start()
    assert not left.exists()
    assert (gpuosd.state / "run").stat().st_mode & 0o777 == 0o700


def test_under_a_deep_state_dir_a_killed_daemons_temp_dir_is_removed_at_the_next_start(short_dir: Path) -> None:
    gpuosd = DaemonProcess(short_dir)
    # Too deep for a Unix socket path under it: the private dir falls back to the temp dir.
    gpuosd.state = short_dir / ("d" * 60) / ("e" * 60) / "state"
    gpuosd.start()
    try:
        assert gpuosd.proc is not None
        (old,) = private_dirs(psutil.Process(gpuosd.proc.pid), gpuosd.socket)
        assert os.path.basename(old).startswith(temp_prefix(gpuosd.state))
        gpuosd.kill9()
        assert os.path.isdir(old)
        gpuosd.start()
        assert not os.path.exists(old)
        (new,) = private_dirs(psutil.Process(gpuosd.proc.pid), gpuosd.socket)
        assert new != old
    finally:
        gpuosd.stop()
        _kill_leftover_jobs(gpuosd.state)
