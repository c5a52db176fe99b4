"""gpuosd's private runtime directory (its internal gRPC socket), made afresh at every start.

It lives in the state dir, ``<state>/run/`` (0700), so a daemon killed with ``kill -9`` leaves
nothing in /tmp and the next start removes what it left. A Unix socket's path is limited to 107
bytes; under a state dir too deep for that, the directory is a short one in the temp dir named
after the state dir's hash, and the next start removes any of those it finds for its state dir.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

SOCKET_NAME = "grpc.sock"
_MAX_SOCKET_PATH = 107


def temp_prefix(state: Path) -> str:
    """The name prefix of the short temp-dir fallback for ``state``."""
    return f"gpuos-{hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]}-"


def make_private_dir(state: Path) -> Path:
    """A new, empty 0700 directory for ``state``'s daemon; what an earlier daemon left is removed."""
    prefix = temp_prefix(state)
    temp = Path(tempfile.gettempdir())
    for stale in temp.glob(prefix + "*"):
        info = stale.lstat()
        # Only real directories of ours: a name in /tmp can be planted by anyone.
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            shutil.rmtree(stale, ignore_errors=True)
    run = state / "run"
    if len(os.fsencode(str(run / SOCKET_NAME))) > _MAX_SOCKET_PATH:
        return Path(tempfile.mkdtemp(prefix=prefix))
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(mode=0o700)
    os.chmod(run, 0o700)  # mkdir's mode is cut by the umask
    return run
