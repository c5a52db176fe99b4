"""The per-job supervisor, run as ``python -m gpuos.runtime.shim``.

gpuosd starts one shim per job in its own session. The shim starts the job's command in a new
process group, waits for it and writes its exit status to a file. Because the shim, not the
daemon, is the job's parent, a job outlives a ``kill -9`` of gpuosd and its exit code is still
known when the daemon comes back (the design of containerd's shim).

The shim holds an exclusive lock on ``<job>/lock`` (which names its pid and start time) from
before the command starts until its exit status is written, so a restarted daemon can tell a
live supervisor from a dead one even when it never recorded the shim's pid. It is a child
subreaper and puts the job in its own cgroup where it can: when the job's main process exits,
whatever it left running (even after ``setsid``) is stopped and reaped before the exit status is
written, so a job's GPUs are given back only once all its processes are gone.

Nothing from gpuos is imported except the standard-library-only ``gpuos.runtime.contain``: the
shim must start fast.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

from gpuos.runtime.contain import JobCgroup, become_subreaper, descendants, send, start_time

# A preempted job restarts in the same directory: its previous shim may still hold the lock for
# the moment between writing its exit status and exiting.
LOCK_WAIT = 10.0


def _write_atomic(path: str, data: dict[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _take_lock(directory: str) -> int | None:
    """Lock ``<job>/lock`` and write this shim's pid and start time in it; None if another holds it."""
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "started": start_time(os.getpid())}).encode())
    os.fsync(fd)
    return fd


def _reap() -> None:
    """Collect every child that has exited (orphans re-parented to the subreaper among them)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _left_behind(cgroup: JobCgroup | None) -> list[int]:
    me = os.getpid()
    pids = set(descendants(me)) | set(cgroup.pids() if cgroup else ())
    pids.discard(me)
    return sorted(pids)


def _stop_the_rest(cgroup: JobCgroup | None, grace: float) -> None:
    """SIGTERM what the job left running, SIGKILL it after ``grace``, and reap it all."""
    _reap()
    rest = _left_behind(cgroup)
    if not rest:
        return
    send(rest, signal.SIGTERM)
    send(rest, signal.SIGCONT)  # a stopped process holds SIGTERM until it runs
    deadline = time.monotonic() + grace
    while rest and time.monotonic() < deadline:
        time.sleep(0.05)
        _reap()
        rest = _left_behind(cgroup)
    while rest:
        if cgroup is not None:
            cgroup.kill()
        send(rest, signal.SIGKILL)
        time.sleep(0.05)
        _reap()
        rest = _left_behind(cgroup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuos-shim")
    parser.add_argument("--dir", required=True, help="the job's state directory")
    parser.add_argument("--uid", type=int, default=-1)
    parser.add_argument("--gid", type=int, default=-1)
    parser.add_argument("--cwd", default="")
    parser.add_argument("--env-file", default="", help="JSON object: the job's environment")
    parser.add_argument("--kill-grace", type=float, default=5.0,
                        help="seconds between SIGTERM and SIGKILL for processes the job leaves behind")
    parser.add_argument("--progress-dir", default="",
                        help="a directory the job may write (its uid owns it); passed to it as GPUOS_PROGRESS_DIR_FD")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    exit_path = os.path.join(args.dir, "exit.json")
    child_path = os.path.join(args.dir, "child.json")

    # The daemon may be stopped with SIGTERM by systemd while jobs run on; the shim must not die
    # with it (it is in its own session, but ignore hang-ups from a closing terminal too).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    lock = _take_lock(args.dir)
    if lock is None:
        print("gpuos: another supervisor holds this job's lock; not starting it twice", file=sys.stderr)
        return 1

    # The job's environment comes from a file, never from the shim's own environment: the shim
    # may run as root, and a user's PYTHONPATH or LD_PRELOAD must not reach it.
    env: dict[str, str] | None = None
    if args.env_file:
        with open(args.env_file) as f:
            env = json.load(f)
    drop = args.uid >= 0 and os.getuid() == 0 and args.uid != 0
    gid = args.gid if args.gid >= 0 else args.uid
    become_subreaper()
    cgroup = JobCgroup.create(os.path.basename(os.path.normpath(args.dir)))
    pass_fds: tuple[int, ...] = ()
    if args.progress_dir:
        # The job's own directory is private to the daemon's user; the job writes its progress
        # through a descriptor of a directory it owns, which needs no access to the path above it.
        os.makedirs(args.progress_dir, mode=0o700, exist_ok=True)
        if drop:
            os.chown(args.progress_dir, args.uid, gid)
        progress_fd = os.open(args.progress_dir, os.O_RDONLY | os.O_DIRECTORY)
        pass_fds = (progress_fd,)
        env = dict(env or os.environ)
        env["GPUOS_PROGRESS_DIR_FD"] = str(progress_fd)

    def prepare() -> None:
        # In the child, before exec: join the cgroup while still privileged, say that the command
        # is about to run (a recovering daemon requeues a job only if it never did), then drop
        # to the job's user.
        if cgroup is not None:
            try:
                cgroup.join()
            except OSError:
                pass
        _write_atomic(child_path, {"pid": os.getpid()})
        if drop:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(args.uid)

    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, process_group=0, cwd=args.cwd or None,
                                 env=env, preexec_fn=prepare, pass_fds=pass_fds)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"gpuos: cannot start {command[0] if command else '(empty command)'}: {exc}", file=sys.stderr)
        _write_atomic(exit_path, {"exit_code": 127, "signal": 0, "spawn_error": str(exc), "time": time.time()})
        if cgroup is not None:
            cgroup.remove()
        return 0
    for fd in pass_fds:
        os.close(fd)
    code = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except KeyboardInterrupt:
            continue
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
            break
    _stop_the_rest(cgroup, args.kill_grace)
    sig = -code if code < 0 else 0
    _write_atomic(
        exit_path,
        {"exit_code": 128 + sig if sig else code, "signal": sig, "time": time.time()},
    )
    if cgroup is not None:
        cgroup.remove()
    os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
