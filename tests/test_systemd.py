"""gpuosd as a systemd service: readiness and watchdog notifications, and unit files that verify."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "systemd").glob("*.service"))


def receive(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    deadline = time.time() + timeout
    seen: list[str] = []
    while time.time() < deadline:
        sock.settimeout(max(0.01, deadline - time.time()))
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(wanted in m for m in seen):
            return seen
    raise AssertionError(f"no {wanted!r} from gpuosd; got {seen}")


def test_gpuosd_tells_systemd_it_is_ready_pings_the_watchdog_and_says_it_stops(short_dir: Path) -> None:
    notify_path = str(short_dir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuos.daemon.main", "--backend", "sim", "--socket", str(short_dir / "gpuos.sock"),
         "--state-dir", str(short_dir / "state")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ready = receive(sock, "READY=1", 30)
        assert any("STATUS=serving on" in m for m in ready)
        receive(sock, "WATCHDOG=1", 2)
        proc.terminate()
        receive(sock, "STOPPING=1", 10)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def unit(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), value.strip())
    return values


def test_the_daemon_unit_is_a_notify_service_that_keeps_jobs_across_restarts() -> None:
    gpuosd = unit(ROOT / "systemd" / "gpuosd.service")
    assert gpuosd["Type"] == "notify" and gpuosd["WatchdogSec"] and gpuosd["Restart"] == "on-failure"
    assert gpuosd["KillMode"] == "process"
    assert gpuosd["StateDirectory"] == "gpuos" and gpuosd["RuntimeDirectory"] == "gpuos"
    assert "--socket /run/gpuos/gpuos.sock" in gpuosd["ExecStart"]


def test_the_mps_unit_starts_the_control_daemon_per_gpu() -> None:
    mps = unit(ROOT / "systemd" / "nvidia-mps@.service")
    assert mps["ExecStart"].endswith("nvidia-cuda-mps-control -d") and mps["Type"] == "forking"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_units_pass_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    # verify resolves ExecStart binaries; stand-ins on PATH keep that check about the unit itself.
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines() if path.name in line and "not executable" not in line
                and "No such file" not in line]
    assert not problems, result.stderr
