"""On the Unix socket the caller's uid is its identity; tenants see only their own jobs."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import DaemonProcess

ALICE, BOB = 54321, 54322

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as other users")


def submit_as(d: DaemonProcess, uid: int, *extra: str) -> str:
    result = d.ctl("submit", *extra, "--", "sleep", "30", user=uid)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_job_belongs_to_the_caller_and_is_run_as_the_caller(gpuosd: DaemonProcess) -> None:
    job = submit_as(gpuosd, ALICE)
    got = json.loads(gpuosd.ctl("-o", "json", "get", job, user=ALICE).stdout)
    assert got["tenant"] == "uid54321" and got["owner_uid"] == ALICE
    gpuosd.ctl("cancel", job, user=ALICE)


def test_a_tenant_cannot_see_another_tenants_job(gpuosd: DaemonProcess) -> None:
    job = submit_as(gpuosd, ALICE)
    result = gpuosd.ctl("get", job, user=BOB)
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr
    listed = json.loads(gpuosd.ctl("-o", "json", "list", user=BOB).stdout)
    assert job not in {j["id"] for j in listed}
    gpuosd.ctl("cancel", job)


def test_a_tenant_cannot_cancel_another_tenants_job(gpuosd: DaemonProcess) -> None:
    job = submit_as(gpuosd, ALICE)
    result = gpuosd.ctl("cancel", job, user=BOB)
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr
    state = json.loads(gpuosd.ctl("-o", "json", "get", job, user=ALICE).stdout)["state"]
    assert state in ("PENDING", "RUNNING")
    gpuosd.ctl("cancel", job)


def test_root_sees_and_cancels_every_tenants_jobs(gpuosd: DaemonProcess) -> None:
    job = submit_as(gpuosd, ALICE)
    assert gpuosd.ctl("get", job).returncode == 0
    assert gpuosd.ctl("cancel", job).returncode == 0


def test_a_tenant_may_not_submit_for_another_tenant(gpuosd: DaemonProcess) -> None:
    result = gpuosd.ctl("submit", "--tenant", "uid54322", "--", "true", user=ALICE)
    assert result.returncode == 1 and "PERMISSION_DENIED" in result.stderr


def test_only_admins_may_change_the_policy(gpuosd: DaemonProcess) -> None:
    result = gpuosd.ctl("policy", "set", "fifo", user=ALICE)
    assert result.returncode == 1 and "PERMISSION_DENIED" in result.stderr


def test_an_admin_listed_in_the_config_sees_everything(short_dir) -> None:  # type: ignore[no-untyped-def]
    config = short_dir / "gpuosd.toml"
    config.write_text(f'admins = ["{BOB}"]\n')
    d = DaemonProcess(short_dir, "--config", str(config)).start()
    try:
        job = submit_as(d, ALICE)
        assert d.ctl("get", job, user=BOB).returncode == 0
        assert d.ctl("cancel", job, user=BOB).returncode == 0
    finally:
        d.stop()


def test_the_job_process_runs_as_the_submitting_user(gpuosd: DaemonProcess) -> None:
    result = gpuosd.ctl("submit", "--wait", "--", "id", "-u", user=ALICE)
    assert result.returncode == 0, result.stderr
    job = result.stdout.split()[0]
    assert gpuosd.ctl("logs", job, user=ALICE).stdout.strip() == str(ALICE)
