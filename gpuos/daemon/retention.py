"""History that does not grow without bound: finished jobs are purged per the retention settings.

A purge deletes the jobs' records and events from the store first, then their job directories
(logs and all), so a crash in between leaves at worst a directory without a record, which the
next start reports (and never deletes: it may be something a person wants to look at).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gpuos.errors import GpuosError
from gpuos.store import PURGE_BATCH, Store

log = logging.getLogger("gpuos.retention")

PURGE_INTERVAL = 60.0
# Directory names shown in the start-up line about job dirs without a record.
_ORPHANS_SHOWN = 5


class Purger:
    """Purges finished jobs at start and every ``interval`` seconds, in a thread of its own."""

    def __init__(
        self,
        store: Store,
        job_dir: Callable[[str], Path],
        max_age: float,
        max_count: int,
        interval: float = PURGE_INTERVAL,
    ) -> None:
        self.store = store
        self.job_dir = job_dir
        self.max_age = max_age
        self.max_count = max_count
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def purge(self, now: float | None = None) -> list[str]:
        """Purge everything due now; the ids purged."""
        if not self.max_age and not self.max_count:
            return []
        now = time.time() if now is None else now
        purged: list[str] = []
        while not self._stop.is_set():
            ids = self.store.purge_finished(now, self.max_age, self.max_count)
            for job_id in ids:
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            purged += ids
            if len(ids) < PURGE_BATCH:
                break
        if purged:
            log.info("purged %d finished jobs (retention: %gs, %d jobs)", len(purged), self.max_age, self.max_count)
        return purged

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gpuos-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.purge()
            except GpuosError as exc:
                # A full disk, say: the jobs stay until a later round can delete them.
                log.warning("could not purge finished jobs: %s", exc)
            except Exception:  # noqa: BLE001 - the purger outlives one bad round
                log.exception("purging finished jobs failed")
            self._stop.wait(self.interval)


def report_orphans(store: Store, jobs_dir: Path) -> list[str]:
    """Job directories under ``jobs_dir`` with no job in the store: logged, never deleted."""
    try:
        names = sorted(p.name for p in jobs_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    known = store.known_ids(names)
    orphans = [n for n in names if n not in known]
    if orphans:
        shown = ", ".join(orphans[:_ORPHANS_SHOWN]) + (", ..." if len(orphans) > _ORPHANS_SHOWN else "")
        log.warning("%d job dirs under %s have no job in the store (kept, not deleted): %s",
                    len(orphans), jobs_dir, shown)
    return orphans
