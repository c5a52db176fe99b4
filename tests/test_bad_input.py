"""Every malformed request gets the right status and a message naming the field."""

from __future__ import annotations

import sys

import pytest

from gpuos.client import ApiError, Client
from gpuos.v1 import common_pb2, jobs_pb2

PY = sys.executable


def refused(call) -> ApiError:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as err:
        call()
    return err.value


def raw_submit(client: Client, spec: jobs_pb2.JobSpec):  # type: ignore[no-untyped-def]
    return client._call(client._jobs.Submit, jobs_pb2.SubmitRequest(spec=spec))


def test_empty_command_is_invalid(client: Client) -> None:
    err = refused(lambda: raw_submit(client, jobs_pb2.JobSpec()))
    assert err.code.name == "INVALID_ARGUMENT" and "command" in err.details


def test_blank_program_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([" "]))
    assert err.code.name == "INVALID_ARGUMENT" and "command" in err.details


def test_zero_memory_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY], memory=0))
    assert err.code.name == "INVALID_ARGUMENT" and "memory" in err.details


def test_absurd_memory_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY], memory=1 << 60))
    assert err.code.name == "INVALID_ARGUMENT" and "memory" in err.details


def test_more_memory_than_any_gpu_is_resource_exhausted(client: Client) -> None:
    err = refused(lambda: client.submit([PY], memory="200GiB"))
    assert err.code.name == "RESOURCE_EXHAUSTED" and "80" in err.details


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_fraction_outside_zero_one_is_invalid(client: Client, fraction: float) -> None:
    err = refused(lambda: client.submit([PY], gpu_fraction=fraction))
    assert err.code.name == "INVALID_ARGUMENT" and "gpu_fraction" in err.details


def test_gpus_and_fraction_together_are_invalid(client: Client) -> None:
    spec = jobs_pb2.JobSpec(command=[PY], resources=common_pb2.Resources(gpus=1, gpu_fraction=0.5))
    err = refused(lambda: raw_submit(client, spec))
    assert err.code.name == "INVALID_ARGUMENT" and "gpu_fraction" in err.details


def test_more_gpus_than_the_machine_has_is_resource_exhausted(client: Client) -> None:
    err = refused(lambda: client.submit([PY], gpus=3))
    assert err.code.name == "RESOURCE_EXHAUSTED" and "2" in err.details


def test_unknown_mig_profile_names_the_profiles_on_offer(client: Client) -> None:
    err = refused(lambda: client.submit([PY], mig_profile="5g.50gb"))
    assert err.code.name == "INVALID_ARGUMENT" and "mig_profile" in err.details and "3g.40gb" in err.details


def test_malformed_mig_profile_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY], mig_profile="big"))
    assert err.code.name == "INVALID_ARGUMENT" and "mig_profile" in err.details


def test_unknown_gpu_type_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY], gpu_types=["B200"]))
    assert err.code.name == "INVALID_ARGUMENT" and "gpu_types" in err.details


def test_unknown_kernel_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit(kernel="no-such-kernel"))
    assert err.code.name == "INVALID_ARGUMENT" and "kernel" in err.details


def test_kernel_and_command_together_are_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY], kernel="no-such-kernel"))
    assert err.code.name == "INVALID_ARGUMENT"


def test_unknown_priority_value_is_invalid(client: Client) -> None:
    err = refused(lambda: raw_submit(client, jobs_pb2.JobSpec(command=[PY], priority=99)))  # type: ignore[arg-type]
    assert err.code.name == "INVALID_ARGUMENT" and "priority" in err.details


def test_unknown_qos_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY], qos="GOLD"))
    assert err.code.name == "INVALID_ARGUMENT" and "qos" in err.details


def test_relative_cwd_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY], cwd="relative/dir"))
    assert err.code.name == "INVALID_ARGUMENT" and "cwd" in err.details


def test_bad_env_name_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY], env={"1BAD": "x"}))
    assert err.code.name == "INVALID_ARGUMENT" and "env" in err.details


def test_nul_in_argument_is_invalid(client: Client) -> None:
    err = refused(lambda: client.submit([PY, "a\x00b"]))
    assert err.code.name == "INVALID_ARGUMENT" and "command[1]" in err.details


def test_unknown_job_is_not_found(client: Client) -> None:
    err = refused(lambda: client.get("0123456789"))
    assert err.code.name == "NOT_FOUND"


def test_malformed_job_id_is_invalid(client: Client) -> None:
    err = refused(lambda: client.get("../../etc/passwd"))
    assert err.code.name == "INVALID_ARGUMENT" and "id" in err.details


def test_logs_of_unknown_job_is_not_found(client: Client) -> None:
    err = refused(lambda: list(client.logs("abcdef0123")))
    assert err.code.name == "NOT_FOUND"


def test_watch_from_beyond_any_sequence_number_is_invalid(client: Client) -> None:
    err = refused(lambda: list(client.events(since=2**64 - 1)))
    assert err.code.name == "INVALID_ARGUMENT" and "since_seq" in err.details


def test_unknown_state_filter_is_invalid(client: Client) -> None:
    err = refused(lambda: client._call(client._jobs.List, jobs_pb2.ListJobsRequest(states=[42])))
    assert err.code.name == "INVALID_ARGUMENT" and "state" in err.details


def test_bad_input_never_creates_a_job(client: Client) -> None:
    before = len(client.list())
    for bad in ([" "], [PY, "\x00"]):
        refused(lambda bad=bad: client.submit(bad))
    assert len(client.list()) == before
