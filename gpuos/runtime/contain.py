"""Keeping a job's processes together: the process tree under its shim, and its cgroup.

A job may leave its process group (``setsid``) or double-fork, so its process group alone does
not name all of its processes. The shim makes itself a child subreaper, so every orphaned
descendant is re-parented to it rather than to init: the shim's descendants are then exactly the
job's processes. Where cgroup v2 is writable each job also gets a cgroup, which counts its memory
and CPU where those controllers are available and kills all of it at once (``cgroup.kill``).

Standard library only: the shim imports this module and must start fast.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
# Under this cgroup v2 directory each job gets ``<job id>/``.
CGROUP_PARENT = "gpuos"
_CONTROLLERS = ("memory", "cpu")


def become_subreaper() -> bool:
    """Make the calling process a child subreaper (Linux); False where the kernel refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        # The command name (field 2) may hold spaces and parentheses; fields after the last ')' do not.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            parents[int(entry)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (not ``pid`` itself), parents before their children."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [c for p in frontier for c in children.get(p, ()) if c not in found and c != pid]
        found.extend(nxt)
        frontier = nxt
    return found


def start_time(pid: int) -> float:
    """When ``pid`` started, in seconds since the epoch, as psutil's ``create_time()`` says it."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    ticks = int(stat[stat.rfind(b")") + 2:].split()[19])
    with open("/proc/stat") as f:
        boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def send(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# -- cgroup v2 ------------------------------------------------------------------------------------


def _cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup``, or ``.../unified`` on hybrid hosts)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split()[:1] == ["cgroup2"]:
                    return Path(left.split()[4])
    except OSError:
        pass
    return None


class JobCgroup:
    """One job's cgroup v2 directory: ``<cgroup2 mount>/gpuos/<job id>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, job_id: str) -> JobCgroup | None:
        """The job's cgroup, made afresh; None when cgroup v2 is absent or not writable here.

        Memory and CPU accounting are switched on for it where the host's cgroup v2 offers those
        controllers (on a hybrid v1/v2 host they belong to v1, and the cgroup still kills).
        """
        mount = _cgroup2_mount()
        if mount is None:
            return None
        parent = mount / CGROUP_PARENT
        try:
            parent.mkdir(exist_ok=True)
            for directory in (mount, parent):
                available = (directory / "cgroup.controllers").read_text().split()
                for controller in _CONTROLLERS:
                    if controller in available:
                        try:
                            (directory / "cgroup.subtree_control").write_text(f"+{controller}")
                        except OSError:
                            pass  # e.g. the controller is busy in a v1 hierarchy: accounting only is lost
            path = parent / job_id
            stale = JobCgroup(path)
            if path.exists():
                stale.kill()
                stale.remove()
            path.mkdir()
        except OSError:
            return None
        return cls(path)

    @classmethod
    def of(cls, job_id: str) -> JobCgroup | None:
        """The job's existing cgroup, or None."""
        mount = _cgroup2_mount()
        if mount is None:
            return None
        path = mount / CGROUP_PARENT / job_id
        return cls(path) if path.is_dir() else None

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the caller) into this cgroup; its later children are born in it."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill(self) -> bool:
        """SIGKILL every process in the cgroup (kernel 5.14+); False where cgroup.kill is missing."""
        try:
            (self.path / "cgroup.kill").write_text("1")
            return True
        except OSError:
            send(self.pids(), signal.SIGKILL)
            return False

    def remove(self) -> None:
        """Remove the (empty) cgroup; a cgroup that still has processes (EBUSY) stays.

        Never raises: a cgroup left behind costs a directory, and the callers (the shim after
        writing the exit status, the daemon finalizing a job) must not fail over it.
        """
        try:
            self.path.rmdir()
        except OSError:
            pass
