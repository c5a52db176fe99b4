"""``gpuos.report_latency(seconds)``: a job reports one request's latency to gpuosd.

A latency-class job with an SLO (``gpuosctl submit --qos LS --slo-p99 20ms``) calls it once per
request; gpuosd reads the samples each round and throttles the best-effort jobs sharing its GPU
just enough to hold the SLO (gpuos/daemon/colocation.py). The kernel worker and the executor
client report each step the same way, so gpuosd has one reader.

Each sample is one line, ``<completion time> <latency>`` in seconds, appended with one
``write(2)`` to ``latency.log`` in the directory gpuosd gives the job (descriptor
``GPUOS_PROGRESS_DIR_FD``, where the kernel worker writes progress.json), or to the file
``GPUOS_LATENCY_FILE`` for a program started by hand. The file stays open; there is no buffering
to flush and no fsync, so a call costs a few microseconds, and a lock makes it safe from threads.
Outside gpuosd (neither variable set) a call does nothing, after one warning.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings

LATENCY_FILE = "latency.log"


class LatencyLog:
    """An open latency log: one line per :meth:`report`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> LatencyLog | None:
        """The log gpuosd set this process up to write, or None when it set up none."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        dir_fd = os.environ.get("GPUOS_PROGRESS_DIR_FD", "")
        path = os.environ.get("GPUOS_LATENCY_FILE", "")
        try:
            if dir_fd:
                return cls(os.open(LATENCY_FILE, flags | os.O_NOFOLLOW, 0o644, dir_fd=int(dir_fd)))
            if path:
                return cls(os.open(path, flags, 0o644))
        except (OSError, ValueError) as exc:
            warnings.warn(f"gpuos.report_latency: cannot open the latency log ({exc}); latencies are not reported",
                          RuntimeWarning, stacklevel=3)
        return None

    def report(self, seconds: float) -> None:
        """Append one sample that completed now and took ``seconds``."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a latency is a non-negative number of seconds, not {seconds!r}")
        line = f"{time.time():.6f} {seconds:.9g}\n".encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


_lock = threading.Lock()
_log: LatencyLog | None = None
_opened = False
_warned = False


def job_log() -> LatencyLog | None:
    """This process's latency log as gpuosd set it up (opened once), or None outside gpuosd."""
    global _log, _opened
    if not _opened:
        with _lock:
            if not _opened:
                _log = LatencyLog.from_environment()
                _opened = True
    return _log


def report_latency(seconds: float) -> None:
    """Report one request's latency, in seconds, to gpuosd (see the module's docstring).

    Raises ValueError for a negative or non-finite latency; does nothing (after one warning)
    when the process is not a gpuosd job. A forked child shares its parent's open log.
    """
    global _warned
    log = job_log()
    if log is None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a latency is a non-negative number of seconds, not {seconds!r}")
        if not _warned and not os.environ.get("GPUOS_PROGRESS_DIR_FD"):
            _warned = True
            warnings.warn("gpuos.report_latency: not running under gpuosd (neither GPUOS_PROGRESS_DIR_FD "
                          "nor GPUOS_LATENCY_FILE is set); latencies are not reported", RuntimeWarning, stacklevel=2)
        return
    log.report(seconds)


# A sample beyond a day is garbage (the API refuses such an SLO too).
_MAX_SECONDS = 86400.0


def parse_line(line: bytes) -> tuple[float, float] | None:
    """One line of a latency log as (completion time, latency), or None when it is not one:
    the job writes the file, so anything it holds is read leniently and garbage is skipped."""
    fields = line.split()
    if len(fields) != 2:
        return None
    try:
        when, seconds = float(fields[0]), float(fields[1])
    except ValueError:
        return None
    if not (math.isfinite(when) and when > 0 and math.isfinite(seconds) and 0 <= seconds <= _MAX_SECONDS):
        return None
    return when, seconds
