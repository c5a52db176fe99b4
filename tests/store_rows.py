"""Job rows written straight into a stopped store: many jobs fast, or jobs with chosen ids."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpuos.jobs import JobKind, JobSpec, JobState, Resources
from gpuos.store import DB_NAME, Store, spec_to_json


@dataclass(frozen=True)
class Row:
    id: str
    tenant: str = "t"
    owner_uid: int = 0
    state: JobState = JobState.SUCCEEDED
    finished_at: float | None = None


def insert_jobs(state_dir: Path, rows: Iterable[Row]) -> int:
    """Add ``rows`` as jobs to the store in ``state_dir`` (created if need be; no daemon may run)."""
    Store(state_dir).close()
    now = time.time()
    conn = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    try:
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0]
        values = []
        for seq, row in enumerate(rows, start=last + 1):
            spec = JobSpec(name=f"j{seq}", kind=JobKind.PROCESS, resources=Resources(), command=("true",),
                           tenant=row.tenant)
            finished = row.finished_at if row.finished_at is not None else (now if row.state.terminal else None)
            values.append((row.id, seq, spec_to_json(spec), row.owner_uid, row.tenant, row.state.value,
                           0 if row.state.terminal else None, now, finished))
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (id, seq, spec, owner_uid, tenant, state, exit_code, created_at, finished_at) "
            "VALUES (?,?,?,?,?,?,?,?,?)", values,
        )
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (str(last + len(values) + 1),))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return len(values)
