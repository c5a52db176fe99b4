"""Durable state: jobs, their transitions and events, in SQLite (WAL).

Every write goes through one writer thread that commits batches of writes in one transaction
(group commit), so a write returns only once it is on disk and many concurrent submits share
one fsync. Jobs that are not finished are also kept in memory for the scheduler's snapshots;
SQLite stays the source of truth and the cache is rebuilt from it on start.

The store is private: its directory is mode 0700 and its files 0600 (SQLite gives the -wal and
-shm files the database file's mode). It refuses to open when it is damaged (a failed
``PRAGMA quick_check``, not a database, read-only), naming what and where in one line.

A torn write-ahead log is not an error SQLite reports: it replays the valid frames and drops the
rest, so a WAL cut in half opens as a store with half its jobs. To catch that, after every
committed batch the writer records the last job and event sequence numbers in ``gpuos.commit``,
a file outside the database (written after the commit's fsync, so it is never ahead of what is
durable); at open, a database whose sequence numbers are behind that record has lost commits.

A write that fails (a full disk, an I/O error) fails only its batch: the writer rolls back,
answers that batch's callers (RESOURCE_EXHAUSTED "state dir full: N bytes free" on a full disk)
and carries on, so writes succeed again as soon as space returns.
"""

from __future__ import annotations

import base64
import bisect
import builtins
import enum
import fcntl
import json
import logging
import os
import queue
import secrets
import shutil
import sqlite3
import stat
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from gpuos.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, StoreError
from gpuos.groups import GROUP_BUDGET, Group, GroupMode, GroupSpec, after_success, over_budget
from gpuos.history import HistoryJob, run_time
from gpuos.jobs import Event, Job, JobKind, JobSpec, JobState, Partition, Placement, Priority, Qos, Resources
from gpuos.private import open_private, private_dir
from gpuos.text import quote

T = TypeVar("T")

log = logging.getLogger("gpuos.store")

LOCK_NAME = "gpuosd.lock"
DB_NAME = "gpuos.db"
# The last committed job and event sequence numbers, kept outside the database (see above).
COMMIT_RECORD = "gpuos.commit"
# The record is rewritten in place at this width (a sector holds it whole).
RECORD_WIDTH = 80
# Submits are refused below this much free space, so what is left goes to the writes gpuosd
# itself needs (jobs' exits, cancels) rather than to more queued work.
MIN_FREE_BYTES = 1 << 20
# Purging deletes at most this many jobs per transaction, so submits never wait long behind it.
PURGE_BATCH = 2000
# SQLite's primary result codes (an error's code & 0xff) that mean the disk is full or failing.
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SQLITE_READONLY = 8
_TERMINAL = tuple(s.value for s in JobState if s.terminal)
_UNFINISHED = tuple(s.value for s in JobState if not s.terminal)
# A dedupe key matches a job that succeeded at most this long ago (and is not yet purged).
DEDUPE_RETENTION = 24 * 3600.0
# The most jobs one SubmitBatch commits.
MAX_BATCH_JOBS = 10_000


def new_job_id() -> str:
    """A fresh job id: 64 random bits as 16 lower-case hex characters."""
    return secrets.token_hex(8)


class Submitted(enum.Enum):
    """What a submit did: made a new job, or returned an existing one for a retried idempotency
    key or a matching dedupe key."""

    NEW = "new"
    RETRIED = "retried"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class JobPage:
    """One page of a listing: its jobs in submission order, and where the next page starts."""

    jobs: list[Job]
    # The sequence number to continue after, or 0 when this was the last page.
    next_after: int
    # With a limit (the newest N): the lowest sequence number in the listing, else 0.
    floor: int


def encode_page_token(after: int, floor: int) -> str:
    """An opaque List page token for "continue after job ``after``, not below ``floor``"."""
    return base64.urlsafe_b64encode(f"v1:{after}:{floor}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, int]:
    """(after, floor) from a token made by :func:`encode_page_token`; InvalidArgument otherwise."""
    bad = InvalidArgument("page_token", "is not a token from an earlier List reply's next_page_token")
    if len(token) > 64:
        raise bad
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, after, floor = text.split(":")
        values = int(after), int(floor)
    except ValueError:
        raise bad from None
    if version != "v1" or min(values) < 0 or not all(v.isdigit() for v in (after, floor)):
        raise bad
    return values

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    spec TEXT NOT NULL,
    owner_uid INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    placement TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attained_service REAL NOT NULL DEFAULT 0,
    shim_pid INTEGER NOT NULL DEFAULT 0,
    shim_started REAL NOT NULL DEFAULT 0,
    child_pid INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    preemptions INTEGER NOT NULL DEFAULT 0,
    run_since REAL,
    idempotency_key TEXT UNIQUE,
    grp TEXT NOT NULL DEFAULT '',
    dedupe_key TEXT NOT NULL DEFAULT '',
    cancel_reason TEXT NOT NULL DEFAULT '',
    stop_requested INTEGER NOT NULL DEFAULT 0,
    suspended_bytes INTEGER NOT NULL DEFAULT 0,
    suspended_from INTEGER NOT NULL DEFAULT -1
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT,
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    tenant TEXT NOT NULL DEFAULT '',
    grp TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE INDEX IF NOT EXISTS events_tenant ON events(tenant, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    mode TEXT NOT NULL,
    best_of INTEGER NOT NULL DEFAULT 0,
    budget REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    spent REAL NOT NULL DEFAULT 0,
    ended_reason TEXT NOT NULL DEFAULT '',
    ended_at REAL,
    PRIMARY KEY (tenant, name)
);
-- A duplicate submitted into a group counts for that group as the job it duplicated: the job's
-- end, once it comes, is applied to each group linked to it here (with no GPU-seconds: the
-- job's own group, if any, pays for it).
CREATE TABLE IF NOT EXISTS group_links (
    tenant TEXT NOT NULL,
    grp TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (job_id, tenant, grp)
);
"""
# Columns added after the first release, with their definitions: a store made before them gets
# them at open (ALTER TABLE ... ADD COLUMN), and its rows read as jobs without a group.
_ADDED_COLUMNS = {
    "jobs": (("grp", "TEXT NOT NULL DEFAULT ''"), ("dedupe_key", "TEXT NOT NULL DEFAULT ''"),
             ("cancel_reason", "TEXT NOT NULL DEFAULT ''"), ("stop_requested", "INTEGER NOT NULL DEFAULT 0"),
             ("suspended_bytes", "INTEGER NOT NULL DEFAULT 0"), ("suspended_from", "INTEGER NOT NULL DEFAULT -1")),
    "events": (("grp", "TEXT NOT NULL DEFAULT ''"),),
}
# Indexes on added columns, made once the columns exist.
_ADDED_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_group ON jobs(tenant, grp) WHERE grp != '';
CREATE INDEX IF NOT EXISTS jobs_dedupe ON jobs(tenant, dedupe_key) WHERE dedupe_key != '';
CREATE INDEX IF NOT EXISTS events_group ON events(tenant, grp, seq) WHERE grp != '';
"""

_JOB_COLUMNS = (
    "id, seq, spec, owner_uid, tenant, state, reason, message, exit_code, placement, created_at, "
    "started_at, finished_at, attained_service, shim_pid, shim_started, child_pid, cancel_requested, preemptions, "
    "run_since, cancel_reason, stop_requested, suspended_bytes, suspended_from"
)
_GROUP_COLUMNS = "tenant, name, mode, best_of, budget, created_at, succeeded, spent, ended_reason, ended_at"


def _row_to_group(row: tuple[Any, ...]) -> Group:
    tenant, name, mode, best_of, budget, created, succeeded, spent, ended_reason, ended_at = row
    return Group(tenant=tenant, spec=GroupSpec(name, GroupMode(mode), best_of, budget), created_at=created,
                 succeeded=succeeded, spent=spent, ended_reason=ended_reason, ended_at=ended_at)


def spec_to_json(spec: JobSpec) -> str:
    """The row's spec text. Written out field by field: ``dataclasses.asdict`` cost 80% of a
    batch submit. tests/test_store.py checks that every field of JobSpec round-trips."""
    r = spec.resources
    data: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind.value,
        "resources": {"gpus": r.gpus, "gpu_milli": r.gpu_milli, "memory_bytes": r.memory_bytes,
                      "mig_profile": r.mig_profile, "gpu_types": list(r.gpu_types), "sharing": r.sharing},
        "command": list(spec.command),
        "kernel": spec.kernel,
        "params": [list(p) for p in spec.params],
        "priority": spec.priority.name,
        "tenant": spec.tenant,
        "qos": spec.qos.value,
        "env": [list(e) for e in spec.env],
        "cwd": spec.cwd,
        "estimated_seconds": spec.estimated_seconds,
    }
    # Only when set, so every other job's row reads as it always did.
    if spec.reservation_keys:
        data["reservation_keys"] = list(spec.reservation_keys)
    if spec.group:
        data["group"] = spec.group
    if spec.dedupe_key:
        data["dedupe_key"] = spec.dedupe_key
    if spec.slo_p99_seconds:
        data["slo_p99_seconds"] = spec.slo_p99_seconds
    return json.dumps(data, separators=(",", ":"))


def spec_from_json(text: str) -> JobSpec:
    data = json.loads(text)
    res = data.pop("resources")
    kind = JobKind(data["kind"])
    params: tuple[tuple[str, str], ...] = tuple(tuple(p) for p in data["params"])  # type: ignore[misc]
    keys = tuple(data.get("reservation_keys", ()))
    if kind == JobKind.EXTERNAL and not keys:
        # Stores before reservation_keys kept them as one comma-joined "keys" param.
        legacy = dict(params).get("keys", "")
        keys = tuple(k for k in legacy.split(",") if k)
        params = tuple(p for p in params if p[0] != "keys")
    return JobSpec(
        name=data["name"],
        kind=kind,
        resources=Resources(**{**res, "gpu_types": tuple(res.get("gpu_types", ()))}),
        command=tuple(data["command"]),
        kernel=data["kernel"],
        params=params,
        reservation_keys=keys,
        priority=Priority[data["priority"]],
        tenant=data["tenant"],
        qos=Qos(data["qos"]),
        env=tuple(tuple(e) for e in data["env"]),  # type: ignore[misc]
        cwd=data["cwd"],
        estimated_seconds=data["estimated_seconds"],
        group=data.get("group", ""),
        dedupe_key=data.get("dedupe_key", ""),
        slo_p99_seconds=data.get("slo_p99_seconds", 0.0),
    )


def placement_to_json(p: Placement | None) -> str | None:
    if p is None:
        return None
    data = asdict(p)
    data["partition"] = str(p.partition)  # the API's spelling, as stores have always held it
    return json.dumps(data, separators=(",", ":"))


def placement_from_json(text: str | None) -> Placement | None:
    if not text:
        return None
    data = json.loads(text)
    granted = data["granted"]
    return Placement(
        devices=tuple(data["devices"]),
        device_uuids=tuple(data["device_uuids"]),
        partition=Partition.parse(data["partition"]),
        granted=Resources(**{**granted, "gpu_types": tuple(granted.get("gpu_types", ()))}),
        mig_slot=data.get("mig_slot", -1),
        mig_uuid=data.get("mig_uuid", ""),
    )


def _row_to_job(row: tuple[Any, ...]) -> Job:
    (id_, seq, spec, uid, _tenant, state, reason, message, exit_code, placement, created, started, finished,
     attained, shim_pid, shim_started, child_pid, cancel_requested, preemptions, run_since, cancel_reason,
     stop_requested, suspended_bytes, suspended_from) = row
    return Job(
        id=id_,
        spec=spec_from_json(spec),
        owner_uid=uid,
        state=JobState(state),
        reason=reason,
        message=message,
        exit_code=exit_code,
        placement=placement_from_json(placement),
        created_at=created,
        started_at=started,
        finished_at=finished,
        attained_service=attained,
        seq=seq,
        shim_pid=shim_pid,
        shim_started=shim_started,
        child_pid=child_pid,
        cancel_requested=bool(cancel_requested),
        preemptions=preemptions,
        run_since=run_since,
        cancel_reason=cancel_reason,
        stop_requested=bool(stop_requested),
        suspended_bytes=suspended_bytes,
        suspended_from=suspended_from,
    )


def _free_bytes(path: Path) -> int:
    """Bytes free for gpuosd's files under ``path`` (0 when that cannot even be asked)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _os_problem(exc: OSError) -> str:
    """An OSError at open in words, without Python's ``[Errno N]``."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


_EVENT_COLUMNS = "seq, time, job_id, kind, state, reason, message, tenant, grp"
# Job changes kept in memory for the controller's incremental sync; one that falls behind by
# more does a full sync.
CHANGE_LOG = 65536
# Events kept in memory for follow streams (a few MB at most).
RECENT_EVENTS = 8192


def _row_to_event(r: tuple[Any, ...]) -> Event:
    return Event(seq=r[0], time=r[1], job_id=r[2], kind=r[3], state=JobState(r[4]) if r[4] else None,
                 reason=r[5], message=r[6], tenant=r[7], group=r[8])


def _job_filters(states: Iterable[JobState], tenant: str) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their arguments) for jobs in any of ``states`` and of ``tenant`` (either may be empty)."""
    where: list[str] = []
    args: list[Any] = []
    values = [s.value for s in states]
    if values:
        where.append(f"state IN ({','.join('?' * len(values))})")
        args.extend(values)
    if tenant:
        where.append("tenant = ?")
        args.append(tenant)
    return where, args


class _Write:
    """One write waiting for the writer thread: a function of the connection, and who waits for it."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


class _NewRows:
    """New jobs (and their "submitted" events) waiting to be written with one statement each."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.made: list[Job] = []

    def add(self, store: Store, spec: JobSpec, owner_uid: int, idempotency_key: str, now: float) -> Job:
        """A new PENDING job with the next sequence number; its id is drawn when written."""
        job = Job(id="", spec=spec, owner_uid=owner_uid, created_at=now)
        job.seq = store._next_seq
        store._next_seq += 1
        store._batch_submits[spec.tenant] += 1
        self.made.append(job)
        self.jobs.append((spec_to_json(spec), idempotency_key or None))
        return job

    def write(self, conn: sqlite3.Connection) -> None:
        if not self.made:
            return
        ids = _unused_ids(conn, len(self.made))
        for job, job_id in zip(self.made, ids, strict=True):
            job.id = job_id
        conn.executemany(
            "INSERT INTO jobs (id, seq, spec, owner_uid, tenant, state, created_at, idempotency_key, grp, dedupe_key) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(job.id, job.seq, text, job.owner_uid, job.spec.tenant, job.state.value, job.created_at, key,
              job.spec.group, job.spec.dedupe_key) for job, (text, key) in zip(self.made, self.jobs, strict=True)],
        )
        conn.executemany(
            "INSERT INTO events (time, job_id, kind, state, reason, message, tenant, grp) VALUES (?,?,?,?,?,?,?,?)",
            [(job.created_at, job.id, "submitted", job.state.value, "", "", job.spec.tenant, job.spec.group)
             for job in self.made],
        )
        self.made, self.jobs = [], []


def _unused_ids(conn: sqlite3.Connection, count: int) -> list[str]:
    """``count`` distinct new job ids that no job has (64 random bits collide rarely, but a
    collision must never fail a submit)."""
    for _ in range(100):
        ids = list(dict.fromkeys(new_job_id() for _ in range(count)))
        taken: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            taken.update(r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE id IN ({','.join('?' * len(chunk))})",
                                                    chunk))
        ids = [i for i in ids if i not in taken]
        if len(ids) == count:
            return ids
    raise RuntimeError("100 draws of fresh job ids in a row collided: the id generator is broken")


class Store:
    """The job store. Thread-safe; writes are durable when they return."""

    MAX_BATCH = 256

    def __init__(self, state_dir: Path, *, max_pending_per_tenant: int = 0,
                 dedupe_retention: float = DEDUPE_RETENTION) -> None:
        """Open (or create) the store in ``state_dir``; StoreError says why one cannot be opened.

        ``max_pending_per_tenant`` caps each tenant's PENDING jobs (0: no cap). A dedupe key
        matches a job that succeeded at most ``dedupe_retention`` seconds ago.
        """
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self.max_pending_per_tenant = max_pending_per_tenant
        self.dedupe_retention = dedupe_retention
        # The groups still open, by (tenant, name), as committed: the controller checks their budgets.
        self._groups: dict[tuple[str, str], Group] = {}
        self._record_path = state_dir / COMMIT_RECORD
        self._record_fd = -1
        self._local = threading.local()
        self._queue: queue.Queue[_Write | None] = queue.Queue()
        events_lock = threading.RLock()
        self._events = threading.Condition(events_lock)
        # A condition per tenant (on the same lock), so a commit wakes only the followers of the
        # tenants whose events it holds: one tenant's flood of events does not wake everyone.
        self._tenant_events: defaultdict[str, threading.Condition] = defaultdict(
            lambda: threading.Condition(events_lock))
        self._tenant_last: dict[str, int] = {}
        self._last_event = 0
        # The newest committed events, so follow streams read memory, not SQLite, on every wake.
        self._recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        # The same window by job, so a follower of one job reads its job's events without
        # passing over everyone else's (a thousand agents following their jobs during a flood).
        self._recent_by_job: defaultdict[str, deque[Event]] = defaultdict(deque)
        self._by_job_count = 0  # commits since the by-job window was last trimmed
        # Called with each commit's new events, on the writer thread (the API's asyncio
        # followers: gpuos/api/loop.py EventFeed).
        self._listeners: list[Callable[[builtins.list[Event]], None]] = []
        self._active: dict[str, Job] = {}
        self._placed: dict[str, Job] = {}  # the RUNNING and PAUSED subset of _active
        # PENDING jobs per tenant, as committed; and submits of the batch being written.
        self._pending: Counter[str] = Counter()
        self._batch_submits: Counter[str] = Counter()
        self._active_lock = threading.Lock()
        # Every unfinished job's record as it changed, numbered: the controller's model reads
        # only what changed since its last round, not all the unfinished jobs (changed_since).
        self._version = 0
        self._changes: deque[tuple[int, Job]] = deque(maxlen=CHANGE_LOG)
        self._closed = False
        self._recorded = (0, 0)
        self._lock_fd = -1
        try:
            conn = self._open()
        except BaseException:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise
        try:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ('PENDING','RUNNING','PAUSED') ORDER BY seq"
            ).fetchall()
            for row in rows:
                job = _row_to_job(row)
                self._active[job.id] = job
                if job.state.active:
                    self._placed[job.id] = job
                if job.state == JobState.PENDING:
                    self._pending[job.spec.tenant] += 1
            for row in conn.execute(f"SELECT {_GROUP_COLUMNS} FROM groups WHERE ended_reason = ''"):
                group = _row_to_group(row)
                self._groups[(group.tenant, group.name)] = group
        finally:
            conn.close()
        self._writer_conn: sqlite3.Connection | None = None
        self._writer = threading.Thread(target=self._write_loop, name="gpuos-store-writer", daemon=True)
        self._writer.start()

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Check the store's files and contents; a connection to it, or StoreError saying what is wrong."""
        try:
            private_dir(self.state_dir)
            existed = self.path.exists()
            self._check_files(existed)
            self._lock_fd = self._take_lock()
            os.close(open_private(self.path))
        except OSError as exc:
            raise StoreError(self.path, _os_problem(exc)) from None
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(self.path, self._problem(exc)) from None
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                raise StoreError(self.path, f"failed its integrity check: {problems[0]}{more}")
            conn.executescript(SCHEMA)
            self._migrate(conn)
            self._last_event, self._next_seq = self._sequences(conn)
            if existed:
                self._check_record()
            # A write at open: a store that cannot be written refuses to start rather than
            # starting and failing every submit.
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (repr(time.time()),))
            for suffix in ("-wal", "-shm"):
                sidecar = self.path.with_name(self.path.name + suffix)
                if sidecar.exists() and stat.S_IMODE(sidecar.stat().st_mode) & 0o077:
                    os.chmod(sidecar, 0o600)  # left looser by an older gpuosd
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(self.path, self._problem(exc)) from None
        except (OSError, StoreError) as exc:
            conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(self.path, _os_problem(exc)) from None
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Add the columns a store made by an older gpuosd lacks (see _ADDED_COLUMNS)."""
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for name, definition in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
        conn.executescript(_ADDED_INDEXES)

    def _check_files(self, existed: bool) -> None:
        if existed and not self.path.is_file():
            raise StoreError(self.path, "is not a regular file")
        if os.statvfs(self.state_dir).f_flag & os.ST_RDONLY:
            raise StoreError(self.path, f"is on a read-only file system ({self.state_dir} cannot be written)")
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise StoreError(self.path, f"its directory {self.state_dir} is not writable by uid {os.getuid()}")
        if existed and not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreError(self.path, f"is read-only for uid {os.getuid()} (mode "
                                        f"{stat.S_IMODE(self.path.stat().st_mode):04o})")

    @staticmethod
    def _sequences(conn: sqlite3.Connection) -> tuple[int, int]:
        """(last event seq, next job seq) as committed; both survive the purge of every row."""
        events = conn.execute(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), "
            "COALESCE((SELECT MAX(seq) FROM events), 0))"
        ).fetchone()[0]
        row = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        stored = int(row[0]) if row is not None and str(row[0]).isdigit() else 1
        highest = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0]
        return events, max(stored, highest + 1)

    def _check_record(self) -> None:
        """Refuse a store that holds fewer commits than were acknowledged (a cut or damaged WAL)."""
        try:
            data = json.loads(self._record_path.read_text())
            jobs, events = int(data["jobs"]), int(data["events"])
        except FileNotFoundError:
            return  # a store from before the record existed
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Written without an fsync, so a power loss may leave it empty: nothing to compare.
            log.warning("ignoring %s, which cannot be read (%s)", self._record_path, exc)
            return
        have_jobs, have_events = self._next_seq - 1, self._last_event
        if have_jobs < jobs or have_events < events:
            what = (f"is missing the last {jobs - have_jobs} of {jobs} committed jobs" if have_jobs < jobs
                    else f"is missing the last {events - have_events} of {events} committed events")
            raise StoreError(self.path, f"{what}; its write-ahead log ({self.path.name}-wal) was cut or damaged. "
                                        f"Restore the state dir from a backup, or delete {self._record_path} to "
                                        "start with what is left")
        self._recorded = (jobs, events)

    def _record_commit(self) -> None:
        """Note the last committed sequence numbers in the commit record (after the commit is durable).

        One pwrite of a fixed-width record into a file kept open: this runs after every batch, and
        a create-write-rename per batch cost more than the rest of a submit's bookkeeping.
        """
        now = (self._next_seq - 1, self._last_event)
        if now == self._recorded:
            return
        record = json.dumps({"jobs": now[0], "events": now[1]}).encode().ljust(RECORD_WIDTH) + b"\n"
        try:
            if self._record_fd < 0:
                self._record_fd = os.open(self._record_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                os.ftruncate(self._record_fd, len(record))
            os.pwrite(self._record_fd, record, 0)
        except OSError as exc:
            # Behind is safe (the check at open only looks for a store behind the record).
            log.debug("could not update %s: %s", self._record_path, exc)
            return
        self._recorded = now

    def _problem(self, exc: sqlite3.Error) -> str:
        """What a SQLite error at open says about the store, for a person."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        text = str(exc)
        if "not a database" in text:
            return f"is not a SQLite database ({text})"
        if "malformed" in text or code == 11:  # SQLITE_CORRUPT
            return f"is damaged ({text}); restore it from a backup"
        if code == _SQLITE_READONLY or "readonly" in text:
            return f"is read-only ({text})"
        if code == _SQLITE_FULL:
            return f"state dir full: {_free_bytes(self.state_dir)} bytes free ({self.state_dir})"
        if code == 14:  # SQLITE_CANTOPEN
            return f"cannot be opened ({text})"
        return text

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the writer acknowledges, so an acknowledged submit
        # survives power loss too, not only a daemon crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=10)
        if self._record_fd >= 0:
            os.close(self._record_fd)
        os.close(self._lock_fd)  # releases the lock: another gpuosd may open the store now

    def _take_lock(self) -> int:
        """Hold ``gpuosd.lock`` for as long as this store is open: one gpuosd per state dir.

        Two daemons on one state dir would each run the other's jobs again and clear each other's
        private directory; the lock dies with the process, so a killed daemon never blocks a restart.
        """
        path = self.state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(self.state_dir, f"is in use by another gpuosd (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    # -- the writer ----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._write_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - the writer outlives any one batch
                log.exception("the store's writer failed a batch")
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(exc)
        if self._writer_conn is not None:
            self._writer_conn.close()

    def _write_batch(self, batch: builtins.list[_Write]) -> None:
        """Write ``batch`` in one transaction and answer its callers; a failed commit fails them all."""
        if self._writer_conn is None:
            try:
                self._writer_conn = self._connect()
            except sqlite3.Error as exc:
                failure = self._write_error(exc)
                for write in batch:
                    write.future.set_exception(failure)
                return
        conn = self._writer_conn
        next_seq = self._next_seq
        self._batch_submits.clear()
        results: list[tuple[_Write, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                # A savepoint per write: one write's error rolls back only that write.
                conn.execute("SAVEPOINT w")
                try:
                    value = write.fn(conn)
                except BaseException as caught:  # noqa: BLE001 - handed to the waiting caller
                    if isinstance(caught, sqlite3.OperationalError) or not conn.in_transaction:
                        raise  # the disk, not this write: the whole transaction is suspect
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    results.append((write, None, caught))
                else:
                    conn.execute("RELEASE w")
                    results.append((write, value, None))
            if self._next_seq != next_seq:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (str(self._next_seq),))
            new_events = [_row_to_event(r) for r in conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (self._last_event,))]
            last = new_events[-1].seq if new_events else self._last_event
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._abandon(conn)
            self._next_seq = next_seq
            failure = self._write_error(exc)
            for write in batch:
                write.future.set_exception(failure)
            return
        except BaseException as exc:  # noqa: BLE001 - e.g. a write that ended the transaction itself
            self._abandon(conn)
            self._next_seq = next_seq
            for write in batch:
                write.future.set_exception(exc)
            return
        # The events first, then the unfinished jobs in memory: a reader that finds a job ended
        # in memory (active_job) then finds the event that ended it in the window of recent
        # events too (a follower of the job must not stop before it has sent that event).
        with self._events:
            if new_events and (not self._recent or self._recent[-1].seq == new_events[0].seq - 1):
                self._recent.extend(new_events)
            elif new_events:
                # A gap (events written before this store opened): start the window afresh.
                self._recent.clear()
                self._recent_by_job.clear()
                self._recent.extend(new_events)
            for event in new_events:
                self._recent_by_job[event.job_id].append(event)
            self._trim_by_job()
            self._last_event = max(self._last_event, last)
            for event in new_events:
                self._tenant_last[event.tenant] = event.seq
            tenants = {e.tenant for e in new_events}
            for tenant in tenants:
                if tenant in self._tenant_events:
                    self._tenant_events[tenant].notify_all()
            self._events.notify_all()
        for _write, value, error in results:
            if error is None:
                self._remember(value)
        if new_events:
            for listener in self._listeners:
                listener(new_events)
        self._record_commit()
        for write, value, error in results:
            if error is None:
                write.future.set_result(value)
            else:
                write.future.set_exception(error)

    def _abandon(self, conn: sqlite3.Connection) -> None:
        """Roll back a failed transaction; a connection that cannot even do that is replaced."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return
        except sqlite3.Error as exc:
            log.warning("rolling back a failed write failed too (%s); reconnecting to the store", exc)
        try:
            conn.close()
        except sqlite3.Error:
            pass
        self._writer_conn = None  # the next batch connects afresh

    def _write_error(self, exc: sqlite3.Error) -> Exception:
        """The error the callers of a failed batch get: a full disk is RESOURCE_EXHAUSTED."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_FULL, _SQLITE_IOERR):
            free = _free_bytes(self.state_dir)
            if code == _SQLITE_FULL or free < MIN_FREE_BYTES:
                log.warning("a write to the store failed: %s (%d bytes free in %s)", exc, free, self.state_dir)
                return ResourceExhausted(f"state dir full: {free} bytes free ({self.state_dir})")
        log.error("a write to the store failed: %s", exc)
        if code == _SQLITE_READONLY:
            return StoreError(self.path, f"cannot be written ({exc})")
        return StoreError(self.path, f"a write failed ({exc})")

    def _remember(self, value: Any) -> None:
        """Keep the in-memory set of unfinished jobs in step with what was just committed."""
        jobs = value if isinstance(value, list) else [value]
        with self._active_lock:
            for job in jobs:
                if isinstance(job, Group):
                    if job.open:
                        self._groups[(job.tenant, job.name)] = job
                    else:
                        self._groups.pop((job.tenant, job.name), None)
                    continue
                if not isinstance(job, Job):
                    continue
                self._version += 1
                self._changes.append((self._version, job))
                old = self._active.get(job.id)
                if old is not None and old.state == JobState.PENDING:
                    self._pending[old.spec.tenant] -= 1
                if job.state == JobState.PENDING:
                    self._pending[job.spec.tenant] += 1
                if job.state.terminal:
                    self._active.pop(job.id, None)
                else:
                    self._active[job.id] = job
                if job.state.active:
                    self._placed[job.id] = job
                else:
                    self._placed.pop(job.id, None)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._queue_write(fn).result()

    def _queue_write(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        if self._closed:
            raise FailedPrecondition("the store is closed (gpuosd is shutting down)")
        write = _Write(fn)
        self._queue.put(write)
        return write.future

    # -- writes --------------------------------------------------------------------------------

    @staticmethod
    def _event(conn: sqlite3.Connection, job: Job, kind: str, message: str = "") -> None:
        conn.execute(
            "INSERT INTO events (time, job_id, kind, state, reason, message, tenant, grp) VALUES (?,?,?,?,?,?,?,?)",
            (time.time(), job.id, kind, job.state.value, job.reason, message or job.message, job.spec.tenant,
             job.spec.group),
        )

    def submit(self, spec: JobSpec, owner_uid: int, idempotency_key: str = "",
               group: GroupSpec | None = None) -> tuple[Job, bool]:
        """Persist a new PENDING job. Returns (job, created); a repeated idempotency key, or a
        dedupe key that matches (see :meth:`_insert`), returns the existing job with False.

        ``group`` is the mode and budget the job's group (``spec.group``) gets if this submit
        creates it; None for the defaults (and no check against an existing group's).
        Raises ResourceExhausted when the state dir is (nearly) full, or when the tenant already
        has ``max_pending_per_tenant`` jobs waiting.
        """
        job, outcome = self.submit_one(spec, owner_uid, idempotency_key, group)
        return job, outcome is Submitted.NEW

    def submit_one(self, spec: JobSpec, owner_uid: int, idempotency_key: str = "",
                   group: GroupSpec | None = None) -> tuple[Job, Submitted]:
        """:meth:`submit`, saying whether the job is new, a retry's or a duplicate's."""
        return self.submit_later(spec, owner_uid, idempotency_key, group).result()

    def submit_later(self, spec: JobSpec, owner_uid: int, idempotency_key: str = "",
                     group: GroupSpec | None = None) -> Future[tuple[Job, Submitted]]:
        """:meth:`submit_one` as a future, done once the submit is durable (an asyncio handler
        awaits it instead of holding a thread)."""
        self._check_space()
        outcome: list[Submitted] = []

        def fn(conn: sqlite3.Connection) -> builtins.list[Job | Group]:
            # The writer keeps its in-memory view from what a write returns: the job, and the
            # group when this submit made it.
            made: builtins.list[Job | Group] = []
            job, did = self._insert(conn, spec, owner_uid, idempotency_key, group, made)
            outcome[:] = [did]
            return [job, *made]

        written = self._queue_write(fn)
        done: Future[tuple[Job, Submitted]] = Future()

        def settle(f: Future[builtins.list[Job | Group]]) -> None:
            error = f.exception()
            if error is not None:
                done.set_exception(error)
            else:
                job = f.result()[0]
                assert isinstance(job, Job)
                done.set_result((job, outcome[0]))

        written.add_done_callback(settle)
        return done

    def submit_batch(
        self, items: builtins.list[tuple[JobSpec, str, GroupSpec | None]], owner_uid: int,
    ) -> builtins.list[tuple[Job, Submitted]]:
        """Persist many submits (spec, idempotency key, group spec) in one commit, all or none:
        the first one refused refuses the batch, its error naming the index as ``jobs[i]``."""
        if len(items) > MAX_BATCH_JOBS:
            raise InvalidArgument("jobs", f"{len(items)} jobs in one batch; at most {MAX_BATCH_JOBS}")
        self._check_space()

        created: list[Submitted] = []

        def fn(conn: sqlite3.Connection) -> builtins.list[Job | Group]:
            created.clear()  # a batch the writer retries starts afresh
            jobs: builtins.list[Job | Group] = []
            made: builtins.list[Job | Group] = []
            # The common case, a new job with no group and no dedupe key, is written with one
            # statement for all of them (written before any submit that looks the store up).
            known = self._by_idempotency_keys(conn, [key for _, key, _ in items if key])
            rows = _NewRows()
            now = time.time()
            for i, (spec, key, group) in enumerate(items):
                try:
                    if key in known:
                        job, new = known[key], Submitted.RETRIED
                        if job.owner_uid != owner_uid:
                            raise InvalidArgument("idempotency_key", "already used by another user")
                    elif spec.group or spec.dedupe_key:
                        rows.write(conn)
                        job, new = self._insert(conn, spec, owner_uid, key, group, made)
                    else:
                        self._check_cap(spec.tenant)
                        job, new = rows.add(self, spec, owner_uid, key, now), Submitted.NEW
                    if key:
                        known[key] = job
                except InvalidArgument as exc:
                    raise InvalidArgument(f"jobs[{i}].{exc.field}", exc.problem) from None
                except (ResourceExhausted, FailedPrecondition) as exc:
                    raise type(exc)(f"jobs[{i}]: {exc}") from None
                jobs.append(job)
                created.append(new)
            rows.write(conn)
            return [*jobs, *made]

        jobs = [j for j in self._write(fn)[:len(items)] if isinstance(j, Job)]
        return builtins.list(zip(jobs, created, strict=True))

    def _check_space(self) -> None:
        free = _free_bytes(self.state_dir)
        if free < MIN_FREE_BYTES:
            raise ResourceExhausted(f"state dir full: {free} bytes free ({self.state_dir}); gpuosd takes new jobs "
                                    f"again once {MIN_FREE_BYTES} bytes are free")

    def _insert(self, conn: sqlite3.Connection, spec: JobSpec, owner_uid: int, idempotency_key: str,
                group: GroupSpec | None, made: builtins.list[Job | Group]) -> tuple[Job, Submitted]:
        """One submit on the writer's connection: the job and what the submit did (a group it
        creates is appended to ``made``).

        A dedupe key returns the tenant's newest job with that key that is pending, running or
        succeeded within ``dedupe_retention`` (failed and cancelled ones are worth running again);
        the tenant only, so keys never reveal or share another tenant's work.
        """
        if idempotency_key:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            if row is not None:
                existing = _row_to_job(row)
                if existing.owner_uid != owner_uid:
                    raise InvalidArgument("idempotency_key", "already used by another user")
                return existing, Submitted.RETRIED
        now = time.time()
        if spec.dedupe_key:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND dedupe_key = ? AND dedupe_key != '' AND "
                f"(state IN ({','.join('?' * len(_UNFINISHED))}) OR (state = 'SUCCEEDED' AND finished_at >= ?)) "
                "ORDER BY seq DESC LIMIT 1",
                (spec.tenant, spec.dedupe_key, *_UNFINISHED, now - self.dedupe_retention),
            ).fetchone()
            if row is not None:
                existing = _row_to_job(row)
                self._event(conn, existing, "deduplicated", "a submit with the same dedupe key got this job")
                if spec.group and (existing.spec.group, existing.spec.tenant) != (spec.group, spec.tenant):
                    made.extend(self._link_duplicate(conn, spec, group, existing, now))
                return existing, Submitted.DUPLICATE
        self._check_cap(spec.tenant)
        if spec.group:
            new_group = self._join_group(conn, spec, group, now)
            if new_group is not None:
                made.append(new_group)
        rows = _NewRows()
        job = rows.add(self, spec, owner_uid, idempotency_key, now)
        rows.write(conn)
        return job, Submitted.NEW

    def _check_cap(self, tenant: str) -> None:
        """Refuse a submit beyond the tenant's cap of pending jobs.

        Counted on the writer thread, from the committed count plus this batch's submits:
        concurrent submits cannot slip past the cap together.
        """
        cap = self.max_pending_per_tenant
        waiting = self._pending[tenant] + self._batch_submits[tenant]
        if cap and waiting >= cap:
            raise ResourceExhausted(
                f"tenant {quote(tenant)} already has {waiting} jobs pending, the most allowed "
                f"(max_pending_per_tenant = {cap}); wait for some to start or cancel some"
            )

    @staticmethod
    def _by_idempotency_keys(conn: sqlite3.Connection, keys: builtins.list[str]) -> dict[str, Job]:
        """The jobs submitted with any of ``keys``, by key."""
        found: dict[str, Job] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for row in conn.execute(f"SELECT {_JOB_COLUMNS}, idempotency_key FROM jobs WHERE idempotency_key IN "
                                    f"({','.join('?' * len(chunk))})", chunk):
                found[row[-1]] = _row_to_job(row[:-1])
        return found

    def _join_group(self, conn: sqlite3.Connection, spec: JobSpec, given: GroupSpec | None,
                    now: float) -> Group | None:
        """Make ``spec.group`` exist for the tenant (as ``given`` says, when new) and take a
        member; the group when this made it."""
        row = conn.execute(f"SELECT {_GROUP_COLUMNS} FROM groups WHERE tenant = ? AND name = ?",
                           (spec.tenant, spec.group)).fetchone()
        if row is None:
            wanted = given if given is not None else GroupSpec(spec.group)
            conn.execute(
                "INSERT INTO groups (tenant, name, mode, best_of, budget, created_at) VALUES (?,?,?,?,?,?)",
                (spec.tenant, spec.group, wanted.mode.value, wanted.best_of, wanted.budget, now),
            )
            return Group(tenant=spec.tenant, spec=wanted, created_at=now)
        existing = _row_to_group(row)
        if not existing.open:
            raise FailedPrecondition(f"group {quote(spec.group)} has ended ({existing.ended_reason}); it takes no new "
                                     "members: name a new group")
        if given is not None and (given.mode, given.best_of, given.budget) != (
                existing.spec.mode, existing.spec.best_of, existing.spec.budget):
            raise InvalidArgument("group_options", f"group {quote(spec.group)} exists as {existing.spec.mode_text} "
                                                   f"with a budget of {existing.spec.budget:g} GPU-seconds; "
                                                   "a new member may not change them")
        return None

    def update(
        self,
        job_id: str,
        *,
        expect: Iterable[JobState] | None = None,
        event: str = "",
        event_message: str = "",
        **changes: Any,
    ) -> Job:
        """Change fields of a job atomically; with ``expect``, only if it is in one of those states.

        A state change always records an event (``event`` names its kind, default the new state).
        A group member's end is applied to its group in the same transaction (see _member_ended).
        """
        allowed = set(expect) if expect is not None else None

        def fn(conn: sqlite3.Connection) -> builtins.list[Job | Group]:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            job = _row_to_job(row)
            if allowed is not None and job.state not in allowed:
                raise FailedPrecondition(f"job {job_id} is {job.state.value}")
            new = replace(job, **changes)
            conn.execute(
                "UPDATE jobs SET state=?, reason=?, message=?, exit_code=?, placement=?, started_at=?, "
                "finished_at=?, attained_service=?, shim_pid=?, shim_started=?, child_pid=?, "
                "cancel_requested=?, preemptions=?, run_since=?, cancel_reason=?, stop_requested=?, "
                "suspended_bytes=?, suspended_from=? WHERE id=?",
                (new.state.value, new.reason, new.message, new.exit_code, placement_to_json(new.placement),
                 new.started_at, new.finished_at, new.attained_service, new.shim_pid, new.shim_started,
                 new.child_pid, int(new.cancel_requested), new.preemptions, new.run_since, new.cancel_reason,
                 int(new.stop_requested), new.suspended_bytes, new.suspended_from, job_id),
            )
            if new.state != job.state or event:
                self._event(conn, new, event or new.state.value.lower(), event_message)
            if new.state.terminal and not job.state.terminal:
                return [new, *self._ended_in_groups(conn, new)]
            return [new]

        first = self._write(fn)[0]
        assert isinstance(first, Job)
        return first

    # -- groups ---------------------------------------------------------------------------------

    def _group_row(self, conn: sqlite3.Connection, tenant: str, name: str) -> Group | None:
        row = conn.execute(f"SELECT {_GROUP_COLUMNS} FROM groups WHERE tenant = ? AND name = ?",
                           (tenant, name)).fetchone()
        return None if row is None else _row_to_group(row)

    def _link_duplicate(self, conn: sqlite3.Connection, spec: JobSpec, given: GroupSpec | None, existing: Job,
                        now: float) -> builtins.list[Job | Group]:
        """A duplicate submitted into group ``spec.group``: the group counts ``existing`` as a
        member that spends nothing (its success, now or when it comes, counts for the group),
        as the simulator does. An ended group refuses it like any new member."""
        made: builtins.list[Job | Group] = []
        new_group = self._join_group(conn, spec, given, now)
        if new_group is not None:
            made.append(new_group)
        linked = conn.execute("INSERT OR IGNORE INTO group_links (tenant, grp, job_id) VALUES (?,?,?)",
                              (spec.tenant, spec.group, existing.id)).rowcount
        if linked and existing.state.terminal:  # it succeeded (only then is an ended job a duplicate's)
            made += self._member_ended(conn, existing, spec.group, spent=0.0)
        return made

    def _ended_in_groups(self, conn: sqlite3.Connection, job: Job) -> builtins.list[Job | Group]:
        """Apply ``job``'s end to its own group and to the groups its duplicates linked it to."""
        out: builtins.list[Job | Group] = []
        if job.spec.group:
            out += self._member_ended(conn, job, job.spec.group, spent=job.attained_service)
        # A job ends once, so each link is applied once; links stay, so the group lists the job.
        for (name,) in conn.execute("SELECT grp FROM group_links WHERE job_id = ?", (job.id,)).fetchall():
            out += self._member_ended(conn, job, name, spent=0.0, linked=True)
        return out

    def _member_ended(self, conn: sqlite3.Connection, job: Job, name: str, spent: float,
                      linked: bool = False) -> builtins.list[Job | Group]:
        """Apply ``job``'s end to group ``name`` of its tenant: ``spent`` GPU-seconds, a success
        that reaches the goal, a budget spent. When the group ends, so do its other members, in
        this same transaction: a crash can never keep the success and lose the siblings'
        cancellation."""
        group = self._group_row(conn, job.spec.tenant, name)
        if group is None or (linked and not group.open):
            # A store edited by hand; or a duplicate's group that ended first, which its
            # original's end no longer concerns (the simulator stops such a copy then).
            return []
        won = job.state == JobState.SUCCEEDED
        reason = after_success(group) if won else ""
        group = replace(group, spent=group.spent + spent, succeeded=group.succeeded + int(won))
        if not reason and over_budget(group, 0.0):
            reason = GROUP_BUDGET
        if reason:
            group = replace(group, ended_reason=reason, ended_at=time.time())
        conn.execute("UPDATE groups SET spent = ?, succeeded = ?, ended_reason = ?, ended_at = ? "
                     "WHERE tenant = ? AND name = ?",
                     (group.spent, group.succeeded, group.ended_reason, group.ended_at, group.tenant, group.name))
        if not reason:
            return [group]
        return [group, *self._stop_members(conn, group, reason)]

    def _stop_members(self, conn: sqlite3.Connection, group: Group, reason: str) -> builtins.list[Job | Group]:
        """End ``group``'s unfinished members for ``reason``: pending ones now, running ones by a
        recorded cancel request (the controller stops their processes, after a restart too)."""
        rows = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND grp = ? AND grp != '' AND "
            f"state IN ({','.join('?' * len(_UNFINISHED))}) ORDER BY seq",
            (group.tenant, group.name, *_UNFINISHED),
        ).fetchall()
        now = time.time()
        out: builtins.list[Job | Group] = []
        for row in rows:
            member = _row_to_job(row)
            if member.state == JobState.PENDING:
                member = replace(member, state=JobState.CANCELLED, reason=reason, finished_at=now,
                                 message=f"group {group.name} ended before it started ({reason})")
                conn.execute("UPDATE jobs SET state = ?, reason = ?, message = ?, finished_at = ? WHERE id = ?",
                             (member.state.value, member.reason, member.message, now, member.id))
                self._event(conn, member, "cancelled")
            elif not member.cancel_requested:
                member = replace(member, cancel_requested=True, cancel_reason=reason)
                conn.execute("UPDATE jobs SET cancel_requested = 1, cancel_reason = ? WHERE id = ?",
                             (reason, member.id))
                self._event(conn, member, "cancel-requested", f"group {group.name} ended ({reason})")
            else:
                continue
            out.append(member)
        return out

    def end_group(self, tenant: str, name: str, reason: str) -> Group:
        """End an open group for ``reason`` (a user's cancel, its budget spent) and stop its
        unfinished members; an ended group is returned as it is. NotFound for no such group."""

        def fn(conn: sqlite3.Connection) -> builtins.list[Job | Group]:
            group = self._group_row(conn, tenant, name)
            if group is None:
                raise NotFound(f"tenant {quote(tenant)} has no group {quote(name)}")
            if not group.open:
                return [group]
            group = replace(group, ended_reason=reason, ended_at=time.time())
            conn.execute("UPDATE groups SET ended_reason = ?, ended_at = ? WHERE tenant = ? AND name = ?",
                         (reason, group.ended_at, tenant, name))
            return [group, *self._stop_members(conn, group, reason)]

        first = self._write(fn)[0]
        assert isinstance(first, Group)
        return first

    def group(self, tenant: str, name: str) -> Group:
        """Tenant ``tenant``'s group ``name``; NotFound when it has none of that name."""
        group = self._group_row(self._reader(), tenant, name)
        if group is None:
            raise NotFound(f"tenant {quote(tenant)} has no group {quote(name)}")
        return group

    def groups(self, tenant: str = "") -> builtins.list[Group]:
        """Groups, oldest first: ``tenant``'s, or everyone's."""
        sql = f"SELECT {_GROUP_COLUMNS} FROM groups"
        args: builtins.list[Any] = []
        if tenant:
            sql += " WHERE tenant = ?"
            args.append(tenant)
        return [_row_to_group(r) for r in self._reader().execute(sql + " ORDER BY created_at, name", args)]

    def members(self, tenant: str, name: str) -> builtins.list[Job]:
        """A group's members in submission order (with the jobs its duplicates are linked to)."""
        rows = self._reader().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE (tenant = ? AND grp = ? AND grp != '') OR id IN "
            "(SELECT job_id FROM group_links WHERE tenant = ? AND grp = ?) ORDER BY seq", (tenant, name, tenant, name),
        ).fetchall()
        return [_row_to_job(r) for r in rows]

    def open_groups(self) -> builtins.list[Group]:
        """The groups not yet ended (from memory: cheap; the controller checks budgets each round)."""
        with self._active_lock:
            return builtins.list(self._groups.values())

    # -- steering -------------------------------------------------------------------------------

    def set_priority(self, job_id: str, priority: Priority) -> Job:
        """Give an unfinished job a new priority (FailedPrecondition once it ended)."""

        def fn(conn: sqlite3.Connection) -> Job:
            row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            job = _row_to_job(row)
            if job.state.terminal:
                raise FailedPrecondition(f"job {job_id} already ended ({job.state.value})")
            if job.spec.priority == priority:
                return job
            old = job.spec.priority
            job = replace(job, spec=replace(job.spec, priority=priority))
            conn.execute("UPDATE jobs SET spec = ? WHERE id = ?", (spec_to_json(job.spec), job_id))
            self._event(conn, job, "priority-changed", f"{old.name.lower()} -> {priority.name.lower()}")
            return job

        return self._write(fn)

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda conn: conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value)))

    def record(self, kind: str, reason: str, message: str, meta: Mapping[str, str | None]) -> None:
        """Record a daemon-wide event (no job: a policy switch, a rollback) and, in the same
        transaction, set the ``meta`` keys (a None value deletes its key): what the event says
        happened and the state it left are durable together."""

        def fn(conn: sqlite3.Connection) -> None:
            for key, value in meta.items():
                if value is None:
                    conn.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            conn.execute("INSERT INTO events (time, job_id, kind, state, reason, message, tenant, grp) "
                         "VALUES (?,?,?,?,?,?,?,?)", (time.time(), "", kind, None, reason, message, "", ""))

        self._write(fn)

    # -- reads ---------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get(self, job_id: str, tenant: str = "") -> Job:
        """A job by id or by a unique prefix of its id; with ``tenant``, only among that tenant's jobs.

        Other tenants' jobs are then as good as absent: a prefix they share is no ambiguity.
        """
        if not job_id or not all(c in "0123456789abcdef" for c in job_id):
            raise InvalidArgument("id", f"{quote(job_id)} is not a job id (job ids are lower-case hex)")
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id >= ? AND id < ?"
        args: builtins.list[Any] = [job_id, job_id + "g"]
        if tenant:
            sql += " AND tenant = ?"
            args.append(tenant)
        rows = self._reader().execute(sql + " ORDER BY id LIMIT 2", args).fetchall()
        exact = [r for r in rows if r[0] == job_id]
        if exact:
            return _row_to_job(exact[0])
        if not rows:
            raise NotFound(f"no job with id {quote(job_id)}")
        if len(rows) > 1:
            raise InvalidArgument("id", f"{quote(job_id)} matches more than one job; give more of the id")
        return _row_to_job(rows[0])

    def list(
        self,
        states: Iterable[JobState] = (),
        tenant: str = "",
        owner_uid: int | None = None,
        limit: int = 0,
    ) -> builtins.list[Job]:
        where, args = _job_filters(states, tenant)
        if owner_uid is not None:
            where.append("owner_uid = ?")
            args.append(owner_uid)
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit:
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit)
            rows = list(reversed(self._reader().execute(sql, args).fetchall()))
        else:
            rows = self._reader().execute(sql + " ORDER BY seq", args).fetchall()
        return [_row_to_job(r) for r in rows]

    def page(
        self,
        states: Iterable[JobState] = (),
        tenant: str = "",
        *,
        after: int = 0,
        size: int = 500,
        newest: int = 0,
        floor: int = 0,
    ) -> JobPage:
        """Up to ``size`` jobs with a sequence number above ``after``, in submission order.

        ``newest`` limits the whole listing to the newest N jobs (its lowest sequence number is
        returned as ``floor``; pass it back with later pages so the listing does not shift).
        """
        filters, filter_args = _job_filters(states, tenant)
        where = ["seq > ?", *filters]
        args: builtins.list[Any] = [after, *filter_args]
        reader = self._reader()
        if newest and not floor:
            row = reader.execute(
                f"SELECT seq FROM jobs WHERE {' AND '.join(filters) or '1'} ORDER BY seq DESC LIMIT 1 OFFSET ?",
                [*filter_args, newest - 1],
            ).fetchone()
            floor = row[0] if row is not None else 1
        if floor:
            where.append("seq >= ?")
            args.append(floor)
        rows = reader.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?", [*args, size + 1]
        ).fetchall()
        jobs = [_row_to_job(r) for r in rows[:size]]
        return JobPage(jobs=jobs, next_after=jobs[-1].seq if len(rows) > size else 0, floor=floor)

    def finished_since(self, t: float, *, after: int = 0) -> builtins.list[Job]:
        """The jobs that ended (reached a terminal state) at or after ``t``, with a sequence
        number above ``after``, in submission order. One read, by the index on finished_at."""
        marks = ",".join("?" * len(_TERMINAL))
        # Named: left to itself, SQLite picks the index on state, which walks every ended job.
        rows = self._reader().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_finished WHERE finished_at >= ? AND state IN ({marks}) "
            "AND seq > ? ORDER BY seq", [t, *_TERMINAL, after],
        ).fetchall()
        return [_row_to_job(r) for r in rows]

    def purge_finished(self, now: float, max_age: float, max_count: int) -> builtins.list[str]:
        """Delete finished jobs (and their events) older than ``max_age`` seconds or beyond the
        newest ``max_count`` finished ones (0: no such bound). Returns the ids deleted.

        At most PURGE_BATCH jobs go per call, so a long backlog never holds up other writes;
        call again while it returns a full batch.
        """
        marks = ",".join("?" * len(_TERMINAL))

        def fn(conn: sqlite3.Connection) -> builtins.list[str]:
            ids: builtins.list[str] = []
            if max_count:
                finished = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", _TERMINAL).fetchone()[0]
                if finished > max_count:
                    ids += [r[0] for r in conn.execute(
                        f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY COALESCE(finished_at, created_at), "
                        "seq LIMIT ?", [*_TERMINAL, min(PURGE_BATCH, finished - max_count)],
                    )]
            if max_age and len(ids) < PURGE_BATCH:
                ids += [r[0] for r in conn.execute(
                    f"SELECT id FROM jobs WHERE state IN ({marks}) AND COALESCE(finished_at, created_at) < ? "
                    "ORDER BY COALESCE(finished_at, created_at) LIMIT ?", [*_TERMINAL, now - max_age, PURGE_BATCH],
                )]
            ids = builtins.list(dict.fromkeys(ids))[:PURGE_BATCH]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks_ids = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM events WHERE job_id IN ({marks_ids})", chunk)
                conn.execute(f"DELETE FROM group_links WHERE job_id IN ({marks_ids})", chunk)
                conn.execute(f"DELETE FROM jobs WHERE id IN ({marks_ids}) AND state IN ({marks})",
                             [*chunk, *_TERMINAL])
            return ids

        purged = self._write(fn)
        if purged:
            gone = set(purged)
            with self._events:
                # The window of recent events must not outlive the rows it mirrors.
                kept = [e for e in self._recent if e.job_id not in gone]
                if len(kept) != len(self._recent):
                    self._recent = deque(kept, maxlen=RECENT_EVENTS)
                for job_id in gone:
                    self._recent_by_job.pop(job_id, None)
        return purged

    def history(self, *, since: float | None = None, until: float | None = None, tenant: str = "",
                after: int = 0, size: int = 500) -> tuple[builtins.list[HistoryJob], int]:
        """Up to ``size`` finished jobs submitted in [``since``, ``until``) (None: unbounded) of
        ``tenant`` (empty: all), after sequence number ``after`` in submission order, each with
        its run time from its events (gpuos/history.py); and the sequence number to continue
        after (0: this was the last page). Two reads: the jobs, then all their events."""
        where = ["seq > ?", f"state IN ({','.join('?' * len(_TERMINAL))})"]
        args: builtins.list[Any] = [after, *_TERMINAL]
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("created_at < ?")
            args.append(until)
        if tenant:
            where.append("tenant = ?")
            args.append(tenant)
        reader = self._reader()
        rows = reader.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                              [*args, size + 1]).fetchall()
        jobs = [_row_to_job(r) for r in rows[:size]]
        by_job: dict[str, builtins.list[Event]] = defaultdict(builtins.list)
        if jobs:
            marks = ",".join("?" * len(jobs))
            for r in reader.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE job_id IN ({marks}) ORDER BY seq",
                                    [j.id for j in jobs]):
                event = _row_to_event(r)
                by_job[event.job_id].append(event)
        out = [HistoryJob(j, run_time(by_job.get(j.id, ()), end=j.finished_at)) for j in jobs]
        return out, jobs[-1].seq if len(rows) > size else 0

    def known_ids(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` that are jobs in the store."""
        wanted = builtins.list(ids)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            found.update(r[0] for r in self._reader().execute(
                f"SELECT id FROM jobs WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return found

    def active(self) -> builtins.list[Job]:
        """Every job not yet finished, in submission order (from memory: cheap)."""
        with self._active_lock:
            jobs = list(self._active.values())
        jobs.sort(key=lambda j: j.seq)
        return jobs

    def changed_since(self, version: int) -> tuple[int, builtins.list[Job] | None]:
        """(the current version, the job records committed after ``version`` in commit order),
        or None for the records when the log no longer reaches back that far (read active())."""
        with self._active_lock:
            now = self._version
            if version == now:
                return now, []
            log = self._changes
            if not log or log[0][0] > version + 1:
                return now, None
            out: builtins.list[Job] = []
            for seen, job in reversed(log):  # from the newest end: O(changes), not O(log)
                if seen <= version:
                    break
                out.append(job)
            out.reverse()
            return now, out

    def placed(self) -> builtins.list[Job]:
        """The RUNNING and PAUSED jobs, in submission order (from memory: cheap)."""
        with self._active_lock:
            jobs = list(self._placed.values())
        jobs.sort(key=lambda j: j.seq)
        return jobs

    def has_pending(self) -> bool:
        with self._active_lock:
            return len(self._active) > len(self._placed)

    def active_job(self, job_id: str) -> Job | None:
        """An unfinished job by exact id, from memory; None when finished or unknown."""
        with self._active_lock:
            return self._active.get(job_id)

    def events(self, after_seq: int = 0, job_id: str = "", limit: int = 1000, tenant: str = "",
               group: str = "") -> builtins.list[Event]:
        """Up to ``limit`` events after ``after_seq`` in order, of one job, one tenant and/or one
        of its groups when given."""
        with self._events:
            recent = self._recent
            if job_id and recent and recent[0].seq <= after_seq + 1:
                # The job's own events in the window (older ones than the window's first, left
                # from before a trim, are below after_seq + 1 and so not read).
                mine = self._recent_by_job.get(job_id, ())
                out_job: builtins.list[Event] = []
                for event in reversed(mine):
                    if event.seq <= after_seq:
                        break
                    if (not tenant or event.tenant == tenant) and (not group or event.group == group):
                        out_job.append(event)
                out_job.reverse()
                return out_job[:limit]
            if recent and recent[0].seq <= after_seq + 1:
                # Followers are nearly always here: only the newest events, and no SQLite at all.
                start = bisect.bisect_right(recent, after_seq, key=lambda e: e.seq)
                out: builtins.list[Event] = []
                for i in range(start, len(recent)):
                    event = recent[i]
                    if (not job_id or event.job_id == job_id) and (not tenant or event.tenant == tenant) \
                            and (not group or event.group == group):
                        out.append(event)
                        if len(out) == limit:
                            break
                return out
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ?"
        args: builtins.list[Any] = [after_seq]
        if job_id:
            sql += " AND job_id = ?"
            args.append(job_id)
        if tenant:
            sql += " AND tenant = ?"
            args.append(tenant)
        if group:
            sql += " AND grp = ?"
            args.append(group)
        rows = self._reader().execute(sql + " ORDER BY seq LIMIT ?", [*args, limit]).fetchall()
        return [_row_to_event(r) for r in rows]

    def _trim_by_job(self) -> None:
        """Keep the by-job window within the window of recent events (lock held): every 256
        commits, each job's events older than the window's first go, so a commit costs O(its
        events) and the index holds at most the window plus 256 commits' worth."""
        if not self._recent:
            return
        self._by_job_count += 1
        if self._by_job_count < 256:
            return
        self._by_job_count = 0
        first = self._recent[0].seq
        for job_id in builtins.list(self._recent_by_job):
            events = self._recent_by_job[job_id]
            while events and events[0].seq < first:
                events.popleft()
            if not events:
                del self._recent_by_job[job_id]

    def listen(self, listener: Callable[[builtins.list[Event]], None]) -> None:
        """Call ``listener`` with every commit's new events, once committed (on the writer
        thread: it must only hand the news on)."""
        self._listeners.append(listener)

    @property
    def last_event_seq(self) -> int:
        return self._last_event

    def wait_for_events(self, after_seq: int, timeout: float, tenant: str = "") -> bool:
        """Block until an event newer than ``after_seq`` (of ``tenant``, when given) is committed,
        or ``timeout`` passes."""
        with self._events:
            if not tenant:
                return self._events.wait_for(lambda: self._last_event > after_seq or self._closed, timeout)
            return self._tenant_events[tenant].wait_for(
                lambda: self._tenant_last.get(tenant, 0) > after_seq or self._closed, timeout)
