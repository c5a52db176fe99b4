"""A finished job as history: how long it ran, read from its events, and pseudonyms for exports.

``gpuosctl trace export`` turns the store's finished jobs into a trace the simulator replays. A
trace job's duration is the work it does once placed, so a job's **run time** is the wall time
it held its GPUs: each stretch from an event that leaves it RUNNING (started, resumed, restored,
reattached after a restart of gpuosd) to the next event that does not (paused for another
time-sharer's turn, requeued by a preemption, suspended to host, ended) is added up. Queueing,
pauses and suspensions are left out. How runs that were cut short count:

- preempted and requeued, then run again: every stretch counts, so a job that checkpoints (as
  replayed work does) exports its work; one that starts over from scratch exports its work plus
  what it redid, since the store cannot tell the two apart;
- time-sliced or MPS-shared: wall time, so it includes the slowdown its neighbours caused;
- failed or cancelled after it started: what it ran until then, with its outcome;
- never started (cancelled while waiting, stopped by its group): no run time; not exported.

Pseudonyms (``--anonymize``) are keyed hashes, HMAC-SHA256 under a key drawn for one export and
never stored: a plain sha256 of a tenant or group name can be reversed by hashing guesses (user
names are few), a keyed one cannot without the key. Within one export a name always maps to the
same pseudonym, which is all the simulator needs (fairness by tenant, groups, dedupe keys);
two exports cannot be joined on them, which is the price.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from gpuos.jobs import Event, Job, JobState

# The file format of an export (its schema: scheduler/sim/traces.py, which reads it).
HISTORY_FORMAT = "gpuos-history"
HISTORY_VERSION = 1


@dataclass(frozen=True)
class RunTime:
    """How long a job held its GPUs, and when it first got them (None: never)."""

    seconds: float
    first_start: float | None


def run_time(events: Iterable[Event], end: float | None = None) -> RunTime:
    """The run time of one job from its events in order (see the module docstring); a stretch
    still open after the last event closes at ``end`` (the job's end) when given."""
    total = 0.0
    since: float | None = None
    first: float | None = None
    for event in events:
        running = event.state == JobState.RUNNING
        if running and since is None:
            since = event.time
            first = event.time if first is None else first
        elif not running and event.state is not None and since is not None:
            total += max(0.0, event.time - since)
            since = None
    if since is not None and end is not None:
        total += max(0.0, end - since)
    return RunTime(total, first)


@dataclass(frozen=True)
class HistoryJob:
    """A finished job and its run time, as the store reads them for an export."""

    job: Job
    run: RunTime


class Pseudonyms:
    """Keyed-hash pseudonyms for one export (module docstring): ``of("tenant", name)``."""

    WIDTH = 12

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def of(self, kind: str, name: str) -> str:
        """The pseudonym of ``name`` as a ``kind`` (tenant, group, dedupe, job); "" stays ""."""
        if not name:
            return ""
        digest = hmac.new(self._key, f"{kind}\0{name}".encode(), hashlib.sha256).hexdigest()
        return f"{kind[0]}{digest[:self.WIDTH]}"
