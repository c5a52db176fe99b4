"""Random and malformed requests at every RPC: each gets a proper status, and the daemon keeps serving."""

from __future__ import annotations

import grpc
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuos.api.server import SERVICES
from gpuos.v1 import common_pb2, devices_pb2, jobs_pb2, policy_pb2

# The codes a well-behaved API answers bad input with; never UNKNOWN or INTERNAL.
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
METHODS = [(s, m) for s in SERVICES for m in s.methods]
# Real job submissions must not run anything: the program name can never exist.
NO_SUCH_PROGRAM = "/nonexistent/gpuos-fuzz-"

texts = st.text(max_size=40)
floats = st.floats(allow_nan=True, allow_infinity=True)
resources = st.builds(
    common_pb2.Resources,
    gpus=st.none() | st.integers(0, 2**32 - 1),
    gpu_fraction=st.none() | floats,
    memory_bytes=st.none() | st.integers(0, 2**64 - 1),
    mig_profile=st.sampled_from(["", "1g.10gb", "3g.40gb", "7g.80gb", "9g.9gb", "x"]) | texts,
    gpu_types=st.lists(texts | st.just("H100-80GB"), max_size=3),
)
specs = st.builds(
    jobs_pb2.JobSpec,
    name=texts,
    kind=st.integers(0, 5),
    command=st.lists(texts, max_size=4).map(lambda c: [NO_SUCH_PROGRAM + c[0], *c[1:]] if c else []),
    kernel=st.sampled_from(["", "vattention-decode", "sla-dit", "radial-dit"]) | texts,
    params=st.dictionaries(texts, texts, max_size=3),
    resources=resources,
    priority=st.integers(0, 5),
    tenant=texts,
    qos=st.sampled_from(["", "LS", "BE"]) | texts,
    env=st.dictionaries(texts, texts, max_size=3),
    cwd=texts,
    estimated_seconds=floats,
)
job_ids = st.text(alphabet="0123456789abcdef", max_size=12) | texts
REQUESTS = {
    "gpuos.v1.JobService.Submit": st.builds(jobs_pb2.SubmitRequest, spec=specs, idempotency_key=texts),
    "gpuos.v1.JobService.Get": st.builds(jobs_pb2.GetJobRequest, id=job_ids),
    "gpuos.v1.JobService.List": st.builds(jobs_pb2.ListJobsRequest, states=st.lists(st.integers(0, 9), max_size=3),
                                          tenant=texts, limit=st.integers(0, 2**32 - 1)),
    "gpuos.v1.JobService.Cancel": st.builds(jobs_pb2.CancelJobRequest, id=job_ids),
    "gpuos.v1.JobService.Watch": st.builds(jobs_pb2.WatchRequest, job_id=job_ids, since_seq=st.integers(0, 2**64 - 1)),
    "gpuos.v1.JobService.Logs": st.builds(jobs_pb2.LogsRequest, job_id=job_ids),
    "gpuos.v1.PolicyService.Set": st.builds(policy_pb2.SetPolicyRequest, name=st.sampled_from(["fifo", "spread"]) | texts),
    "gpuos.v1.DeviceService.InjectFault": st.builds(
        devices_pb2.InjectFaultRequest, index=st.integers(0, 2**32 - 1), kind=st.integers(0, 5)
    ),
}


def call(channel: grpc.Channel, service, method, payload: bytes) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path)(payload, timeout=5):
                pass
        else:
            channel.unary_unary(path)(payload, timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]


def still_serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_structured_random_requests_get_proper_statuses(daemon) -> None:  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(f"unix:{daemon.config.socket}")
    seen: list[grpc.StatusCode] = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(METHODS), st.data())
    def check(method_pair, data) -> None:  # type: ignore[no-untyped-def]
        service, method = method_pair
        key = f"{service.full_name}.{method.name}"
        strategy = REQUESTS.get(key, st.just(GetMessageClass(method.input_type)()))
        message = data.draw(strategy)
        code = call(channel, service, method, message.SerializeToString())
        seen.append(code)
        assert code in ACCEPTABLE, f"{key} answered {code} to {message}"

    check()
    channel_ok = still_serving(channel)
    channel.close()
    assert channel_ok
    # Many requests were really sent, and they reached past validation into real work too.
    assert len(seen) >= 200, len(seen)
    assert grpc.StatusCode.OK in seen and grpc.StatusCode.INVALID_ARGUMENT in seen


def test_malformed_bytes_are_invalid_argument(daemon) -> None:  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(f"unix:{daemon.config.socket}")

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(METHODS), st.binary(min_size=1, max_size=64))
    def check(method_pair, payload: bytes) -> None:  # type: ignore[no-untyped-def]
        service, method = method_pair
        code = call(channel, service, method, payload)
        assert code in ACCEPTABLE, f"{service.full_name}.{method.name} answered {code} to {payload!r}"

    check()
    assert call(channel, *METHODS[0], b"\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT
    assert still_serving(channel)
    channel.close()
