"""A job's directory (logs, environment) is private to gpuosd, and a kernel job of a non-root
user under a root gpuosd still runs and reports its progress."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, DaemonProcess, _kill_leftover_jobs, wait_for

ALICE, BOB = 54321, 54322
# The test interpreter lives under /root, which other users cannot enter; the system's Python of
# the same version, with the test venv's packages, can run the kernel worker as another uid.
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
SITE = next((p for p in sys.path if p.endswith("site-packages") and p.startswith(str(ROOT))), "")

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as other users")


def open_as(uid: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["cat", str(path)], user=uid, group=uid, extra_groups=[], capture_output=True, text=True)


def test_another_uid_cannot_read_a_jobs_logs_or_environment_on_disk(gpuosd: DaemonProcess) -> None:
    submitted = gpuosd.ctl("submit", "--", "sh", "-c", "echo secret-output", user=ALICE)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    assert gpuosd.ctl("wait", job, user=ALICE).returncode == 0
    directory = gpuosd.state / "jobs" / job
    assert directory.stat().st_mode & 0o777 == 0o700
    for name in ("stdout.log", "stderr.log", "env.json"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600, name
        denied = open_as(BOB, directory / name)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, name
    assert "secret-output" in gpuosd.ctl("logs", job, user=ALICE).stdout  # its owner reads it through the API


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON) or not SITE, reason=f"needs {SYSTEM_PYTHON} and a venv")
def test_a_non_root_users_kernel_job_runs_and_reports_progress_under_a_root_daemon(short_dir: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    # A venv of the system's Python that sees the test venv's packages (gpuos's editable install
    # included): gpuosd runs in it as root, and the kernel worker it starts as ALICE can run it too.
    venv = short_dir / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
     / "gpuos-test.pth").write_text(f"import site; site.addsitedir({SITE!r})\n")
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import torch, triton, gpuos.kernels.worker"], user=ALICE, group=ALICE,
                           extra_groups=[], capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{SYSTEM_PYTHON} cannot import the venv's packages as uid {ALICE}: {probe.stderr[-300:]}")
    gpuosd = DaemonProcess(short_dir)
    log = open(short_dir / "gpuosd.log", "ab")
    gpuosd.proc = subprocess.Popen(
        [python, "-m", "gpuos.daemon.main", "--socket", gpuosd.socket, "--state-dir", str(gpuosd.state),
         "--backend", "sim"], stdout=log, stderr=log, cwd="/")
    try:
        wait_for(lambda: os.path.exists(gpuosd.socket), timeout=60)
        submitted = gpuosd.ctl("submit", "--kernel", "vattention-decode", "--gpu-fraction", "0.5",
                               "--param", "batch=2", "--param", "context=600", "--param", "steps=3", user=ALICE)
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip()
        waited = gpuosd.ctl("wait", job, user=ALICE, timeout=300)
        assert waited.returncode == 0, gpuosd.ctl("logs", job).stdout + gpuosd.ctl("logs", job).stderr
        data = json.loads(gpuosd.ctl("-o", "json", "get", job, user=ALICE).stdout)
        assert data["owner_uid"] == ALICE and data["state"] == "SUCCEEDED"
        assert data["progress"]["steps_done"] == 3
        assert (gpuosd.state / "jobs" / job).stat().st_mode & 0o777 == 0o700
    finally:
        gpuosd.stop()
        time.sleep(0.1)
        _kill_leftover_jobs(gpuosd.state)
        shutil.rmtree(gpuosd.state, ignore_errors=True)
