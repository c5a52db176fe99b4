"""Agent-first jobs in gpuosd: speculative groups, deduplication, steering and batch submits."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gpuos.client import ApiError, Client
from gpuos.dedupe import key_for
from gpuos.groups import GroupMode, GroupSpec
from gpuos.jobs import JobKind, JobSpec, JobState, Resources
from gpuos.store import Store
from gpuos.v1 import jobs_pb2
from tests.conftest import DaemonProcess, wait_for

PY = sys.executable
QUICK_WIN = [PY, "-c", "print('winner'); import time; time.sleep(0.3)"]
LONG = [PY, "-c", "print('started', flush=True); import time; time.sleep(60)"]


def refused(call: Callable[[], Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def state(client: Client, job_id: str) -> int:
    return client.get(job_id).state


# -- group modes --------------------------------------------------------------------------------


def test_first_success_stops_the_running_and_pending_siblings_and_keeps_their_logs(client: Client) -> None:
    # Two GPUs, three whole-GPU members: the winner and one loser run, the other loser waits.
    winner, running, waiting = client.submit_group(
        "sweep", [{"command": QUICK_WIN, "gpus": 1}, {"command": LONG, "gpus": 1}, {"command": LONG, "gpus": 1}],
        mode="first-success")
    wait_for(lambda: b"started" in b"".join(d for _, d in client.logs(running.id)))
    group = client.wait_group("sweep", timeout=30)
    members = {m.id: m for m in group.members}
    assert members[winner.id].state == jobs_pb2.SUCCEEDED
    for loser in (running, waiting):
        assert members[loser.id].state == jobs_pb2.CANCELLED
        assert members[loser.id].reason == "sibling-succeeded"
    assert (group.state, group.reason, group.succeeded) == ("ended", "sibling-succeeded", 1)
    assert b"started" in b"".join(d for _, d in client.logs(running.id))  # a stopped sibling's log stays
    assert group.spent_gpu_seconds > 0


def test_best_of_k_ends_after_k_successes_and_leaves_failures_as_they_are(client: Client) -> None:
    quick = [PY, "-c", "pass"]
    later = [PY, "-c", "import time; time.sleep(0.5)"]
    fails = [PY, "-c", "raise SystemExit(4)"]
    jobs = client.submit_group("bo2", [{"command": c, "gpu_fraction": 0.25} for c in (quick, fails, later, LONG)],
                               mode="best-of:2")
    group = client.wait_group("bo2", timeout=30)
    by_id = {m.id: m for m in group.members}
    assert [by_id[j.id].state for j in jobs] == [jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.SUCCEEDED,
                                                 jobs_pb2.CANCELLED]
    assert by_id[jobs[1].id].reason == "exit-nonzero" and by_id[jobs[3].id].reason == "sibling-succeeded"
    assert (group.succeeded, group.reason) == (2, "sibling-succeeded")


def test_all_mode_runs_every_member_whatever_the_others_do(client: Client) -> None:
    commands = [[PY, "-c", "pass"], [PY, "-c", "raise SystemExit(1)"], [PY, "-c", "pass"]]
    client.submit_group("every", [{"command": c, "gpu_fraction": 0.5} for c in commands], mode="all")
    group = client.wait_group("every", timeout=30)
    assert [m.state for m in group.members] == [jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.SUCCEEDED]
    assert (group.state, group.succeeded) == ("open", 2)  # "all" never ends by itself


def test_a_spent_budget_stops_the_members_still_pending_or_running(client: Client) -> None:
    members = client.submit_group("capped", [{"command": LONG, "gpus": 1}] * 3, mode="all", budget=1.0)
    group = client.wait_group("capped", timeout=30)
    assert [m.state for m in group.members] == [jobs_pb2.CANCELLED] * 3
    assert {m.reason for m in group.members} == {"group-budget"}
    assert (group.state, group.reason) == ("ended", "group-budget")
    # Two ran (two GPUs) until the round that saw the budget spent; the third never started.
    assert group.spent_gpu_seconds >= 1.0
    assert client.get(members[2].id).started_at.seconds == 0
    refused_member = refused(lambda: client.submit(LONG, group="capped"))
    assert refused_member.code == grpc.StatusCode.FAILED_PRECONDITION and "has ended" in refused_member.details


def test_cancelling_a_group_ends_every_unfinished_member_and_get_list_show_it(client: Client) -> None:
    client.submit_group("cancel-me", [{"command": LONG, "gpus": 1}] * 3, mode="first-success")
    wait_for(lambda: sum(m.state == jobs_pb2.RUNNING for m in client.group("cancel-me").members) == 2)
    group = client.cancel_group("cancel-me")
    assert group.reason == "cancelled-by-user"
    final = client.wait_group("cancel-me", timeout=30)
    assert {(m.state, m.reason) for m in final.members} == {(jobs_pb2.CANCELLED, "cancelled-by-user")}
    listed = {g.name: g for g in client.groups()}
    assert listed["cancel-me"].state == "ended" and not listed["cancel-me"].members


def test_a_groups_events_can_be_followed_by_name(client: Client) -> None:
    winner, loser = client.submit_group("watched", [{"command": QUICK_WIN, "gpus": 1},
                                                    {"command": LONG, "gpus": 1}], mode="first-success")
    client.wait_group("watched", timeout=30)
    events = list(client.group_events("watched"))
    assert {e.job_id for e in events} == {winner.id, loser.id}
    assert all(e.group == "watched" for e in events)
    assert ("cancel-requested", loser.id) in {(e.kind, e.job_id) for e in events}


# -- deduplication ------------------------------------------------------------------------------


def test_a_duplicate_gets_the_same_job_while_pending_running_or_succeeded(client: Client, tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    data.write_text("v1")
    command = [PY, "-c", "print('computed')"]
    key = key_for(command, inputs=[data])
    first = client.submit_request(command, dedupe_key=key)
    second = client.submit_request(command, dedupe_key=key)
    one, two = client.submit_batch([first, second])
    assert (one.duplicate, two.duplicate) == (False, True) and one.job.id == two.job.id
    done = client.wait(one.job.id, timeout=30)
    again = client.submit_batch([client.submit_request(command, dedupe_key=key)])[0]
    assert again.duplicate and again.job.id == done.id and again.job.exit_code == 0
    assert b"computed" in b"".join(d for _, d in client.logs(again.job.id))
    data.write_text("v2")  # other input, other work
    assert client.submit(command, dedupe_key=key_for(command, inputs=[data])).id != done.id


def test_a_failed_job_is_not_a_duplicate_worth_returning(client: Client) -> None:
    command = [PY, "-c", "raise SystemExit(2)"]
    failed = client.wait(client.submit(command, dedupe_key="k-fail").id, timeout=30)
    assert failed.state == jobs_pb2.FAILED
    assert client.submit(command, dedupe_key="k-fail").id != failed.id


def test_dedupe_keys_never_match_across_tenants(client: Client) -> None:
    command = [PY, "-c", "import time; time.sleep(30)"]
    alice = client.submit(command, tenant="alice", dedupe_key="same")
    bob = client.submit(command, tenant="bob", dedupe_key="same")
    assert alice.id != bob.id
    assert client.submit(command, tenant="alice", dedupe_key="same").id == alice.id


def test_the_dedupe_key_covers_command_env_cwd_and_inputs(tmp_path: Path) -> None:
    base = key_for(["train", "--lr", "1"], env={"SEED": "1"}, env_names=["SEED"], cwd="/w")
    assert base == key_for(["train", "--lr", "1"], env={"SEED": "1", "OTHER": "x"}, env_names=["SEED"], cwd="/w")
    assert base != key_for(["train", "--lr", "2"], env={"SEED": "1"}, env_names=["SEED"], cwd="/w")
    assert base != key_for(["train", "--lr", "1"], env={"SEED": "2"}, env_names=["SEED"], cwd="/w")
    assert base != key_for(["train", "--lr", "1"], env={}, env_names=["SEED"], cwd="/w")
    assert base != key_for(["train", "--lr", "1"], env={"SEED": "1"}, env_names=["SEED"], cwd="/elsewhere")
    with pytest.raises(Exception, match="dedupe_input: cannot read"):
        key_for(["train"], inputs=[tmp_path / "missing"])


# -- steering -----------------------------------------------------------------------------------


def test_a_raised_priority_takes_effect_in_the_next_round(client: Client) -> None:
    client.set_policy("priority")
    holders = [client.submit(LONG, gpus=1) for _ in range(2)]
    wait_for(lambda: all(state(client, j.id) == jobs_pb2.RUNNING for j in holders))
    normal = client.submit([PY, "-c", "pass"], gpus=1)
    low = client.submit([PY, "-c", "pass"], gpus=1, priority="low")
    raised = client.set_priority(low.id, "high")
    assert raised.spec.priority == jobs_pb2.HIGH
    assert "priority-changed" in [e.kind for e in client.events(job_id=low.id)]
    client.cancel(holders[0].id)
    wait_for(lambda: state(client, low.id) != jobs_pb2.PENDING)
    assert state(client, normal.id) == jobs_pb2.PENDING  # the raised job went first
    running = client.set_priority(holders[1].id, "low")  # a running job may be steered too
    assert running.spec.priority == jobs_pb2.LOW
    ended = client.wait(low.id, timeout=30)
    err = refused(lambda: client.set_priority(ended.id, "high"))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION


def test_stop_is_for_kernel_jobs_and_cancels_a_pending_one(client: Client) -> None:
    process = client.submit(LONG, gpus=1)
    err = refused(lambda: client.stop(process.id))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "only kernel jobs" in err.details
    client.submit(LONG, gpus=2)  # holds both GPUs, so the kernel job below stays pending
    kernel = client.submit(kernel="vattention-decode", gpus=2, params={"steps": 3})
    stopped = client.stop(kernel.id)
    assert (stopped.state, stopped.reason) == (jobs_pb2.CANCELLED, "stopped-at-step")
    assert not stopped.HasField("started_at")  # it never ran


def test_a_running_kernel_job_stops_at_its_next_step_boundary(client: Client) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    job = client.submit(kernel="vattention-decode", gpu_fraction=0.5,
                        params={"batch": 1, "context": 600, "steps": 2000})
    wait_for(lambda: client.get(job.id).progress.steps_done >= 1, timeout=180)
    client.stop(job.id)
    final = client.wait(job.id, timeout=60)
    assert (final.state, final.reason, final.exit_code) == (jobs_pb2.CANCELLED, "stopped-at-step", 0)
    assert 1 <= final.progress.steps_done < 2000
    assert b"stopped at step" in b"".join(d for _, d in client.logs(job.id))


# -- batches ------------------------------------------------------------------------------------


def test_a_batch_is_committed_whole_in_order(client: Client) -> None:
    requests = [client.submit_request([PY, "-c", "pass"], name=f"b{i}", gpu_fraction=0.1) for i in range(300)]
    replies = client.submit_batch(requests)
    assert [r.job.name for r in replies] == [f"b{i}" for i in range(300)]
    assert len({r.job.id for r in replies}) == 300
    retried = client.submit_batch(requests)  # same idempotency keys: the same jobs, no new ones
    assert [r.job.id for r in retried] == [r.job.id for r in replies]
    assert not any(r.duplicate for r in retried)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "field"), [
    ({"group_mode": "sometimes"}, "group_options.mode"),
    ({"group_mode": "best-of:0"}, "group_options.mode"),
    ({"group_budget": -1.0}, "group_options.budget_gpu_seconds"),
    ({"group_budget": float("nan")}, "group_options.budget_gpu_seconds"),
])
def test_a_bad_group_mode_or_budget_is_refused_naming_the_field(client: Client, options: dict[str, Any],
                                                                 field: str) -> None:
    err = refused(lambda: client.submit([PY, "-c", "pass"], group="g", **options))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.details.startswith(field + ":"), err.details


def test_group_input_that_makes_no_sense_is_refused(client: Client) -> None:
    err = refused(lambda: client.submit([PY, "-c", "pass"], group_mode="first-success"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.details.startswith("group_options:")
    err = refused(lambda: client.submit([PY, "-c", "pass"], group="bad name!"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.details.startswith("group:")
    client.submit(LONG, group="fixed", group_mode="first-success", gpu_fraction=0.1)
    err = refused(lambda: client.submit(LONG, group="fixed", group_mode="all", gpu_fraction=0.1))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "exists as first-success" in err.details
    client.submit(LONG, group="fixed", gpu_fraction=0.1)  # a member that names no mode joins as it is
    for call in (lambda: client.group("nope"), lambda: client.cancel_group("nope"),
                 lambda: list(client.group_events("nope"))):
        assert refused(call).code == grpc.StatusCode.NOT_FOUND
    err = refused(lambda: client.submit([PY, "-c", "pass"], dedupe_key="x" * 200))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.details.startswith("dedupe_key:")


def test_a_batch_with_one_malformed_job_is_refused_whole_naming_its_index(client: Client) -> None:
    good = client.submit_request([PY, "-c", "pass"], name="kept-out")
    bad = client.submit_request([], name="no-command")
    err = refused(lambda: client.submit_batch([good, bad, good]))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.details.startswith("jobs[1].command:"), err.details
    assert not [j for j in client.list() if j.name == "kept-out"]
    assert refused(lambda: client.submit_batch([])).code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_batch_refused_by_the_store_keeps_none_of_it(client: Client) -> None:
    client.submit(LONG, group="closed-early", group_mode="first-success", gpu_fraction=0.1)
    client.cancel_group("closed-early")
    first = client.submit_request([PY, "-c", "pass"], name="before-the-bad-one")
    late = client.submit_request([PY, "-c", "pass"], group="closed-early")
    err = refused(lambda: client.submit_batch([first, late]))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.details.startswith("jobs[1]:")
    assert not [j for j in client.list() if j.name == "before-the-bad-one"]


# -- crashes ------------------------------------------------------------------------------------


def spec(command: tuple[str, ...] = ("true",), group: str = "g") -> JobSpec:
    return JobSpec(name="m", kind=JobKind.PROCESS, resources=Resources(), command=command, tenant="t", group=group)


def test_a_success_and_its_siblings_cancellation_are_one_commit(tmp_path: Path) -> None:
    store = Store(tmp_path)
    winner, _ = store.submit(spec(), 0, group=GroupSpec("g", GroupMode.FIRST_SUCCESS, 1))
    running, _ = store.submit(spec(), 0)
    waiting, _ = store.submit(spec(), 0)
    for job in (winner, running):
        store.update(job.id, state=JobState.RUNNING)
    store.update(winner.id, state=JobState.SUCCEEDED, exit_code=0, attained_service=2.0)
    store.close()  # as a crash right after the commit would leave it
    reopened = Store(tmp_path)
    again = reopened.get(running.id)
    assert again.state == JobState.RUNNING and again.cancel_requested and again.cancel_reason == "sibling-succeeded"
    assert (reopened.get(waiting.id).state, reopened.get(waiting.id).reason) == (JobState.CANCELLED,
                                                                                 "sibling-succeeded")
    group = reopened.group("t", "g")
    assert (group.ended_reason, group.succeeded, group.spent) == ("sibling-succeeded", 1, 2.0)
    assert not reopened.open_groups()
    reopened.close()


def test_kill_9_in_the_middle_of_a_group_loses_no_sibling_cancellation(gpuosd: DaemonProcess) -> None:
    marker = gpuosd.base / "win"
    wins_later = [PY, "-c", f"import os, time\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.05)"]
    with Client(socket=gpuosd.socket) as c:
        winner, loser, waiting = c.submit_group(
            "crash", [{"command": wins_later, "gpus": 1}, {"command": LONG, "gpus": 1}, {"command": LONG, "gpus": 1}],
            mode="first-success")
        wait_for(lambda: c.get(winner.id).state == c.get(loser.id).state == jobs_pb2.RUNNING)
    gpuosd.kill9()
    marker.touch()  # the winner succeeds while gpuosd is down
    wait_for(lambda: (gpuosd.state / "jobs" / winner.id / "exit.json").exists())
    gpuosd.start()
    with Client(socket=gpuosd.socket) as c:
        group = c.wait_group("crash", timeout=30)
        states = {m.id: (m.state, m.reason) for m in group.members}
    assert states[winner.id] == (jobs_pb2.SUCCEEDED, "")
    assert states[loser.id] == (jobs_pb2.CANCELLED, "sibling-succeeded")
    assert states[waiting.id] == (jobs_pb2.CANCELLED, "sibling-succeeded")


# -- policies see groups ------------------------------------------------------------------------


def test_the_snapshot_shows_each_open_group_with_its_members_and_spend(daemon: Any) -> None:
    with Client(socket=daemon.config.socket) as c:
        running, waiting = c.submit_group("seen", [{"command": LONG, "gpus": 2}] * 2, mode="first-success",
                                          budget=1e6)
        wait_for(lambda: c.get(running.id).state == jobs_pb2.RUNNING)
        group = daemon.controller.snapshot().groups[("root", "seen")]
        assert group.members == (running.id, waiting.id) and group.running == 1
        assert group.goal == 1 and group.budget == 1e6 and 0 <= group.spent < 1e6
        c.cancel_group("seen")
        wait_for(lambda: ("root", "seen") not in daemon.controller.snapshot().groups)


def test_speculate_starts_one_member_of_every_group_before_a_second_of_any(client: Client) -> None:
    client.set_policy("speculate")
    blockers = [client.submit(LONG, gpus=1) for _ in range(2)]
    wait_for(lambda: all(state(client, j.id) == jobs_pb2.RUNNING for j in blockers))
    first = client.submit_group("wide", [{"command": LONG, "gpus": 1}] * 3, mode="first-success")
    late = client.submit_group("late", [{"command": LONG, "gpus": 1}], mode="first-success")
    for blocker in blockers:
        client.cancel(blocker.id)
    wait_for(lambda: sum(state(client, j.id) == jobs_pb2.RUNNING for j in (*first, *late)) == 2)
    assert [state(client, j.id) for j in (*first, *late)] == [jobs_pb2.RUNNING, jobs_pb2.PENDING,
                                                               jobs_pb2.PENDING, jobs_pb2.RUNNING]


def test_a_duplicate_counts_for_its_own_group_as_the_job_it_duplicated(client: Client) -> None:
    marker_work = [PY, "-c", "import time; time.sleep(1.0)"]
    original = client.submit(marker_work, gpu_fraction=0.25, group="branch-a", group_mode="first-success",
                             dedupe_key="same-work")
    other = client.submit(LONG, gpu_fraction=0.25, group="branch-b", group_mode="first-success")
    copy = client.submit_batch([client.submit_request(marker_work, gpu_fraction=0.25, group="branch-b",
                                                      dedupe_key="same-work")])[0]
    assert copy.duplicate and copy.job.id == original.id
    assert {m.id for m in client.group("branch-b").members} == {original.id, other.id}
    b = client.wait_group("branch-b", timeout=30)  # the original's success ends both groups
    assert (b.reason, b.succeeded) == ("sibling-succeeded", 1)
    assert {m.id: m.reason for m in b.members}[other.id] == "sibling-succeeded"
    assert client.group("branch-a").reason == "sibling-succeeded"
    # branch-b paid only for its own member; the original's service is branch-a's.
    assert b.spent_gpu_seconds == pytest.approx(client.get(other.id).attained_service)
    assert client.group("branch-a").spent_gpu_seconds == pytest.approx(client.get(original.id).attained_service)
    # A duplicate of work that already succeeded ends a new group at once.
    late = client.submit_batch([client.submit_request(marker_work, gpu_fraction=0.25, group="branch-c",
                                                      group_mode="first-success", dedupe_key="same-work")])[0]
    assert late.duplicate and client.group("branch-c").reason == "sibling-succeeded"
