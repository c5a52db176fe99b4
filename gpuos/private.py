"""Files and directories only the daemon's user may read: the store, job directories, logs.

Standard library only, and nothing above it in gpuos is imported, so the store and the runtime
(which may not import each other) share one definition of "private".
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create ``path`` mode 0700, or take group and other access away if it exists looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, mode & 0o700)


def open_private(path: Path, flags: int = os.O_RDWR) -> int:
    """``path`` opened with ``flags`` (created if missing), mode 0600 even when it existed looser."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
        os.fchmod(fd, 0o600)
    return fd
