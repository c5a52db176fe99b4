"""MPS: one control daemon per GPU, and the environment that makes a job its client.

The control daemon is started the way NVIDIA documents it (``nvidia-cuda-mps-control -d`` with
``CUDA_VISIBLE_DEVICES``, ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY`` set), with
its pipe and log directories under the state dir. ``-d`` daemonizes, so the manager finds the
daemon afterwards by the pipe directory in its environment, checks that it lives, and starts a
new one when it has died. The simulator's backend supplies a stand-in program with the same
command-line contract, so this module runs unchanged on both.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from gpuos.errors import BackendError
from gpuos.units import MiB

log = logging.getLogger("gpuos.mps")

START_TIMEOUT = 10.0


def mps_limits(compute_milli: int, memory_bytes: int) -> tuple[int, int]:
    """A share's MPS limits: (active thread percentage, pinned device memory in MiB).

    Both round down, so no client is let past its share (255 milli is 25%, not 26%); MPS takes
    no limit of 0, so a share under 1% or 1 MiB gets that much. The client's variables and the
    daemon's ceiling are both made here, so a ceiling set by the largest share is never below
    that share's own variables.
    """
    return max(1, min(100, compute_milli // 10)), max(1, memory_bytes // MiB)


@dataclass(frozen=True)
class MpsDaemon:
    index: int
    pid: int
    pipe_dir: Path
    log_dir: Path


def _find_daemon(pipe_dir: Path) -> int:
    """The pid of the control daemon serving ``pipe_dir``, or 0."""
    wanted = str(pipe_dir)
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        # The daemonized control process keeps its "-d"; a client invocation (e.g. "quit") has none.
        if "-d" not in cmdline or not any("mps" in part for part in cmdline[:3]):
            continue
        try:
            if proc.environ().get("CUDA_MPS_PIPE_DIRECTORY") == wanted and proc.status() != psutil.STATUS_ZOMBIE:
                return int(proc.info["pid"])
        except psutil.Error:
            continue
    return 0


class MpsManager:
    """Starts, watches and stops the MPS control daemons, one per GPU that hosts MPS clients."""

    def __init__(self, root: Path, control_command: list[str], uuids: dict[int, str]) -> None:
        self.root = root
        self.control_command = control_command
        self.uuids = uuids
        self._daemons: dict[int, MpsDaemon] = {}
        # The (thread percentage, pinned memory MiB) ceiling last set on each GPU's daemon.
        self._ceilings: dict[int, tuple[int, int]] = {}
        # Control daemons asked to quit in the background (stop(wait=False)), by GPU.
        self._quitting: dict[int, threading.Thread] = {}

    def _dirs(self, index: int) -> tuple[Path, Path]:
        base = self.root / f"gpu{index}"
        return base / "pipe", base / "log"

    def _env(self, index: int) -> dict[str, str]:
        pipe, logs = self._dirs(index)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CUDA_VISIBLE_DEVICES": self.uuids[index],
            "CUDA_MPS_PIPE_DIRECTORY": str(pipe),
            "CUDA_MPS_LOG_DIRECTORY": str(logs),
        }

    def running(self, index: int) -> bool:
        daemon = self._daemons.get(index)
        return daemon is not None and psutil.pid_exists(daemon.pid) and _find_daemon(daemon.pipe_dir) == daemon.pid

    def ensure(self, index: int) -> MpsDaemon:
        """The GPU's control daemon, started (or adopted, after a gpuosd restart) if needed."""
        if self.running(index):
            return self._daemons[index]
        quitting = self._quitting.pop(index, None)
        if quitting is not None:
            quitting.join()  # a new daemon must not adopt the one on its way out
        pipe, logs = self._dirs(index)
        pid = _find_daemon(pipe)
        if not pid:
            for d in (pipe, logs):
                d.mkdir(parents=True, exist_ok=True)
            # Jobs of every user are clients: they reach the pipes, the daemon's user owns the rest.
            for d in (self.root, pipe.parent, pipe):
                os.chmod(d, 0o755)
            try:
                subprocess.run([*self.control_command, "-d"], env=self._env(index), check=True, timeout=START_TIMEOUT,
                               stdin=subprocess.DEVNULL, capture_output=True)
            except (OSError, subprocess.SubprocessError) as exc:
                raise BackendError(f"cannot start the MPS control daemon for GPU {index}: {exc}") from exc
            deadline = time.time() + START_TIMEOUT
            while not (pid := _find_daemon(pipe)):
                if time.time() > deadline:
                    raise BackendError(f"the MPS control daemon for GPU {index} did not come up; see {logs}")
                time.sleep(0.02)
            log.info("started MPS control daemon for GPU %d (pid %d)", index, pid)
        daemon = MpsDaemon(index, pid, pipe, logs)
        self._daemons[index] = daemon
        return daemon

    def died(self) -> list[int]:
        """GPUs whose control daemon was started and is gone (its clients died with it)."""
        return [i for i in list(self._daemons) if not self.running(i)]

    def forget(self, index: int) -> None:
        self._daemons.pop(index, None)
        self._ceilings.pop(index, None)

    def client_env(self, index: int, compute_milli: int, memory_bytes: int) -> dict[str, str]:
        """What a client job needs: the daemon's pipe, its thread share and its pinned memory limit."""
        daemon = self.ensure(index)
        percent, limit_mib = mps_limits(compute_milli, memory_bytes)
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(daemon.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(daemon.log_dir),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percent),
            # The client sees its one GPU as device 0, which is what the limit is keyed by.
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={limit_mib}M",
        }

    def set_ceiling(self, index: int, compute_milli: int, memory_bytes: int) -> None:
        """Limit every client of GPU ``index``'s daemon to ``compute_milli`` of its threads and
        ``memory_bytes`` of pinned memory, on the daemon itself.

        A client's CUDA_MPS_* variables are its own to change; the daemon's limits are not, and the
        driver lets a client's variable only lower them. One server serves all clients of a user,
        so the ceiling is the largest share on the GPU (the caller's to work out, and to set again
        when that share ends): equal shares (the device plugin's) are enforced exactly, unequal
        ones no tighter than the largest. Set as the daemon's defaults (for servers it starts
        from now on) and on the servers running.
        """
        percent, limit_mib = mps_limits(compute_milli, memory_bytes)
        if self._ceilings.get(index) == (percent, limit_mib) and self.running(index):
            return
        self.ensure(index)
        servers = [w for w in self._control(index, "get_server_list").split() if w.isdigit()]
        commands = [f"set_default_active_thread_percentage {percent}",
                    f"set_default_device_pinned_mem_limit 0 {limit_mib}M"]
        for pid in servers:
            commands += [f"set_active_thread_percentage {pid} {percent}", f"set_device_pinned_mem_limit {pid} 0 {limit_mib}M"]
        self._control(index, "\n".join(commands))
        self._ceilings[index] = (percent, limit_mib)

    def _control(self, index: int, commands: str) -> str:
        """Send ``commands`` (one a line) to GPU ``index``'s control daemon; what it answered."""
        try:
            done = subprocess.run(self.control_command, input=(commands + "\n").encode(), env=self._env(index),
                                  timeout=START_TIMEOUT, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendError(f"cannot reach the MPS control daemon of GPU {index}: {exc}") from exc
        return done.stdout.decode(errors="replace")

    def stop(self, index: int, wait: bool = True) -> None:
        """Ask the GPU's control daemon to quit (once it has no clients). With ``wait`` False the
        asking and the waiting (about a second: the control program is a process of its own)
        happen on a thread, so the control loop goes on; ``ensure`` waits for it if it must."""
        daemon = self._daemons.pop(index, None)
        self._ceilings.pop(index, None)
        if daemon is None:
            return
        if not wait:
            thread = threading.Thread(target=self._quit, args=(index, daemon), name=f"gpuos-mps-quit-{index}",
                                      daemon=True)
            self._quitting[index] = thread
            thread.start()
            return
        self._quit(index, daemon)

    def _quit(self, index: int, daemon: MpsDaemon) -> None:
        try:
            subprocess.run(self.control_command, input=b"quit\n", env=self._env(index), timeout=START_TIMEOUT,
                           capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("MPS control daemon for GPU %d did not quit cleanly: %s", index, exc)
        deadline = time.time() + START_TIMEOUT
        while psutil.pid_exists(daemon.pid) and time.time() < deadline:
            time.sleep(0.02)

    def stop_unused(self, in_use: set[int]) -> None:
        """Stop the control daemon of every GPU not in ``in_use``, adopted ones included.

        After a restart the manager knows no daemons; those whose clients all ended while
        gpuosd was down are found by their pipe directory and stopped.
        """
        for index in self.uuids:
            if index in in_use:
                continue
            pipe, logs = self._dirs(index)
            pid = self._daemons[index].pid if index in self._daemons else _find_daemon(pipe)
            if pid:
                log.info("stopping the MPS control daemon of GPU %d (pid %d): it has no clients", index, pid)
                self._daemons[index] = MpsDaemon(index, pid, pipe, logs)
                self.stop(index)

    def stop_all(self) -> None:
        for index in list(self._daemons):
            self.stop(index)

    def remove_dirs(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
