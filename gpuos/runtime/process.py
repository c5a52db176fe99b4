"""Start, signal and reap job processes through their shims; files under the state dir record each.

Per job, ``<state>/jobs/<id>/`` holds ``stdout.log``, ``stderr.log``, ``env.json``, ``shim.json``
(the shim's pid and start time), ``lock`` (held by a live shim, naming it), ``child.json`` (the
job's pid, which is also its process group, written just before the command is exec'd) and, once
it has ended, ``exit.json``. These files, not the daemon's memory, say what happened, so a
restarted daemon can tell a live job from a finished, lost or never-started one.

The directory is the daemon's user's alone (0700, files 0600): the logs and the environment are
a tenant's private data. The job writes its logs through descriptors it inherits, and a kernel
job its progress into ``progress/``, a subdirectory its uid owns, through an inherited descriptor.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from gpuos.errors import BackendError
from gpuos.files import write_atomic
from gpuos.private import open_private, private_dir
from gpuos.runtime.contain import JobCgroup

# Test hook: gpuosd SIGKILLs itself right after spawning a job's supervisor, before anything is
# recorded of it, to test recovery in that window. Never set it outside tests.
CRASH_AFTER_SPAWN = "GPUOS_TEST_CRASH_AFTER_SPAWN"

# Logs are appended to: a preempted job starts again in the same directory.
APPEND = os.O_WRONLY | os.O_APPEND
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
    # Seconds the shim gives processes the job leaves behind between SIGTERM and SIGKILL.
    kill_grace: float = 5.0
    # Whether the job gets ``progress/`` to write into (kernel jobs).
    progress: bool = False


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
    # Not fsynced: the job's processes do not outlive the machine, so what must survive is only a
    # crash of gpuosd (a shim reading half a file), not of the machine.
    write_atomic(path, json.dumps(data), durable=False)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class ProcessRuntime:
    """Runs jobs as real processes, each under its own shim and in its own process group."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        private_dir(jobs_dir)  # its listing names every job: private like the rest
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def log_path(self, job_id: str, stream: str) -> Path:
        return self.job_dir(job_id) / f"{stream}.log"

    def progress_dir(self, job_id: str) -> Path:
        """The directory a kernel job's worker writes its progress into (its uid owns it)."""
        return self.job_dir(job_id) / "progress"

    def start(self, launch: Launch) -> Handle:
        directory = self.job_dir(launch.job_id)
        private_dir(directory)  # also a directory made by an older gpuos, 0755
        for stale in ("exit.json", "child.json", "shim.json"):
            # A preempted job starts again in the same directory; its old status must not count.
            (directory / stale).unlink(missing_ok=True)
        env_file = directory / "env.json"
        _write_json(env_file, launch.env)
        argv = [
            sys.executable, "-m", "gpuos.runtime.shim", "--dir", str(directory),
            "--uid", str(launch.uid), "--gid", str(launch.gid), "--cwd", launch.cwd,
            "--env-file", str(env_file), "--kill-grace", str(launch.kill_grace),
            *(["--progress-dir", str(self.progress_dir(launch.job_id))] if launch.progress else []),
            "--", *launch.command,
        ]
        shim_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(sys.path)}
        out = open_private(self.log_path(launch.job_id, "stdout"), APPEND)
        err = open_private(self.log_path(launch.job_id, "stderr"), APPEND)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=shim_env,
                start_new_session=True, close_fds=True,
            )
        except OSError as exc:
            raise BackendError(f"cannot start the job supervisor: {exc}") from exc
        finally:
            os.close(out)
            os.close(err)
        if os.environ.get(CRASH_AFTER_SPAWN) == "1":
            os.kill(os.getpid(), signal.SIGKILL)
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
        """The shim as the daemon recorded it at spawn, else as the shim named itself in its lock."""
        data = _read_json(self.job_dir(job_id) / "shim.json") or _read_json(self.job_dir(job_id) / "lock")
        if data is None:
            return None
        return Handle(int(data["pid"]), float(data["started"]))  # type: ignore[call-overload, arg-type]

    def child_pid(self, job_id: str) -> int:
        data = _read_json(self.job_dir(job_id) / "child.json")
        return int(data["pid"]) if data else 0  # type: ignore[call-overload]

    def command_started(self, job_id: str) -> bool:
        """Whether the job's command was ever exec'd (its shim writes child.json just before)."""
        return (self.job_dir(job_id) / "child.json").exists()

    def live_supervisor(self, job_id: str) -> Handle | None:
        """The job's shim if one runs now, found without any record the daemon kept of it.

        A shim holds ``<job>/lock`` from before the command starts until the exit status is
        written; one that is still starting up (not yet holding the lock) is found by its
        command line. None means no supervisor runs this job.
        """
        path = self.job_dir(job_id) / "lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    data = _read_json(path)
                    if data:
                        return Handle(int(data["pid"]), float(data["started"]))  # type: ignore[call-overload, arg-type]
                    # Locked, its pid not written yet: found below by its command line.
            finally:
                os.close(fd)  # releases our lock, if we got it
        directory = str(self.job_dir(job_id))
        for process in psutil.process_iter(["pid", "cmdline", "create_time"]):
            cmdline = process.info.get("cmdline") or []
            if "gpuos.runtime.shim" in cmdline and directory in cmdline:
                return Handle(int(process.info["pid"]), float(process.info["create_time"]))
        return None

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

    def signal(self, job_id: str, sig: signal.Signals, *, tree: bool = True) -> bool:
        """Send ``sig`` to the job's process group and, with ``tree``, to every other process of
        the job (those that left the group with ``setsid``: the shim's descendants and its
        cgroup). False when the job has no process group (not started, or gone).

        ``tree=False`` is for signals only the job's own program understands (the kernel
        worker's SIGUSR1), which would kill a helper process it started.
        """
        pid = self.child_pid(job_id)
        if pid <= 0:
            return False
        try:
            os.killpg(pid, sig)
            sent = True
        except ProcessLookupError:
            sent = False
        if not tree:
            return sent
        cgroup = JobCgroup.of(job_id)
        if sig == signal.SIGKILL and cgroup is not None:
            cgroup.kill()
        for other in self._processes_of(job_id, cgroup):
            try:
                os.kill(other, sig)
                sent = True
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    def _processes_of(self, job_id: str, cgroup: JobCgroup | None) -> list[int]:
        """Every process of the job but its shim."""
        proc = self._children.get(job_id)
        handle = Handle(proc.pid, 0.0) if proc is not None and proc.poll() is None else self.recorded_shim(job_id)
        pids = set(cgroup.pids()) if cgroup is not None else set()
        if handle is not None and self.shim_alive(job_id, handle):
            try:
                pids |= {c.pid for c in psutil.Process(handle.shim_pid).children(recursive=True)}
            except psutil.Error:
                pass
            pids.discard(handle.shim_pid)
        return sorted(pids)

    def forget(self, job_id: str) -> None:
        proc = self._children.pop(job_id, None)
        if proc is not None:
            proc.poll()
        cgroup = JobCgroup.of(job_id)
        if cgroup is not None:
            # The shim removes it; one that died (kill -9) leaves it behind, empty.
            cgroup.remove()
