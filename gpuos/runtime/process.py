"""Start, signal and reap job processes through their shims; files under the state dir record each.

Per job, ``<state>/jobs/<id>/`` holds ``stdout.log``, ``stderr.log``, ``shim.json`` (the shim's
pid and start time), ``child.json`` (the job's pid, which is also its process group) and, once
it has ended, ``exit.json``. These files, not the daemon's memory, say what happened, so a
restarted daemon can tell a live job from a finished or lost one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from gpuos.errors import BackendError

# Start times from psutil and from /proc agree to well under this; a reused pid would not.
_START_TIME_SLACK = 1.0


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one job's process."""

    job_id: str
    command: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    uid: int = -1
    gid: int = -1


@dataclass(frozen=True)
class Handle:
    shim_pid: int
    shim_started: float


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    signal: int
    spawn_error: str = ""


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class ProcessRuntime:
    """Runs jobs as real processes, each under its own shim and in its own process group."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        jobs_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def log_path(self, job_id: str, stream: str) -> Path:
        return self.job_dir(job_id) / f"{stream}.log"

    def start(self, launch: Launch) -> Handle:
        directory = self.job_dir(launch.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in ("exit.json", "child.json", "shim.json"):
            # A preempted job starts again in the same directory; its old status must not count.
            (directory / stale).unlink(missing_ok=True)
        env_file = directory / "env.json"
        _write_json(env_file, launch.env)
        os.chmod(env_file, 0o600)
        argv = [
            sys.executable, "-m", "gpuos.runtime.shim", "--dir", str(directory),
            "--uid", str(launch.uid), "--gid", str(launch.gid), "--cwd", launch.cwd,
            "--env-file", str(env_file), "--", *launch.command,
        ]
        shim_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(sys.path)}
        with open(self.log_path(launch.job_id, "stdout"), "ab") as out, \
                open(self.log_path(launch.job_id, "stderr"), "ab") as err:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=shim_env,
                    start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                raise BackendError(f"cannot start the job supervisor: {exc}") from exc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            started = 0.0
        self._children[launch.job_id] = proc
        handle = Handle(proc.pid, started)
        _write_json(directory / "shim.json", {"pid": handle.shim_pid, "started": handle.shim_started})
        return handle

    def exit_status(self, job_id: str) -> ExitStatus | None:
        data = _read_json(self.job_dir(job_id) / "exit.json")
        if data is None:
            return None
        return ExitStatus(int(data["exit_code"]), int(data.get("signal", 0)),  # type: ignore[call-overload]
                          str(data.get("spawn_error", "")))

    def recorded_shim(self, job_id: str) -> Handle | None:
        data = _read_json(self.job_dir(job_id) / "shim.json")
        if data is None:
            return None
        return Handle(int(data["pid"]), float(data["started"]))  # type: ignore[call-overload, arg-type]

    def child_pid(self, job_id: str) -> int:
        data = _read_json(self.job_dir(job_id) / "child.json")
        return int(data["pid"]) if data else 0  # type: ignore[call-overload]

    def shim_alive(self, job_id: str, handle: Handle) -> bool:
        """Whether the job's shim still runs (so its exit status will still be written)."""
        proc = self._children.get(job_id)
        if proc is not None:
            return proc.poll() is None
        try:
            process = psutil.Process(handle.shim_pid)
            return (
                abs(process.create_time() - handle.shim_started) < _START_TIME_SLACK
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def signal(self, job_id: str, sig: signal.Signals) -> bool:
        """Send ``sig`` to the job's whole process group. False when there is no such group."""
        pid = self.child_pid(job_id)
        if pid <= 0:
            return False
        try:
            os.killpg(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def forget(self, job_id: str) -> None:
        proc = self._children.pop(job_id, None)
        if proc is not None:
            proc.poll()
