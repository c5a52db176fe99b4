"""The store on a shared machine: private on disk, refuses a damaged store, survives a full disk,
caps each tenant's queue, and keeps job ids unguessable and tenants' ids apart."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuos.client import ApiError, Client
from gpuos.errors import InvalidArgument, NotFound, ResourceExhausted
from gpuos.jobs import JobKind, JobSpec, JobState, Resources
from gpuos.store import Store
from gpuos.v1 import jobs_pb2
from tests.conftest import DaemonProcess, _kill_leftover_jobs, wait_for
from tests.store_rows import Row, insert_jobs

ALICE, BOB = 54321, 54322
PATH_ENV = {"PATH": "/usr/bin:/bin"}

root_only = pytest.mark.skipif(os.getuid() != 0, reason="needs root (other uids, mounts)")


def spec(tenant: str = "t") -> JobSpec:
    return JobSpec(name="j", kind=JobKind.PROCESS, resources=Resources(), command=("true",), tenant=tenant)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read_as(uid: int, path: Path) -> str:
    """What happens when ``uid`` opens ``path`` for reading: "read" or the error's name."""
    code = (
        "import os, sys\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        "try:\n    open(sys.argv[1], 'rb').read(1)\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n"
        "else:\n    print('read')\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def tmpfs(short_dir: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs at ``short_dir/state``: a disk that can really fill up."""
    mount = short_dir / "state"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its file system has no space left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def gpuosd_refuses(base: Path) -> str:
    """Start gpuosd on ``base/state``; it must exit non-zero with one line and no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "gpuos.daemon.main", "--socket", str(base / "gpuos.sock"),
         "--state-dir", str(base / "state"), "--backend", "sim"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- privacy on disk ------------------------------------------------------------------------------


def test_the_state_dir_is_created_mode_0700(tmp_path: Path) -> None:
    Store(tmp_path / "state").close()
    assert mode(tmp_path / "state") == 0o700


def test_a_state_dir_open_to_others_is_made_0700(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o755)
    os.chmod(tmp_path / "state", 0o755)
    Store(tmp_path / "state").close()
    assert mode(tmp_path / "state") == 0o700


def test_the_database_and_its_wal_and_shm_are_mode_0600_after_submits(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for _ in range(5):
        store.submit(spec(), owner_uid=1)
    files = [tmp_path / n for n in ("gpuos.db", "gpuos.db-wal", "gpuos.db-shm", "gpuos.commit")]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    store.close()


def test_a_database_left_0644_by_an_older_gpuosd_is_made_0600(tmp_path: Path) -> None:
    Store(tmp_path).close()
    os.chmod(tmp_path / "gpuos.db", 0o644)
    Store(tmp_path).close()
    assert mode(tmp_path / "gpuos.db") == 0o600


@root_only
def test_another_uid_cannot_read_the_database_or_its_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.submit(JobSpec(name="j", kind=JobKind.PROCESS, resources=Resources(), command=("true",),
                         env=(("MY_TOKEN", "secret"),), tenant="t"), owner_uid=0)
    os.chmod(tmp_path, 0o755)
    for name in ("gpuos.db", "gpuos.db-wal"):
        assert read_as(ALICE, tmp_path / "state" / name) == "PermissionError"
    store.close()


@root_only
def test_the_store_files_stay_unreadable_to_others_even_in_a_directory_opened_to_them(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.submit(spec(), owner_uid=0)
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "state", 0o755)  # as an administrator might, by mistake
    for name in ("gpuos.db", "gpuos.db-wal"):
        assert read_as(ALICE, tmp_path / "state" / name) == "PermissionError"
    store.close()


# -- a full disk ----------------------------------------------------------------------------------


@root_only
def test_on_a_full_disk_a_write_fails_with_resource_exhausted_and_the_next_succeeds_once_space_returns(
    tmpfs: Path,
) -> None:
    store = Store(tmpfs)
    job, _ = store.submit(spec(), owner_uid=1)
    filler = fill(tmpfs)
    started = time.monotonic()
    with pytest.raises(ResourceExhausted, match=rf"state dir full: \d+ bytes free \({tmpfs}\)"):
        store.update(job.id, message="x" * 200_000)  # must grow the WAL, and cannot
    assert time.monotonic() - started < 1.0
    filler.unlink()
    assert store.update(job.id, message="written").message == "written"
    store.close()


@root_only
def test_on_a_full_disk_a_submit_is_refused_within_a_second_naming_the_free_space(tmpfs: Path) -> None:
    store = Store(tmpfs)
    filler = fill(tmpfs)
    started = time.monotonic()
    with pytest.raises(ResourceExhausted, match=r"state dir full: \d+ bytes free"):
        store.submit(spec(), owner_uid=1)
    assert time.monotonic() - started < 1.0
    filler.unlink()
    assert store.submit(spec(), owner_uid=1)[1]
    store.close()


@root_only
def test_on_a_full_disk_gpuosd_refuses_submits_keeps_a_jobs_exit_and_recovers_by_itself(
    short_dir: Path, tmpfs: Path,
) -> None:
    d = DaemonProcess(short_dir).start()
    trigger = short_dir / "go"
    try:
        with Client(socket=d.socket) as c:
            job = c.submit(["sh", "-c", f"while [ ! -e {trigger} ]; do sleep 0.05; done; exit 7"], env=PATH_ENV)
            job_dir = tmpfs / "jobs" / job.id
            wait_for(lambda: c.get(job.id).state == jobs_pb2.RUNNING and (job_dir / "child.json").exists())
            hole = tmpfs / "hole"
            hole.write_bytes(b"\0" * (16 << 10))
            filler = fill(tmpfs)
            hole.unlink()  # room for the job's exit.json, not for the store's next commit

            started = time.monotonic()
            with pytest.raises(ApiError) as refused:
                c.submit(["true"], env=PATH_ENV)
            assert time.monotonic() - started < 1.0
            assert refused.value.code.name == "RESOURCE_EXHAUSTED"
            assert "state dir full" in refused.value.details and "bytes free" in refused.value.details

            trigger.touch()
            wait_for(lambda: (job_dir / "exit.json").exists())
            time.sleep(1.0)  # reaper rounds that cannot commit the exit
            assert c.get(job.id).state == jobs_pb2.RUNNING

            filler.unlink()
            ended = wait_for(lambda: (j := c.get(job.id)).state == jobs_pb2.FAILED and j, timeout=30)
            assert ended.exit_code == 7
            again = c.submit(["true"], env=PATH_ENV)
            assert c.wait(again.id, timeout=30).state == jobs_pb2.SUCCEEDED
            assert d.proc is not None and d.proc.poll() is None  # the same gpuosd, never restarted
    finally:
        d.stop()
        _kill_leftover_jobs(d.state)


# -- a damaged store at start ---------------------------------------------------------------------


def test_a_wal_cut_in_half_refuses_to_start_saying_how_many_jobs_are_missing(short_dir: Path) -> None:
    d = DaemonProcess(short_dir).start()
    try:
        with Client(socket=d.socket) as c:
            for _ in range(20):
                c.submit(["sleep", "60"], gpus=2, env=PATH_ENV)  # one runs, the rest wait
        d.kill9()
        wal = d.state / "gpuos.db-wal"
        os.truncate(wal, wal.stat().st_size // 2)
        line = gpuosd_refuses(short_dir)
        assert line.startswith(f"gpuosd: store {d.state / 'gpuos.db'}: is missing the last "), line
        assert "of 20 committed jobs" in line and "gpuos.db-wal" in line
    finally:
        d.stop()
        _kill_leftover_jobs(d.state)


def test_a_store_that_fails_its_integrity_check_refuses_to_start(short_dir: Path) -> None:
    state = short_dir / "state"
    insert_jobs(state, [Row(id=f"{i:016x}") for i in range(3000)])
    db = state / "gpuos.db"
    data = bytearray(db.read_bytes())
    page = 4096
    data[(len(data) // page // 2) * page] = 0  # not a valid b-tree page type
    db.write_bytes(bytes(data))
    line = gpuosd_refuses(short_dir)
    assert line.startswith(f"gpuosd: store {db}: "), line
    assert "integrity check" in line or "damaged" in line


def test_a_file_that_is_not_a_database_refuses_to_start(short_dir: Path) -> None:
    state = short_dir / "state"
    state.mkdir(mode=0o700)
    (state / "gpuos.db").write_text("these are my notes, not a database\n" * 200)
    line = gpuosd_refuses(short_dir)
    assert line == f"gpuosd: store {state / 'gpuos.db'}: is not a SQLite database (file is not a database)"


@root_only
def test_a_store_on_a_read_only_file_system_refuses_to_start(short_dir: Path, tmpfs: Path) -> None:
    Store(tmpfs).close()
    done = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only: {done.stderr.decode().strip()}")
    line = gpuosd_refuses(short_dir)
    assert line.startswith(f"gpuosd: store {tmpfs / 'gpuos.db'}: is on a read-only file system"), line


@root_only
def test_a_database_file_its_user_may_not_write_refuses_to_open(short_dir: Path) -> None:
    state = short_dir / "state"
    Store(state).close()
    for path in (state, *state.iterdir()):
        os.chown(path, ALICE, ALICE)
    os.chmod(state / "gpuos.db", 0o400)
    code = (
        "import os, sys\nfrom pathlib import Path\nfrom gpuos.errors import StoreError\nfrom gpuos.store import Store\n"
        f"os.setgroups([]); os.setgid({ALICE}); os.setuid({ALICE})\n"
        "try:\n    Store(Path(sys.argv[1]))\nexcept StoreError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(state)], capture_output=True, text=True, cwd="/")
    assert done.stdout.strip() == f"store {state / 'gpuos.db'}: is read-only for uid {ALICE} (mode 0400)", done.stderr


def test_job_dirs_without_a_record_are_reported_at_start_and_kept(short_dir: Path) -> None:
    state = short_dir / "state"
    Store(state).close()
    stray = state / "jobs" / "0123456789abcdef"
    stray.mkdir(parents=True)
    d = DaemonProcess(short_dir).start()
    try:
        log = (short_dir / "gpuosd.log").read_text()
        assert f"1 job dirs under {state / 'jobs'} have no job in the store (kept, not deleted): " \
               "0123456789abcdef" in log
        assert stray.is_dir()
    finally:
        d.stop()


# -- per-tenant pending quota ---------------------------------------------------------------------


def test_a_tenant_at_its_pending_cap_is_refused_naming_the_cap_and_the_setting(tmp_path: Path) -> None:
    store = Store(tmp_path, max_pending_per_tenant=3)
    for _ in range(3):
        store.submit(spec("alice"), owner_uid=1)
    with pytest.raises(ResourceExhausted, match=r"3 jobs pending.*max_pending_per_tenant = 3"):
        store.submit(spec("alice"), owner_uid=1)
    store.close()


def test_the_pending_cap_is_per_tenant(tmp_path: Path) -> None:
    store = Store(tmp_path, max_pending_per_tenant=1)
    store.submit(spec("alice"), owner_uid=1)
    assert store.submit(spec("bob"), owner_uid=2)[1]
    store.close()


def test_a_job_that_leaves_the_queue_frees_a_place_under_the_cap(tmp_path: Path) -> None:
    store = Store(tmp_path, max_pending_per_tenant=1)
    job, _ = store.submit(spec("alice"), owner_uid=1)
    store.update(job.id, state=JobState.RUNNING)
    assert store.submit(spec("alice"), owner_uid=1)[1]
    store.close()


def test_the_pending_cap_counts_jobs_queued_before_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.submit(spec("alice"), owner_uid=1)
    store.close()
    store = Store(tmp_path, max_pending_per_tenant=1)
    with pytest.raises(ResourceExhausted):
        store.submit(spec("alice"), owner_uid=1)
    store.close()


def test_concurrent_submits_cannot_pass_the_pending_cap_together(tmp_path: Path) -> None:
    store = Store(tmp_path, max_pending_per_tenant=10)
    accepted: list[str] = []
    refused: list[Exception] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            try:
                job, _ = store.submit(spec("alice"), owner_uid=1)
                with lock:
                    accepted.append(job.id)
            except ResourceExhausted as exc:
                with lock:
                    refused.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 10 and len(refused) == 70
    assert len(store.list(states=[JobState.PENDING])) == 10
    store.close()


def test_a_submit_past_the_pending_cap_answers_resource_exhausted_over_the_api(short_dir: Path) -> None:
    (short_dir / "gpuosd.toml").write_text("max_pending_per_tenant = 1\n")
    d = DaemonProcess(short_dir, "--config", str(short_dir / "gpuosd.toml")).start()
    try:
        with Client(socket=d.socket) as c:
            running = c.submit(["sleep", "60"], gpus=2, env=PATH_ENV)
            wait_for(lambda: c.get(running.id).state == jobs_pb2.RUNNING)
            c.submit(["true"], gpus=2, env=PATH_ENV)  # waits behind it: 1 pending
            with pytest.raises(ApiError) as refused:
                c.submit(["true"], gpus=2, env=PATH_ENV)
            assert refused.value.code.name == "RESOURCE_EXHAUSTED"
            assert "max_pending_per_tenant = 1" in refused.value.details
            c.cancel(running.id)
    finally:
        d.stop()
        _kill_leftover_jobs(d.state)


# -- job ids --------------------------------------------------------------------------------------


def test_job_ids_are_16_hex_characters(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ids = {store.submit(spec(), owner_uid=1)[0].id for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    store.close()


def test_a_colliding_id_is_retried_and_the_submit_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = iter(["aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"])
    monkeypatch.setattr("gpuos.store.new_job_id", lambda: next(fresh))
    store = Store(tmp_path)
    first, _ = store.submit(spec(), owner_uid=1)
    second, created = store.submit(spec(), owner_uid=1)
    assert (first.id, second.id, created) == ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", True)
    store.close()


def test_a_prefix_resolves_among_the_tenants_own_jobs_only(tmp_path: Path) -> None:
    insert_jobs(tmp_path, [Row("abcd000000000001", tenant="alice"), Row("abcd000000000002", tenant="bob")])
    store = Store(tmp_path)
    assert store.get("abcd", tenant="alice").id == "abcd000000000001"
    assert store.get("abcd", tenant="bob").id == "abcd000000000002"
    with pytest.raises(InvalidArgument, match="more than one job"):
        store.get("abcd")  # an admin sees both
    with pytest.raises(NotFound):
        store.get("abcd000000000002", tenant="alice")
    store.close()


@root_only
def test_over_the_api_a_prefix_shared_with_another_tenants_job_finds_the_callers_own(short_dir: Path) -> None:
    insert_jobs(short_dir / "state", [Row("abcd000000000001", tenant="uid54321", owner_uid=ALICE),
                                      Row("abcd000000000002", tenant="uid54322", owner_uid=BOB)])
    d = DaemonProcess(short_dir).start()
    try:
        alice = d.ctl("get", "abcd", user=ALICE)
        bob = d.ctl("get", "abcd", user=BOB)
        other = d.ctl("get", "abcd000000000002", user=ALICE)
    finally:
        d.stop()
    assert alice.returncode == 0 and "abcd000000000001" in alice.stdout, alice.stderr
    assert bob.returncode == 0 and "abcd000000000002" in bob.stdout, bob.stderr
    assert other.returncode == 1 and "NOT_FOUND" in other.stderr
