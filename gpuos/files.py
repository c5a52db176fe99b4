"""Files replaced whole: whoever reads one sees the old contents or the new, never a part.

Standard library only, and not ``tempfile`` (which pulls in ``random`` and ``shutil``): the
per-job work process of a replay imports this, once for each of hundreds of jobs.
"""

from __future__ import annotations

import os


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), file mode ``mode`` whatever the umask.

    The data goes to a temporary file beside ``path``, which is renamed over it. Its name is
    hidden and ends in ``.tmp``, so a watcher of ``*.json`` in the directory (a CDI runtime)
    never reads it. With ``durable`` the file and then its directory are fsynced, so after a
    crash of the machine the old file or the new one is there; without it only a crash of the
    writing process is survived (for files whose writer's work ends with the machine anyway).
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with open(fd, "wb") as f:
            os.fchmod(fd, mode)  # the umask narrows what os.open creates
            f.write(payload)
            f.flush()
            if durable:
                os.fsync(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
