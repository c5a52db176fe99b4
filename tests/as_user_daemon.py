"""Run gpuosd as another uid: ``python tests/as_user_daemon.py UID GPUOSD-ARGS...``.

The interpreter here lives under /root, which other users cannot read, so the daemon's modules
(and the standard-library modules it loads lazily) are imported as root first and privileges
are dropped before ``gpuosd``'s main runs. Job supervisors are started with ``sys.executable``;
the daemon's user cannot run this one, so it is pointed at the system's Python of the same
version, which runs the supervisor from the source tree (it needs only the standard library).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402,F401 - loaded before privileges are dropped
import concurrent.futures.thread  # noqa: E402,F401
import fcntl  # noqa: E402,F401
import json  # noqa: E402,F401
import signal  # noqa: E402,F401
import sqlite3  # noqa: E402,F401
import subprocess  # noqa: E402,F401
import tempfile  # noqa: E402,F401
import uuid  # noqa: E402,F401

import psutil  # noqa: E402,F401

import gpuos.api.server  # noqa: E402,F401
import gpuos.daemon.daemon  # noqa: E402,F401
import gpuos.daemon.main  # noqa: E402
import gpuos.runtime.process  # noqa: E402,F401


def system_python() -> str | None:
    """A Python of this version that any user can run, if the system has one."""
    candidate = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    return candidate if os.access(candidate, os.X_OK) else None


if __name__ == "__main__":
    uid = int(sys.argv[1])
    python = system_python()
    if python is not None:
        sys.executable = python
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    os.environ["HOME"] = "/tmp"
    sys.exit(gpuos.daemon.main.main(sys.argv[2:]))
