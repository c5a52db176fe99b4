"""A gpuosd not running as root cannot run jobs as other users, so it serves only its own user.

Root is served too (it is an admin of every gpuosd: it can read the state dir anyway). The socket
is owner-only, and another uid gets PERMISSION_DENIED saying why (from the client when the kernel
refused the connection, from gpuosd when the socket was opened to others), unless
``allow_other_users = true``, and then its jobs run as the daemon's user.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, _kill_leftover_jobs

OWNER, OTHER = 54321, 54322

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as other users")


@pytest.fixture
def owned_dir() -> Iterator[Path]:
    """A short directory the daemon's user owns, for its socket and state."""
    path = Path(tempfile.mkdtemp(prefix="gpuos-n", dir="/tmp"))
    os.chown(path, OWNER, OWNER)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(base: Path, config: str = "") -> DaemonProcess:
    extra: tuple[str, ...] = ()
    if config:
        path = base / "gpuosd.toml"
        path.write_text(config)
        os.chmod(path, 0o644)
        extra = ("--config", str(path))
    return DaemonProcess(base, *extra, user=OWNER).start()


@pytest.fixture
def own_gpuosd(owned_dir: Path) -> Iterator[DaemonProcess]:
    d = start(owned_dir)
    yield d
    d.stop()
    _kill_leftover_jobs(d.state)


def test_another_user_is_refused_saying_why(own_gpuosd: DaemonProcess) -> None:
    for args in (["devices"], ["list"], ["submit", "--", "true"], ["policy", "list"]):
        result = own_gpuosd.ctl(*args, user=OTHER)
        assert result.returncode == 1, args
        assert "PERMISSION_DENIED" in result.stderr
        assert "without root, so it serves only uid54321" in result.stderr
        assert "allow_other_users = true" in result.stderr


def test_the_daemons_own_user_runs_jobs_as_itself(own_gpuosd: DaemonProcess) -> None:
    result = own_gpuosd.ctl("submit", "--wait", "--", "id", "-u", user=OWNER)
    assert result.returncode == 0, result.stderr
    job = result.stdout.split()[0]
    assert own_gpuosd.ctl("logs", job, user=OWNER).stdout.strip() == str(OWNER)


def test_root_is_served_as_an_admin(own_gpuosd: DaemonProcess) -> None:
    mine = own_gpuosd.ctl("submit", "--", "sleep", "30", user=OWNER).stdout.strip()
    listed = json.loads(own_gpuosd.ctl("-o", "json", "list").stdout)
    assert mine in {j["id"] for j in listed}
    assert own_gpuosd.ctl("cancel", mine).returncode == 0


def test_the_socket_is_owner_only_by_default(own_gpuosd: DaemonProcess) -> None:
    assert os.stat(own_gpuosd.socket).st_mode & 0o777 == 0o600


def test_a_socket_opened_to_others_still_refuses_them_saying_why(owned_dir: Path) -> None:
    d = start(owned_dir, 'socket_mode = "0666"\n')
    try:
        assert os.stat(d.socket).st_mode & 0o777 == 0o666
        result = d.ctl("devices", user=OTHER)
        # This refusal comes from gpuosd itself (the connection got through), not the kernel.
        assert result.returncode == 1 and "PERMISSION_DENIED" in result.stderr
        assert "gpuosd runs as user uid54321 without root" in result.stderr
    finally:
        d.stop()
        _kill_leftover_jobs(d.state)


def test_allow_other_users_lets_them_in_and_their_jobs_run_as_the_daemons_user(owned_dir: Path) -> None:
    d = start(owned_dir, "allow_other_users = true\n")
    try:
        assert os.stat(d.socket).st_mode & 0o777 == 0o666
        result = d.ctl("submit", "--wait", "--", "id", "-u", user=OTHER)
        assert result.returncode == 0, result.stderr
        job = result.stdout.split()[0]
        assert d.ctl("logs", job, user=OTHER).stdout.strip() == str(OWNER)
        # Tenancy still holds between the users it lets in.
        assert "NOT_FOUND" in d.ctl("get", job, user=55555).stderr
    finally:
        d.stop()
        _kill_leftover_jobs(d.state)
    log = (owned_dir / "gpuosd.log").read_text()
    assert "allow_other_users = true" in log and "every job runs as uid54321" in log
