"""Job history stays bounded: List pages through any number of jobs, and finished jobs are purged
per the retention settings (age and count), with their events and logs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuos.client import ApiError, Client
from gpuos.daemon.retention import Purger
from gpuos.jobs import JobKind, JobSpec, JobState, Resources
from gpuos.store import PURGE_BATCH, Store
from tests.conftest import DaemonProcess, wait_for
from tests.store_rows import Row, insert_jobs

DAY = 24 * 3600.0


def spec(tenant: str = "t") -> JobSpec:
    return JobSpec(name="j", kind=JobKind.PROCESS, resources=Resources(), command=("true",), tenant=tenant)


@pytest.fixture
def listed(short_dir: Path) -> Iterator[tuple[DaemonProcess, list[str]]]:
    """gpuosd over a store of 25 finished jobs; their ids in submission order."""
    ids = [f"{i:016x}" for i in range(1, 26)]
    insert_jobs(short_dir / "state", [Row(i) for i in ids])
    d = DaemonProcess(short_dir).start()
    yield d, ids
    d.stop()


# -- paging ---------------------------------------------------------------------------------------


def test_list_pages_follow_one_another_in_submission_order(listed: tuple[DaemonProcess, list[str]]) -> None:
    d, ids = listed
    seen: list[list[str]] = []
    token = ""
    with Client(socket=d.socket) as c:
        while True:
            page = c.list_page(page_size=10, page_token=token)
            seen.append([j.id for j in page.jobs])
            token = page.next_page_token
            if not token:
                break
    assert [len(p) for p in seen] == [10, 10, 5]
    assert sum(seen, []) == ids


def test_client_list_follows_the_pages(listed: tuple[DaemonProcess, list[str]]) -> None:
    d, ids = listed
    with Client(socket=d.socket) as c:
        assert [j.id for j in c.iter_jobs(page_size=4)] == ids
        assert [j.id for j in c.list()] == ids


def test_a_limit_lists_the_newest_n_across_pages(listed: tuple[DaemonProcess, list[str]]) -> None:
    d, ids = listed
    with Client(socket=d.socket) as c:
        assert [j.id for j in c.iter_jobs(limit=7, page_size=3)] == ids[-7:]


def test_a_page_token_that_is_not_one_is_invalid_argument_naming_page_token(
    listed: tuple[DaemonProcess, list[str]],
) -> None:
    d, _ = listed
    with Client(socket=d.socket) as c:
        for token in ("garbage", "djE6LTE6MA", "x" * 5000):  # the second is "v1:-1:0"
            with pytest.raises(ApiError) as refused:
                c.list_page(page_token=token)
            assert refused.value.code.name == "INVALID_ARGUMENT"
            assert refused.value.details.startswith("page_token: ")
            assert len(refused.value.details) < 300


@pytest.fixture(scope="module")
def hundred_thousand() -> Iterator[DaemonProcess]:
    """gpuosd over a store of 100,000 finished jobs."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="gpuos-t", dir="/tmp"))
    insert_jobs(base / "state", (Row(f"{i:016x}") for i in range(100_000)))
    d = DaemonProcess(base).start()
    yield d
    d.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_gpuosctl_list_shows_all_of_100000_jobs(hundred_thousand: DaemonProcess) -> None:
    started = time.monotonic()
    done = hundred_thousand.ctl("-o", "json", "list", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads(done.stdout)) == 100_000
    assert time.monotonic() - started < 60


def test_a_page_holds_500_jobs_by_default_and_1000_at_most(hundred_thousand: DaemonProcess) -> None:
    with Client(socket=hundred_thousand.socket) as c:
        assert len(c.list_page().jobs) == 500
        assert len(c.list_page(page_size=5000).jobs) == 1000


def test_gpuosctl_top_shows_the_active_jobs_with_100000_in_the_store(hundred_thousand: DaemonProcess) -> None:
    done = hundred_thousand.ctl("top", "--iterations", "1")
    assert done.returncode == 0, done.stderr
    assert "running 0  paused 0  pending 0" in done.stdout


# -- retention ------------------------------------------------------------------------------------


def purger(store: Store, jobs: Path, max_age: float = 0.0, max_count: int = 0) -> Purger:
    return Purger(store, lambda job_id: jobs / job_id, max_age, max_count)


def finish(store: Store, job_id: str, at: float) -> None:
    store.update(job_id, state=JobState.SUCCEEDED, exit_code=0, finished_at=at)


def test_finished_jobs_older_than_the_retention_age_are_purged_with_their_events_and_dirs(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    jobs = tmp_path / "jobs"
    now = time.time()
    old, _ = store.submit(spec(), owner_uid=1)
    young, _ = store.submit(spec(), owner_uid=1)
    finish(store, old.id, now - 8 * DAY)
    finish(store, young.id, now - 1 * DAY)
    for job in (old, young):
        (jobs / job.id).mkdir(parents=True)
        (jobs / job.id / "stdout.log").write_text("output\n")
    assert purger(store, jobs, max_age=7 * DAY).purge(now) == [old.id]
    assert [j.id for j in store.list()] == [young.id]
    assert store.events(job_id=old.id) == [] and store.events(job_id=young.id) != []
    assert not (jobs / old.id).exists() and (jobs / young.id / "stdout.log").exists()
    store.close()


def test_beyond_the_retention_count_the_oldest_finished_jobs_go_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    now = time.time()
    ids = []
    for age in (5, 1, 4, 2, 3):  # finished this many hours ago
        job, _ = store.submit(spec(), owner_uid=1)
        finish(store, job.id, now - age * 3600)
        ids.append(job.id)
    purged = purger(store, tmp_path / "jobs", max_count=2).purge(now)
    assert purged == [ids[0], ids[2], ids[4]]  # 5, 4 and 3 hours ago
    assert {j.id for j in store.list()} == {ids[1], ids[3]}
    store.close()


def test_unfinished_jobs_are_never_purged(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    waiting, _ = store.submit(spec(), owner_uid=1)
    running, _ = store.submit(spec(), owner_uid=1)
    store.update(running.id, state=JobState.RUNNING)
    assert purger(store, tmp_path / "jobs", max_age=1e-9, max_count=1).purge(time.time() + 30 * DAY) == []
    assert {j.id for j in store.list()} == {waiting.id, running.id}
    store.close()


def test_a_backlog_larger_than_one_purge_batch_is_purged_whole(tmp_path: Path) -> None:
    insert_jobs(tmp_path / "state", (Row(f"{i:016x}", finished_at=1000.0 + i) for i in range(PURGE_BATCH * 2 + 10)))
    store = Store(tmp_path / "state")
    assert len(purger(store, tmp_path / "jobs", max_count=5).purge(time.time())) == PURGE_BATCH * 2 + 5
    assert [j.id for j in store.list()] == [f"{i:016x}" for i in range(PURGE_BATCH * 2 + 5, PURGE_BATCH * 2 + 10)]
    store.close()


def test_job_ids_keep_rising_after_every_job_was_purged(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    job, _ = store.submit(spec(), owner_uid=1)
    finish(store, job.id, 1.0)
    purger(store, tmp_path / "jobs", max_age=1.0).purge(time.time())
    store.close()
    store = Store(tmp_path / "state")
    assert store.submit(spec(), owner_uid=1)[0].seq == job.seq + 1
    store.close()


def test_gpuosd_purges_at_start_per_its_retention_settings(short_dir: Path) -> None:
    state = short_dir / "state"
    now = time.time()
    insert_jobs(state, [Row("00000000000000a1", finished_at=now - 10 * DAY),
                        Row("00000000000000a2", finished_at=now - 60)])
    (state / "jobs" / "00000000000000a1").mkdir(parents=True)
    (short_dir / "gpuosd.toml").write_text(f"retention_seconds = {3 * DAY}\n")
    d = DaemonProcess(short_dir, "--config", str(short_dir / "gpuosd.toml")).start()
    try:
        with Client(socket=d.socket) as c:
            wait_for(lambda: [j.id for j in c.list()] == ["00000000000000a2"])
        assert not (state / "jobs" / "00000000000000a1").exists()
    finally:
        d.stop()


def test_retention_settings_of_zero_keep_everything(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    job, _ = store.submit(spec(), owner_uid=1)
    finish(store, job.id, 1.0)
    assert purger(store, tmp_path / "jobs").purge(time.time()) == []
    store.close()

