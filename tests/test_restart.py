"""kill -9 of gpuosd at any moment loses no acknowledged job."""

from __future__ import annotations

import json
import sys
import time

from gpuos.client import Client
from gpuos.v1 import jobs_pb2
from tests.conftest import DaemonProcess, _kill_leftover_jobs, wait_for

PY = sys.executable


def test_jobs_survive_kill_9_in_every_state(gpuosd: DaemonProcess) -> None:
    with Client(socket=gpuosd.socket) as c:
        done = c.wait(c.submit([PY, "-c", "print('done'); raise SystemExit(3)"]).id, timeout=30)
        # Two whole-GPU jobs fill the two GPUs; the third must stay pending.
        marker = gpuosd.base / "release"
        hold = [PY, "-c", f"import os, time\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.05)\nprint('bye')"]
        running = [c.submit(hold, gpus=1) for _ in range(2)]
        wait_for(lambda: all(c.get(j.id).state == jobs_pb2.RUNNING for j in running))
        pending = c.submit([PY, "-c", "print('late')"], gpus=2)
        assert c.get(pending.id).state == jobs_pb2.PENDING

    gpuosd.kill9()
    gpuosd.start()

    with Client(socket=gpuosd.socket) as c:
        again = c.get(done.id)
        assert again.state == jobs_pb2.FAILED and again.exit_code == 3
        assert b"done" in b"".join(d for _, d in c.logs(done.id))
        for job in running:
            assert c.get(job.id).state == jobs_pb2.RUNNING  # re-attached, not lost
        assert c.get(pending.id).state == jobs_pb2.PENDING
        marker.touch()
        for job in running:
            final = c.wait(job.id, timeout=30)
            assert final.state == jobs_pb2.SUCCEEDED and final.exit_code == 0
        assert c.wait(pending.id, timeout=30).state == jobs_pb2.SUCCEEDED
        kinds = [e.kind for e in c.events(job_id=running[0].id)]
        assert "reattached" in kinds


def test_job_whose_supervisor_vanished_is_failed_not_dropped(gpuosd: DaemonProcess) -> None:
    with Client(socket=gpuosd.socket) as c:
        job = c.submit([PY, "-c", "import time; time.sleep(60)"])
        wait_for(lambda: c.get(job.id).state == jobs_pb2.RUNNING)
        wait_for(lambda: (gpuosd.state / "jobs" / job.id / "child.json").exists())
    gpuosd.kill9()
    # Lose the supervisor and the job together, as a reboot would.
    import os
    import signal

    shim = json.loads((gpuosd.state / "jobs" / job.id / "shim.json").read_text())["pid"]
    child = json.loads((gpuosd.state / "jobs" / job.id / "child.json").read_text())["pid"]
    os.killpg(child, signal.SIGKILL)
    os.kill(shim, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{shim}") or "Z" in open(f"/proc/{shim}/stat").read().split()[2])
    gpuosd.start()
    with Client(socket=gpuosd.socket) as c:
        final = c.get(job.id)
        assert final.state == jobs_pb2.FAILED
        assert final.reason == "daemon-restart"


def test_a_job_marked_running_but_never_started_is_requeued(gpuosd: DaemonProcess) -> None:
    """The write-ahead case: the daemon died between recording RUNNING and spawning the process."""
    import sqlite3

    with Client(socket=gpuosd.socket) as c:
        job = c.submit([PY, "-c", "print('ran')"])
        c.wait(job.id, timeout=30)
    gpuosd.stop()
    db = sqlite3.connect(gpuosd.state / "gpuos.db")
    db.execute("UPDATE jobs SET state='RUNNING', exit_code=NULL, finished_at=NULL, shim_pid=0 WHERE id=?", (job.id,))
    db.commit()
    db.close()
    for name in ("shim.json", "exit.json", "child.json"):
        (gpuosd.state / "jobs" / job.id / name).unlink()
    gpuosd.start()
    with Client(socket=gpuosd.socket) as c:
        final = c.wait(job.id, timeout=30)
        assert final.state == jobs_pb2.SUCCEEDED
        assert "requeued" in [e.kind for e in c.events(job_id=job.id)]


def test_policy_choice_survives_a_restart(gpuosd: DaemonProcess) -> None:
    with Client(socket=gpuosd.socket) as c:
        c.set_policy("fifo")
    gpuosd.kill9()
    gpuosd.start()
    with Client(socket=gpuosd.socket) as c:
        assert [p.name for p in c.policies() if p.active] == ["fifo"]


def test_shared_jobs_keep_their_partitions_across_kill_9(short_dir) -> None:  # type: ignore[no-untyped-def]
    """MPS clients keep their control daemon, time-sharers keep taking turns, MIG jobs their slice."""
    gpuosd = DaemonProcess(short_dir, "--sim-gpus", "3xH100-80GB").start()
    try:
        _shared_jobs_survive(gpuosd)
    finally:
        gpuosd.stop()
        _kill_leftover_jobs(gpuosd.state)


def _shared_jobs_survive(gpuosd: DaemonProcess) -> None:
    sleep = [PY, "-c", "import time; time.sleep(60)"]
    with Client(socket=gpuosd.socket) as c:
        mps = c.submit(sleep, gpu_fraction=0.5)
        turns = [c.submit(sleep, sharing="timeslice", memory="8GiB") for _ in range(2)]
        mig = c.submit(sleep, mig_profile="3g.40gb")
        jobs = [mps, *turns, mig]
        wait_for(lambda: all(c.get(j.id).state in (jobs_pb2.RUNNING, jobs_pb2.PAUSED) for j in jobs))
        wait_for(lambda: any(d.mps_daemon_running for d in c.devices().devices))
        # RUNNING is written ahead of the partition; the MIG device's UUID follows once it exists.
        mig_uuid = wait_for(lambda: c.get(mig.id).placement.mig_device_uuid)
    gpuosd.kill9()
    gpuosd.start()
    with Client(socket=gpuosd.socket) as c:
        assert all(c.get(j.id).state in (jobs_pb2.RUNNING, jobs_pb2.PAUSED) for j in jobs)
        assert c.devices().devices[c.get(mps.id).placement.devices[0]].mps_daemon_running
        ran = set()
        deadline = time.time() + 8
        while time.time() < deadline and len(ran) < 2:
            # One read per job: a second read may already see the turn handed on.
            ran |= {t.id for t in turns if c.get(t.id).state == jobs_pb2.RUNNING}
            time.sleep(0.1)
        assert ran == {t.id for t in turns}  # both time-sharers ran after the restart: turns go on
        gpu = c.devices().devices[c.get(mig.id).placement.devices[0]]
        # The simulator's instances live in gpuosd's memory: the restarted daemon recreated it.
        assert [(m.profile, m.start) for m in gpu.mig_instances] == [("3g.40gb", 0)]
        assert mig_uuid
        for j in jobs:
            c.cancel(j.id)
        wait_for(lambda: not c.devices().devices[gpu.index].mig_instances)
