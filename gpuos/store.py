"""Durable state: jobs, their transitions and events, in SQLite (WAL).

Every write goes through one writer thread that commits batches of writes in one transaction
(group commit), so a write returns only once it is on disk and many concurrent submits share
one fsync. Jobs that are not finished are also kept in memory for the scheduler's snapshots;
SQLite stays the source of truth and the cache is rebuilt from it on start.
"""

from __future__ import annotations

import builtins
import json
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from gpuos.errors import FailedPrecondition, InvalidArgument, NotFound
from gpuos.jobs import Event, Job, JobKind, JobSpec, JobState, Placement, Priority, Resources

T = TypeVar("T")

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
    idempotency_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT,
    reason TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_JOB_COLUMNS = (
    "id, seq, spec, owner_uid, tenant, state, reason, message, exit_code, placement, created_at, "
    "started_at, finished_at, attained_service, shim_pid, shim_started, child_pid, cancel_requested, preemptions, "
    "run_since"
)


def spec_to_json(spec: JobSpec) -> str:
    data = asdict(spec)
    data["kind"] = spec.kind.value
    data["priority"] = spec.priority.name
    return json.dumps(data, separators=(",", ":"))


def spec_from_json(text: str) -> JobSpec:
    data = json.loads(text)
    res = data.pop("resources")
    return JobSpec(
        name=data["name"],
        kind=JobKind(data["kind"]),
        resources=Resources(**{**res, "gpu_types": tuple(res.get("gpu_types", ()))}),
        command=tuple(data["command"]),
        kernel=data["kernel"],
        params=tuple(tuple(p) for p in data["params"]),  # type: ignore[misc]
        priority=Priority[data["priority"]],
        tenant=data["tenant"],
        qos=data["qos"],
        env=tuple(tuple(e) for e in data["env"]),  # type: ignore[misc]
        cwd=data["cwd"],
        estimated_seconds=data["estimated_seconds"],
    )


def placement_to_json(p: Placement | None) -> str | None:
    return None if p is None else json.dumps(asdict(p), separators=(",", ":"))


def placement_from_json(text: str | None) -> Placement | None:
    if not text:
        return None
    data = json.loads(text)
    granted = data["granted"]
    return Placement(
        devices=tuple(data["devices"]),
        device_uuids=tuple(data["device_uuids"]),
        partition=data["partition"],
        granted=Resources(**{**granted, "gpu_types": tuple(granted.get("gpu_types", ()))}),
        mig_slot=data.get("mig_slot", -1),
        mig_uuid=data.get("mig_uuid", ""),
    )


def _row_to_job(row: tuple[Any, ...]) -> Job:
    (id_, seq, spec, uid, _tenant, state, reason, message, exit_code, placement, created, started, finished,
     attained, shim_pid, shim_started, child_pid, cancel_requested, preemptions, run_since) = row
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
    )


class _Write:
    """One write waiting for the writer thread: a function of the connection, and who waits for it."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


class Store:
    """The job store. Thread-safe; writes are durable when they return."""

    MAX_BATCH = 256

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "gpuos.db"
        self._local = threading.local()
        self._queue: queue.Queue[_Write | None] = queue.Queue()
        self._events = threading.Condition()
        self._last_event = 0
        self._active: dict[str, Job] = {}
        self._placed: dict[str, Job] = {}  # the RUNNING and PAUSED subset of _active
        self._active_lock = threading.Lock()
        self._closed = False
        conn = self._connect()
        conn.executescript(SCHEMA)
        conn.commit()
        rows = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ('PENDING','RUNNING','PAUSED') ORDER BY seq"
        ).fetchall()
        for row in rows:
            job = _row_to_job(row)
            self._active[job.id] = job
            if job.state.active:
                self._placed[job.id] = job
        self._last_event = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        self._next_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0] + 1
        self._writer = threading.Thread(target=self._write_loop, name="gpuos-store-writer", daemon=True)
        self._writer.start()

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

    # -- the writer ----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        conn = self._connect()
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            stop = False
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            results: list[tuple[_Write, Any, BaseException | None]] = []
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                # A savepoint per write: one write's error rolls back only that write.
                conn.execute("SAVEPOINT w")
                try:
                    value = write.fn(conn)
                    conn.execute("RELEASE w")
                    results.append((write, value, None))
                except BaseException as caught:  # noqa: BLE001 - handed to the waiting caller
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    results.append((write, None, caught))
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as commit_error:
                conn.execute("ROLLBACK")
                for write, _, _ in results:
                    write.future.set_exception(commit_error)
                continue
            last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            for _write, value, error in results:
                if error is None:
                    self._remember(value)
            with self._events:
                self._last_event = last
                self._events.notify_all()
            for write, value, error in results:
                if error is None:
                    write.future.set_result(value)
                else:
                    write.future.set_exception(error)
            if stop:
                break
        conn.close()

    def _remember(self, value: Any) -> None:
        """Keep the in-memory set of unfinished jobs in step with what was just committed."""
        jobs = value if isinstance(value, list) else [value]
        with self._active_lock:
            for job in jobs:
                if not isinstance(job, Job):
                    continue
                if job.state.terminal:
                    self._active.pop(job.id, None)
                else:
                    self._active[job.id] = job
                if job.state.active:
                    self._placed[job.id] = job
                else:
                    self._placed.pop(job.id, None)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise FailedPrecondition("the store is closed (gpuosd is shutting down)")
        write = _Write(fn)
        self._queue.put(write)
        return write.future.result()

    # -- writes --------------------------------------------------------------------------------

    @staticmethod
    def _event(conn: sqlite3.Connection, job: Job, kind: str, message: str = "") -> None:
        conn.execute(
            "INSERT INTO events (time, job_id, kind, state, reason, message, tenant) VALUES (?,?,?,?,?,?,?)",
            (time.time(), job.id, kind, job.state.value, job.reason, message or job.message, job.spec.tenant),
        )

    def submit(self, spec: JobSpec, owner_uid: int, idempotency_key: str = "") -> tuple[Job, bool]:
        """Persist a new PENDING job. Returns (job, created); a repeated key returns the first job."""

        created: list[bool] = []

        def fn(conn: sqlite3.Connection) -> Job:
            if idempotency_key:
                row = conn.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    existing = _row_to_job(row)
                    if existing.owner_uid != owner_uid:
                        raise InvalidArgument("idempotency_key", "already used by another user")
                    return existing
            job = Job(id=secrets.token_hex(5), spec=spec, owner_uid=owner_uid, created_at=time.time())
            job.seq = self._next_seq
            conn.execute(
                "INSERT INTO jobs (id, seq, spec, owner_uid, tenant, state, created_at, idempotency_key) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (job.id, job.seq, spec_to_json(spec), owner_uid, spec.tenant, job.state.value, job.created_at,
                 idempotency_key or None),
            )
            self._next_seq += 1
            self._event(conn, job, "submitted")
            created.append(True)
            return job

        job = self._write(fn)
        return job, bool(created)

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
        """
        allowed = set(expect) if expect is not None else None

        def fn(conn: sqlite3.Connection) -> Job:
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
                "cancel_requested=?, preemptions=?, run_since=? WHERE id=?",
                (new.state.value, new.reason, new.message, new.exit_code, placement_to_json(new.placement),
                 new.started_at, new.finished_at, new.attained_service, new.shim_pid, new.shim_started,
                 new.child_pid, int(new.cancel_requested), new.preemptions, new.run_since, job_id),
            )
            if new.state != job.state or event:
                self._event(conn, new, event or new.state.value.lower(), event_message)
            return new

        return self._write(fn)

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda conn: conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value)))

    # -- reads ---------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get(self, job_id: str) -> Job:
        """A job by id or by a unique prefix of its id."""
        if not job_id or not all(c in "0123456789abcdef" for c in job_id):
            raise InvalidArgument("id", f"{job_id!r} is not a job id (job ids are lower-case hex)")
        rows = self._reader().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT 2",
            (job_id, job_id + "g"),
        ).fetchall()
        exact = [r for r in rows if r[0] == job_id]
        if exact:
            return _row_to_job(exact[0])
        if not rows:
            raise NotFound(f"no job with id {job_id}")
        if len(rows) > 1:
            raise InvalidArgument("id", f"{job_id!r} matches more than one job; give more of the id")
        return _row_to_job(rows[0])

    def list(
        self,
        states: Iterable[JobState] = (),
        tenant: str = "",
        owner_uid: int | None = None,
        limit: int = 0,
    ) -> builtins.list[Job]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        states = list(states)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(s.value for s in states)
        if tenant:
            where.append("tenant = ?")
            args.append(tenant)
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

    def active(self) -> builtins.list[Job]:
        """Every job not yet finished, in submission order (from memory: cheap)."""
        with self._active_lock:
            jobs = list(self._active.values())
        jobs.sort(key=lambda j: j.seq)
        return jobs

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

    def events(self, after_seq: int = 0, job_id: str = "", limit: int = 1000) -> builtins.list[Event]:
        sql = "SELECT seq, time, job_id, kind, state, reason, message, tenant FROM events WHERE seq > ?"
        args: builtins.list[Any] = [after_seq]
        if job_id:
            sql += " AND job_id = ?"
            args.append(job_id)
        rows = self._reader().execute(sql + " ORDER BY seq LIMIT ?", [*args, limit]).fetchall()
        return [
            Event(seq=r[0], time=r[1], job_id=r[2], kind=r[3], state=JobState(r[4]) if r[4] else None,
                  reason=r[5], message=r[6], tenant=r[7])
            for r in rows
        ]

    @property
    def last_event_seq(self) -> int:
        return self._last_event

    def wait_for_events(self, after_seq: int, timeout: float) -> bool:
        """Block until an event newer than ``after_seq`` is committed, or ``timeout`` passes."""
        with self._events:
            return self._events.wait_for(lambda: self._last_event > after_seq or self._closed, timeout)
