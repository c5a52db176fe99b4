"""Shared fixtures: a real gpuosd (in-process or as a subprocess) on the simulated backend."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Triton kernels run on the CPU through Triton's interpreter unless a GPU run asks otherwise
# (GPUOS_TEST_GPU=1); it must be set before anything imports Triton.
if os.environ.get("GPUOS_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gpuos.client import Client
from gpuos.daemon.config import DaemonConfig
from gpuos.daemon.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="gpuos-t", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_config(base: Path, **overrides: object) -> DaemonConfig:
    values: dict[str, object] = {
        "socket": str(base / "gpuos.sock"),
        "state_dir": str(base / "state"),
        "backend": "sim",
        "sim_gpus": "2xH100-80GB",
        "kill_grace_seconds": 2.0,
    }
    values.update(overrides)
    return DaemonConfig.load(None, values)


def serve(base: Path, **settings: object) -> Iterator[Daemon]:
    """An in-process gpuosd under ``base`` with ``settings``, stopped (and its jobs killed) after."""
    d = Daemon(make_config(base, **settings))
    d.controller.tick = 0.05
    d.start()
    yield d
    d.stop()
    _kill_leftover_jobs(base / "state")


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[Daemon]:
    yield from serve(short_dir)


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(socket=daemon.config.socket) as c:
        yield c


def _kill_leftover_jobs(state: Path) -> None:
    """Tests leave no job processes or MPS daemons behind, whatever they did to the daemon."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "gpuos.kernels.executor" in cmdline and any(a.startswith(f"{state}-executor/") for a in cmdline):
            proc.kill()  # a kernel executor outlives gpuosd (a restarted one adopts it)
            continue
        if "gpuos.devices.sim_mps" in cmdline:
            try:
                if proc.environ().get("CUDA_MPS_PIPE_DIRECTORY", "").startswith(str(state)):
                    proc.kill()
            except psutil.Error:
                pass
    for child in (state / "jobs").glob("*/child.json"):
        try:
            import json

            os.killpg(json.loads(child.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


class DaemonProcess:
    """gpuosd as a separate process, for the CLI and crash tests."""

    def __init__(self, base: Path, *extra: str, user: int | None = None) -> None:
        self.base = base
        self.user = user  # run gpuosd as this uid (tests/as_user_daemon.py); None: as root
        self.socket = str(base / "gpuos.sock")
        self.state = base / "state"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        log = open(self.base / "gpuosd.log", "ab")
        launcher = (["-m", "gpuos.daemon.main"] if self.user is None
                    else [str(ROOT / "tests" / "as_user_daemon.py"), str(self.user)])
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, "--socket", self.socket, "--state-dir", str(self.state),
             "--backend", "sim", "--sim-gpus", "2xH100-80GB", *self.extra],
            stdout=log, stderr=log,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.base / "gpuosd.log").read_text())
            if os.path.exists(self.socket):
                try:
                    with Client(socket=self.socket, timeout=2) as c:
                        c.policies()
                    return self
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            time.sleep(0.05)
        raise RuntimeError("gpuosd did not come up: " + (self.base / "gpuosd.log").read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ctl(self, *args: str, user: int | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run gpuosctl against this daemon, as root or as ``user``."""
        launcher = ["-m", "gpuos.cli.main"] if user is None else [str(ROOT / "tests" / "as_user.py"), str(user)]
        return subprocess.run(
            [sys.executable, *launcher, "--socket", self.socket, *args],
            capture_output=True, text=True, timeout=timeout, cwd="/",
        )


@pytest.fixture
def gpuosd(short_dir: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(short_dir).start()
    yield d
    d.stop()
    _kill_leftover_jobs(d.state)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
