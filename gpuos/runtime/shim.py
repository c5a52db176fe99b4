"""The per-job supervisor, run as ``python -m gpuos.runtime.shim``.

gpuosd starts one shim per job in its own session. The shim starts the job's command in a new
process group, waits for it and writes its exit status to a file. Because the shim, not the
daemon, is the job's parent, a job outlives a ``kill -9`` of gpuosd and its exit code is still
known when the daemon comes back (the design of containerd's shim).

Standard library only, and nothing from gpuos is imported: the shim must start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def _write_atomic(path: str, data: dict[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuos-shim")
    parser.add_argument("--dir", required=True, help="the job's state directory")
    parser.add_argument("--uid", type=int, default=-1)
    parser.add_argument("--gid", type=int, default=-1)
    parser.add_argument("--cwd", default="")
    parser.add_argument("--env-file", default="", help="JSON object: the job's environment")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    exit_path = os.path.join(args.dir, "exit.json")

    # The daemon may be stopped with SIGTERM by systemd while jobs run on; the shim must not die
    # with it (it is in its own session, but ignore hang-ups from a closing terminal too).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    # The job's environment comes from a file, never from the shim's own environment: the shim
    # may run as root, and a user's PYTHONPATH or LD_PRELOAD must not reach it.
    env = None
    if args.env_file:
        with open(args.env_file) as f:
            env = json.load(f)
    kwargs: dict[str, object] = {"process_group": 0, "cwd": args.cwd or None, "env": env}
    if args.uid >= 0 and os.getuid() == 0 and args.uid != 0:
        kwargs.update(user=args.uid, group=args.gid if args.gid >= 0 else None, extra_groups=[])
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"gpuos: cannot start {command[0] if command else '(empty command)'}: {exc}", file=sys.stderr)
        _write_atomic(exit_path, {"exit_code": 127, "signal": 0, "spawn_error": str(exc), "time": time.time()})
        return 0
    _write_atomic(os.path.join(args.dir, "child.json"), {"pid": child.pid})
    while True:
        try:
            code = child.wait()
            break
        except KeyboardInterrupt:
            continue
    sig = -code if code < 0 else 0
    _write_atomic(
        exit_path,
        {"exit_code": 128 + sig if sig else code, "signal": sig, "time": time.time()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
