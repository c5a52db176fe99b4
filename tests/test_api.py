"""The job API end to end over the daemon's real Unix socket."""

from __future__ import annotations

import sys

import pytest

from gpuos.client import ApiError, Client
from gpuos.v1 import jobs_pb2
from tests.conftest import wait_for

PY = sys.executable


def test_submit_acknowledges_a_pending_or_running_job(client: Client) -> None:
    job = client.submit([PY, "-c", "print('hi')"], name="hello")
    assert job.id and job.name == "hello"
    assert job.state in (jobs_pb2.PENDING, jobs_pb2.RUNNING)


def test_a_successful_job_ends_succeeded_with_exit_code_zero(client: Client) -> None:
    job = client.wait(client.submit([PY, "-c", "print('hi')"]).id, timeout=30)
    assert job.state == jobs_pb2.SUCCEEDED
    assert job.exit_code == 0
    assert job.HasField("started_at") and job.HasField("finished_at")


def test_a_failing_job_keeps_its_exit_code(client: Client) -> None:
    job = client.wait(client.submit([PY, "-c", "raise SystemExit(7)"]).id, timeout=30)
    assert job.state == jobs_pb2.FAILED
    assert job.exit_code == 7
    assert job.reason == "exit-nonzero"


def test_an_unknown_program_fails_with_a_clear_message(client: Client) -> None:
    job = client.wait(client.submit(["/nonexistent/program"]).id, timeout=30)
    assert job.state == jobs_pb2.FAILED
    assert job.reason == "spawn-failed"
    assert "nonexistent" in job.message


def test_logs_return_stdout_and_stderr_separately(client: Client) -> None:
    job = client.submit([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    client.wait(job.id, timeout=30)
    chunks: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for stream, data in client.logs(job.id):
        chunks[stream] += data
    assert chunks == {"stdout": b"out\n", "stderr": b"err\n"}


def test_logs_follow_streams_until_the_job_ends(client: Client) -> None:
    job = client.submit([PY, "-u", "-c", "import time\nfor i in range(3):\n    print(i); time.sleep(0.2)"])
    out = b"".join(data for stream, data in client.logs(job.id, follow=True) if stream == "stdout")
    assert out == b"0\n1\n2\n"


def test_whole_gpu_jobs_see_only_their_gpu(client: Client) -> None:
    job = client.submit([PY, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"], gpus=1)
    job = client.wait(job.id, timeout=30)
    out = b"".join(d for s, d in client.logs(job.id) if s == "stdout").decode().strip()
    assert out == job.placement.device_uuids[0]
    assert job.placement.partition == "exclusive"


def test_a_third_whole_gpu_job_waits_for_a_free_gpu(client: Client) -> None:
    sleeper = [PY, "-c", "import time; time.sleep(60)"]
    first, second = client.submit(sleeper, gpus=1), client.submit(sleeper, gpus=1)
    wait_for(lambda: all(client.get(j.id).state == jobs_pb2.RUNNING for j in (first, second)))
    third = client.submit(sleeper, gpus=1)
    assert client.get(third.id).state == jobs_pb2.PENDING
    client.cancel(first.id)
    wait_for(lambda: client.get(third.id).state == jobs_pb2.RUNNING)
    for j in (second, third):
        client.cancel(j.id)


def test_fractional_jobs_share_one_gpu(client: Client) -> None:
    sleeper = [PY, "-c", "import time; time.sleep(60)"]
    jobs = [client.submit(sleeper, gpu_fraction=0.25, memory="10GiB") for _ in range(3)]
    wait_for(lambda: all(client.get(j.id).state == jobs_pb2.RUNNING for j in jobs))
    devices = {tuple(client.get(j.id).placement.devices) for j in jobs}
    assert len(devices) == 1
    granted = client.get(jobs[0].id).placement.granted
    assert granted.gpu_fraction == 0.25 and granted.memory_bytes == 10 * 1024**3
    for j in jobs:
        client.cancel(j.id)


def test_cancel_pending_job_is_immediate(client: Client) -> None:
    big = client.submit([PY, "-c", "import time; time.sleep(60)"], gpus=2)
    wait_for(lambda: client.get(big.id).state == jobs_pb2.RUNNING)
    queued = client.submit([PY, "-c", "print(1)"], gpus=1)
    job = client.cancel(queued.id)
    assert job.state == jobs_pb2.CANCELLED
    assert job.reason == "cancelled-by-user"
    client.cancel(big.id)


def test_cancel_running_job_stops_its_process_group(client: Client) -> None:
    job = client.submit([PY, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"])
    wait_for(lambda: client.get(job.id).state == jobs_pb2.RUNNING)
    final = client.cancel(job.id)
    assert final.state == jobs_pb2.CANCELLED


def test_cancel_of_a_finished_job_is_refused(client: Client) -> None:
    job = client.wait(client.submit([PY, "-c", "pass"]).id, timeout=30)
    with pytest.raises(ApiError) as err:
        client.cancel(job.id)
    assert err.value.code.name == "FAILED_PRECONDITION"


def test_get_accepts_a_unique_prefix(client: Client) -> None:
    job = client.submit([PY, "-c", "pass"])
    assert client.get(job.id[:6]).id == job.id


def test_list_filters_by_state(client: Client) -> None:
    done = client.wait(client.submit([PY, "-c", "pass"]).id, timeout=30)
    assert done.id in {j.id for j in client.list(states=["succeeded"])}
    assert done.id not in {j.id for j in client.list(states=["pending", "running"])}


def test_events_record_the_lifecycle_in_order(client: Client) -> None:
    job = client.wait(client.submit([PY, "-c", "pass"]).id, timeout=30)
    kinds = [e.kind for e in client.events(job_id=job.id)]
    assert kinds == ["submitted", "started", "succeeded"]


def test_events_follow_delivers_new_events(client: Client) -> None:
    start = max((e.seq for e in client.events()), default=0)
    job = client.submit([PY, "-c", "pass"])
    seen = []
    for event in client.events(follow=True, since=start):
        seen.append((event.job_id, event.kind))
        if event.kind == "succeeded":
            break
    assert seen[0] == (job.id, "submitted") and seen[-1] == (job.id, "succeeded")


def test_resubmit_with_same_idempotency_key_returns_the_same_job(client: Client) -> None:
    a = client.submit([PY, "-c", "pass"], idempotency_key="key-1")
    b = client.submit([PY, "-c", "pass"], idempotency_key="key-1")
    assert a.id == b.id


def test_devices_show_models_memory_and_holders(client: Client) -> None:
    job = client.submit([PY, "-c", "import time; time.sleep(60)"], gpu_fraction=0.5)
    wait_for(lambda: client.get(job.id).state == jobs_pb2.RUNNING)
    reply = client.devices()
    assert reply.backend == "sim"
    assert [d.model for d in reply.devices] == ["H100-80GB", "H100-80GB"]
    holders = [a for d in reply.devices for a in d.allocations]
    assert [(a.job_id, a.compute_milli) for a in holders] == [(job.id, 500)]
    client.cancel(job.id)


def test_policy_list_shows_the_active_one_and_set_swaps_it(client: Client) -> None:
    names = {p.name: p.active for p in client.policies()}
    assert names["fifo"] is True
    assert client.set_policy("fifo").active


def test_policy_list_says_where_each_policy_came_from_and_its_verified_gain(client: Client) -> None:
    infos = {p.name: p for p in client.policies()}
    assert "SymbioticLab/Tiresias" in infos["tiresias"].provenance
    assert infos["fifo"].provenance == "hand-written"
    assert infos["fifo"].verified_gain == ""
    evolved = [p for p in infos.values() if p.name.startswith("evolved-")]
    assert all(p.verified_gain for p in evolved)


def test_unknown_policy_is_invalid_argument(client: Client) -> None:
    with pytest.raises(ApiError) as err:
        client.set_policy("no-such-policy")
    assert err.value.code.name == "INVALID_ARGUMENT"
    assert "no-such-policy" in err.value.details


def test_health_and_reflection_are_served(daemon) -> None:  # type: ignore[no-untyped-def]
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"unix:{daemon.config.socket}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="gpuos.v1.JobService"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"gpuos.v1.JobService", "gpuos.v1.DeviceService", "gpuos.v1.PolicyService",
            "grpc.health.v1.Health"} <= names
