"""The job store: durable, ordered, and consistent under concurrent writers."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from gpuos.errors import FailedPrecondition, InvalidArgument, NotFound, StoreError
from gpuos.jobs import JobKind, JobSpec, JobState, Partition, PartitionKind, Priority, Qos, Resources
from gpuos.store import Store, placement_from_json, placement_to_json, spec_from_json, spec_to_json


def spec(name: str = "j") -> JobSpec:
    return JobSpec(name=name, kind=JobKind.PROCESS, resources=Resources(), command=("true",), tenant="t")


def test_a_submitted_job_is_readable_from_a_fresh_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job, created = store.submit(spec("a"), owner_uid=1)
    store.close()
    again = Store(tmp_path)
    assert created and again.get(job.id).spec == spec("a")
    assert [j.id for j in again.active()] == [job.id]
    again.close()


def test_concurrent_submits_all_land_with_distinct_ordered_sequence_numbers(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ids: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            job, _ = store.submit(spec(), owner_uid=1)
            with lock:
                ids.append(job.id)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = store.list()
    assert len(jobs) == 200 and sorted(j.id for j in jobs) == sorted(ids)
    assert [j.seq for j in jobs] == sorted({j.seq for j in jobs})
    store.close()


def test_an_expected_state_guards_a_transition(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job, _ = store.submit(spec(), owner_uid=1)
    store.update(job.id, expect={JobState.PENDING}, state=JobState.CANCELLED)
    with pytest.raises(FailedPrecondition):
        store.update(job.id, expect={JobState.PENDING}, state=JobState.RUNNING)
    assert store.get(job.id).state == JobState.CANCELLED
    assert store.active() == []
    store.close()


def test_one_failing_write_does_not_undo_its_batch_neighbours(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job, _ = store.submit(spec(), owner_uid=1)
    with pytest.raises(NotFound):
        store.update("ffffffffff", state=JobState.RUNNING)
    assert store.get(job.id).state == JobState.PENDING
    store.close()


def test_transitions_are_recorded_as_events(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job, _ = store.submit(spec(), owner_uid=1)
    store.update(job.id, state=JobState.RUNNING, event="started")
    store.update(job.id, state=JobState.SUCCEEDED)
    assert [e.kind for e in store.events(job_id=job.id)] == ["submitted", "started", "succeeded"]
    store.close()


def test_an_ambiguous_prefix_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for _ in range(40):
        store.submit(spec(), owner_uid=1)
    with pytest.raises(InvalidArgument):
        store.get("")
    firsts = [j.id[0] for j in store.list()]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(InvalidArgument, match="more than one"):
        store.get(shared)
    store.close()


def test_recent_events_read_from_memory_match_the_database(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for i in range(30):
        job, _ = store.submit(replace(spec(f"j{i}"), tenant="a" if i % 3 else "b"), 0)
        store.update(job.id, state=JobState.CANCELLED)
    from_memory = [store.events(after, "", 7, tenant) for after in (0, 5, 40) for tenant in ("", "a", "b")]
    store._recent.clear()  # the same questions, answered by SQLite
    from_sqlite = [store.events(after, "", 7, tenant) for after in (0, 5, 40) for tenant in ("", "a", "b")]
    assert from_memory == from_sqlite and any(from_memory)
    store.close()


def test_a_follower_of_one_tenant_is_not_woken_by_another_tenants_events(tmp_path: Path) -> None:
    store = Store(tmp_path)
    seq = store.last_event_seq
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait_for_events(seq, 1.0, "a")))
    waiter.start()
    store.submit(replace(spec(), tenant="b"), 0)
    waiter.join()
    assert woke == [False]
    assert store.wait_for_events(seq, 0.0) is True  # an unfiltered follower sees it
    store.submit(replace(spec(), tenant="a"), 0)
    assert store.wait_for_events(seq, 1.0, "a") is True
    store.close()


def test_a_second_store_on_the_same_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(StoreError, match=f"in use by another gpuosd \\(pid {os.getpid()}\\)"):
        Store(tmp_path)
    store.close()
    Store(tmp_path).close()  # closing released it


# Rows exactly as gpuos wrote them before partitions, reservations and progress were typed.
OLD_MIG_PLACEMENT = (
    '{"devices":[0],"device_uuids":["GPU-0"],"partition":"mig:3g.40gb","granted":{"gpus":1,"gpu_milli":428,'
    '"memory_bytes":42949672960,"mig_profile":"3g.40gb","gpu_types":[],"sharing":""},"mig_slot":4,"mig_uuid":"MIG-abc"}'
)
OLD_TIMESLICE_PLACEMENT = (
    '{"devices":[1],"device_uuids":["GPU-1"],"partition":"timeslice","granted":{"gpus":1,"gpu_milli":500,'
    '"memory_bytes":0,"mig_profile":"","gpu_types":[],"sharing":"timeslice"},"mig_slot":-1,"mig_uuid":""}'
)
OLD_RESERVATION_SPEC = (
    '{"name":"plugin","kind":"external","resources":{"gpus":1,"gpu_milli":500,"memory_bytes":0,"mig_profile":"",'
    '"gpu_types":[],"sharing":""},"command":[],"kernel":"","params":[["keys","dev-a,dev-b"]],"priority":"NORMAL",'
    '"tenant":"admin","qos":"BE","env":[],"cwd":"","estimated_seconds":0.0}'
)
OLD_KERNEL_SPEC = (
    '{"name":"k","kind":"kernel","resources":{"gpus":1,"gpu_milli":0,"memory_bytes":0,"mig_profile":"",'
    '"gpu_types":[],"sharing":""},"command":[],"kernel":"matmul","params":[["keys","x"],["n","3"]],'
    '"priority":"NORMAL","tenant":"t","qos":"BE","env":[],"cwd":"","estimated_seconds":0.0}'
)


def test_an_old_placement_loads_typed_and_is_written_back_byte_for_byte() -> None:
    mig = placement_from_json(OLD_MIG_PLACEMENT)
    assert mig is not None and mig.partition == Partition(PartitionKind.MIG, "3g.40gb") and mig.sharing == "mig"
    shared = placement_from_json(OLD_TIMESLICE_PLACEMENT)
    assert shared is not None and shared.partition.kind is PartitionKind.TIMESLICE
    assert placement_to_json(mig) == OLD_MIG_PLACEMENT
    assert placement_to_json(shared) == OLD_TIMESLICE_PLACEMENT


def test_an_old_reservation_row_loads_its_comma_joined_keys_as_reservation_keys() -> None:
    spec = spec_from_json(OLD_RESERVATION_SPEC)
    assert spec.reservation_keys == ("dev-a", "dev-b")
    assert spec.params == ()


def test_a_reservation_keeps_its_keys_through_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    held = JobSpec(name="r", kind=JobKind.EXTERNAL, resources=Resources(), reservation_keys=("a", "b"), tenant="t")
    job, _ = store.submit(held, owner_uid=0)
    store.close()
    again = Store(tmp_path)
    assert again.get(job.id).spec.reservation_keys == ("a", "b")
    again.close()


def test_a_job_that_is_no_reservation_is_stored_as_before_even_with_a_param_named_keys() -> None:
    spec = spec_from_json(OLD_KERNEL_SPEC)
    assert spec.params == (("keys", "x"), ("n", "3")) and spec.reservation_keys == ()
    assert spec_to_json(spec) == OLD_KERNEL_SPEC


def test_every_field_of_a_spec_survives_the_store_text() -> None:
    import dataclasses

    full = JobSpec(
        name="n", kind=JobKind.KERNEL, command=("a", "b"), kernel="k", params=(("p", "1"),),
        resources=Resources(gpus=2, gpu_milli=0, memory_bytes=7, mig_profile="", gpu_types=("H100",), sharing="mps"),
        priority=Priority.HIGH, tenant="t", qos=Qos.LS, env=(("A", "1"),), cwd="/w", estimated_seconds=3.5,
        reservation_keys=("r1",), group="g", dedupe_key="sha256:x",
        slo_p99_seconds=0.02,
    )
    # A field left at its default would hide one the writer forgets.
    defaults = JobSpec(name="", kind=JobKind.PROCESS, resources=Resources())
    unset = [f.name for f in dataclasses.fields(JobSpec) if getattr(full, f.name) == getattr(defaults, f.name)]
    assert unset == []
    assert spec_from_json(spec_to_json(full)) == full


def test_a_store_made_before_groups_opens_with_its_jobs_ungrouped(tmp_path: Path) -> None:
    import sqlite3

    store = Store(tmp_path)
    job, _ = store.submit(spec("old"), owner_uid=1)
    store.close()
    conn = sqlite3.connect(tmp_path / "gpuos.db")
    for table, column in (("jobs", "grp"), ("jobs", "dedupe_key"), ("jobs", "cancel_reason"),
                          ("jobs", "stop_requested"), ("events", "grp")):
        conn.execute(f"DROP INDEX IF EXISTS {'events_group' if table == 'events' else 'jobs_group'}")
        conn.execute("DROP INDEX IF EXISTS jobs_dedupe")
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("DROP TABLE groups")
    conn.commit()
    conn.close()
    reopened = Store(tmp_path)
    again = reopened.get(job.id)
    assert (again.spec.group, again.cancel_reason, again.stop_requested) == ("", "", False)
    grouped, _ = reopened.submit(replace(spec("new"), group="g"), owner_uid=1)
    assert [m.id for m in reopened.members("t", "g")] == [grouped.id]
    reopened.close()
