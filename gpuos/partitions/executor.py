"""Kernel executors: one per GPU that hosts ``--share executor`` jobs, and their admission.

An executor (``python -m gpuos.kernels.executor --socket PATH``, gpuos/kernels/executor.py) runs
the kernel jobs of several tenants on its GPU and dispatches their atoms by priority. Each job is
a client process (``gpuos.kernels.executor_client``) that gpuosd starts as the job's user and
that reaches the executor through its job socket; gpuosd first admits the job over the control
socket (``PATH + ".ctl"``, its own uid only) with a one-time token, the priority and the memory
limit, so a client can neither join unadmitted nor raise its own priority or limit.

The sockets live under ``<root>/gpu<N>/`` beside the private state dir (as the MPS pipes do):
the jobs' uids must reach the job socket. An executor starts with its GPU alone visible, in a
session of its own (so no job's process group holds it), and outlives a gpuosd restart: the new
gpuosd finds it by its socket path and adopts it once its control socket answers a ping.

Starting one imports torch and Triton (seconds), so :meth:`ExecutorManager.start` only spawns it
and :meth:`ExecutorManager.ready` polls it; the control loop never waits for an executor.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from gpuos.errors import BackendError
from gpuos.kernels import executor_control

log = logging.getLogger("gpuos.executor")

EXECUTOR_MODULE = "gpuos.kernels.executor"
SOCKET_NAME = "executor.sock"
# A ping on the control loop's thread: an executor that takes longer is not ready.
PING_TIMEOUT = 0.5
# Importing torch and Triton on a loaded machine has taken over 10 s; a start that has not
# answered a ping by then is taken to have failed.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


@dataclass
class _Executor:
    index: int
    pid: int
    socket: Path
    process: subprocess.Popen[bytes] | None = None  # ours to reap; None for an adopted one
    started: float = 0.0
    ready: bool = False


def control_path(socket: Path) -> Path:
    """The control socket of the executor listening on ``socket``."""
    return Path(executor_control.control_path(str(socket)))


def _find_executor(socket: Path) -> int:
    """The pid of a live executor process serving ``socket``, or 0."""
    wanted = str(socket)
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if EXECUTOR_MODULE not in cmdline or proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        pairs = zip(cmdline, cmdline[1:], strict=False)
        if f"--socket={wanted}" in cmdline or any(a == "--socket" and b == wanted for a, b in pairs):
            return int(proc.info["pid"])
    return 0


def _ping(socket: Path) -> bool:
    try:
        executor_control.ping(str(control_path(socket)), timeout=PING_TIMEOUT)
    except executor_control.ExecutorError:  # not listening yet, refused, garbled: not ready
        return False
    return True


class ExecutorManager:
    """Starts, watches, adopts and stops the kernel executors, one per GPU that hosts their jobs.

    ``visible_env(index)`` is the environment that shows the executor GPU ``index`` alone
    (the backend's ``visible_devices_env``).
    """

    def __init__(self, root: Path, visible_env: Callable[[int], dict[str, str]],
                 start_timeout: float = START_TIMEOUT) -> None:
        self.root = root
        self.visible_env = visible_env
        self.start_timeout = start_timeout
        self._executors: dict[int, _Executor] = {}

    def socket(self, index: int) -> Path:
        """Where GPU ``index``'s executor listens for its jobs' clients."""
        return self.root / f"gpu{index}" / SOCKET_NAME

    def pids(self) -> set[int]:
        """The executors' own processes (their GPU memory is theirs, not any one job's)."""
        return {e.pid for e in self._executors.values()}

    def known(self, index: int) -> bool:
        return index in self._executors

    def alive(self, index: int) -> bool:
        """Whether GPU ``index``'s executor, as this manager knows it, still runs."""
        executor = self._executors.get(index)
        if executor is None:
            return False
        if executor.process is not None:
            return executor.process.poll() is None
        try:
            return psutil.Process(executor.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def adopt(self, index: int) -> bool:
        """Take over a running executor of GPU ``index`` left by an earlier gpuosd (it must answer a ping)."""
        if self.alive(index):
            return True
        socket = self.socket(index)
        pid = _find_executor(socket)
        if not pid or not _ping(socket):
            return False
        self._executors[index] = _Executor(index, pid, socket, None, time.time(), ready=True)
        log.info("adopted the kernel executor of GPU %d (pid %d)", index, pid)
        return True

    def start(self, index: int) -> None:
        """Make sure GPU ``index`` has an executor on its way up (adopted, or spawned now); returns at once."""
        if self.alive(index) or self.adopt(index):
            return
        self._executors.pop(index, None)
        socket = self.socket(index)
        socket.parent.mkdir(parents=True, exist_ok=True)
        # Jobs of every user connect to the job socket; the control socket inside is 0600.
        for d in (self.root, socket.parent):
            os.chmod(d, 0o755)
        for stale in (socket, control_path(socket)):
            stale.unlink(missing_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join(sys.path),
            **self.visible_env(index),
        }
        for key in ("TRITON_INTERPRET", "GPUOS_ATOM_US", "HOME"):
            if key in os.environ:
                env[key] = os.environ[key]
        log_path = socket.parent / "executor.log"
        try:
            with open(log_path, "ab") as out:
                process = subprocess.Popen(
                    executor_control.executor_argv(str(socket)),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True, close_fds=True,
                )
        except OSError as exc:
            raise BackendError(f"cannot start the kernel executor for GPU {index}: {exc}") from exc
        self._executors[index] = _Executor(index, process.pid, socket, process, time.time())
        log.info("starting the kernel executor of GPU %d (pid %d)", index, process.pid)

    def ready(self, index: int) -> bool:
        """Whether GPU ``index``'s executor answers; raises BackendError if it died or never came up."""
        executor = self._executors.get(index)
        if executor is None:
            raise BackendError(f"GPU {index} has no kernel executor")
        if executor.ready:
            return True
        log_path = executor.socket.parent / "executor.log"
        if not self.alive(index):
            del self._executors[index]
            raise BackendError(f"the kernel executor of GPU {index} exited while starting; see {log_path}")
        if _ping(executor.socket):
            executor.ready = True
            log.info("the kernel executor of GPU %d is up after %.1f s", index, time.time() - executor.started)
            return True
        if time.time() - executor.started > self.start_timeout:
            self.stop(index)
            raise BackendError(f"the kernel executor of GPU {index} did not answer within "
                               f"{self.start_timeout:g} s; see {log_path}")
        return False

    def ensure(self, index: int, timeout: float | None = None) -> None:
        """Start GPU ``index``'s executor and wait until it answers (for callers off the control loop)."""
        self.start(index)
        deadline = time.time() + (self.start_timeout if timeout is None else timeout)
        while not self.ready(index):
            if time.time() > deadline:
                raise BackendError(f"the kernel executor of GPU {index} is not up yet")
            time.sleep(0.05)

    def admit(self, index: int, job_id: str, token: str, tenant: str, priority: str, memory_limit: int,
              kernel: str) -> None:
        """Let job ``job_id`` in, once, with ``token``, at ``priority`` and capped at ``memory_limit``."""
        if not self.ready(index):
            raise BackendError(f"the kernel executor of GPU {index} is not up yet")
        # An ExecutorError (a BackendError) names the socket and the executor's reason.
        executor_control.admit(str(control_path(self.socket(index))), job_id=job_id, token=token,
                               tenant=tenant, priority=priority, memory_limit=memory_limit, kernel=kernel)

    def revoke(self, index: int, job_id: str) -> None:
        """Job ``job_id`` ended or was cancelled: the executor drops it (at its next atom, if it runs)."""
        if not self.alive(index):
            return
        try:
            executor_control.revoke(str(control_path(self.socket(index))), job_id)
        except executor_control.ExecutorError as exc:  # one that cannot hear it has dropped the job anyway
            log.info("could not revoke job %s from the kernel executor of GPU %d: %s", job_id, index, exc)

    def died(self) -> list[int]:
        """GPUs whose executor was up and is gone (its jobs died with it)."""
        return [i for i in list(self._executors) if not self.alive(i)]

    def forget(self, index: int) -> None:
        executor = self._executors.pop(index, None)
        if executor is not None and executor.process is not None:
            executor.process.poll()  # reap it

    def kill(self, index: int) -> None:
        """Kill GPU ``index``'s executor, as a crash would (fault injection)."""
        executor = self._executors.get(index)
        if executor is None or not self.alive(index):
            raise BackendError(f"GPU {index} has no kernel executor running")
        os.kill(executor.pid, signal.SIGKILL)

    def stop(self, index: int, wait: bool = False) -> None:
        """SIGTERM GPU ``index``'s executor; SIGKILL follows after STOP_TIMEOUT. Without ``wait``
        the waiting happens on a thread, so the control loop goes on."""
        executor = self._executors.pop(index, None)
        if executor is None:
            return
        log.info("stopping the kernel executor of GPU %d (pid %d)", index, executor.pid)
        if wait:
            _terminate(executor)
        else:
            threading.Thread(target=_terminate, args=(executor,), name=f"gpuos-executor-stop-{index}",
                             daemon=True).start()

    def stop_unused(self, in_use: set[int], indices: list[int]) -> None:
        """Stop the executor of every GPU of ``indices`` not in ``in_use``, adopted ones included."""
        for index in indices:
            if index not in in_use and (self.known(index) or self.adopt(index)):
                self.stop(index)

    def stop_all(self, wait: bool = True) -> None:
        for index in list(self._executors):
            self.stop(index, wait=wait)


def _terminate(executor: _Executor) -> None:
    try:
        os.kill(executor.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + STOP_TIMEOUT
    while time.time() < deadline:
        if executor.process is not None:
            if executor.process.poll() is not None:
                return
        elif not psutil.pid_exists(executor.pid):
            return
        time.sleep(0.02)
    try:
        os.kill(executor.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if executor.process is not None:
        executor.process.wait()
