"""DeviceService.Release and ListReservations: what the device plugin and the DRA driver use to
end reservations of containers that no longer exist, and to see what is held."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gpuos.client import ApiError, Client
from gpuos.daemon.daemon import Daemon
from gpuos.v1 import common_pb2, jobs_pb2
from tests.conftest import serve


def test_release_ends_the_reservations_holding_any_key_and_counts_them(daemon: Daemon, client: Client) -> None:
    a, b = (d.uuid for d in daemon.controller.devices)
    first = client.reserve("k8s:gpuos.io/gpu", [a], common_pb2.Resources(gpus=1), keys=[a])
    second = client.reserve("k8s:gpuos.io/gpu-shared", [b], common_pb2.Resources(gpu_fraction=0.5),
                            keys=[f"{b}::shared-0", f"{b}::shared-1"])
    assert client.release([a, f"{b}::shared-1", "never-held"]) == 2
    for reservation in (first, second):
        job = client.get(reservation.job_id)
        assert job.state == jobs_pb2.SUCCEEDED and job.reason == "released"
    assert client.reservations() == []


def test_release_is_idempotent_and_unknown_keys_are_no_error(daemon: Daemon, client: Client) -> None:
    uuid = daemon.controller.devices[0].uuid
    client.reserve("k8s:gpuos.io/gpu", [uuid], common_pb2.Resources(gpus=1), keys=[uuid])
    assert client.release([uuid]) == 1
    assert client.release([uuid]) == 0
    assert client.release([]) == 0


def test_a_released_gpu_is_free_for_gpuos_jobs_again(daemon: Daemon, client: Client) -> None:
    uuids = [d.uuid for d in daemon.controller.devices]
    client.reserve("k8s:gpuos.io/gpu", uuids, common_pb2.Resources(gpus=2), keys=uuids)
    mine = client.submit(["true"], gpus=2)
    assert client.get(mine.id).state == jobs_pb2.PENDING
    client.release(uuids[:1])
    assert client.wait(mine.id, timeout=15).state == jobs_pb2.SUCCEEDED


def test_list_reservations_shows_each_hold_filtered_by_name_prefix(daemon: Daemon, client: Client) -> None:
    a, b = (d.uuid for d in daemon.controller.devices)
    whole = client.reserve("k8s:gpuos.io/gpu", [a], common_pb2.Resources(gpus=1), keys=[a])
    share = client.reserve("dra:claim-1", [b], common_pb2.Resources(gpu_fraction=0.25), keys=["claim-1"])
    held = client.reservations()
    assert [r.job_id for r in held] == [whole.job_id, share.job_id]
    (k8s,) = client.reservations("k8s:")
    assert (k8s.name, list(k8s.keys), list(k8s.gpu_uuids), k8s.resources.gpus) == ("k8s:gpuos.io/gpu", [a], [a], 1)
    (dra,) = client.reservations("dra:")
    assert list(dra.gpu_uuids) == [b] and dra.resources.gpu_fraction == pytest.approx(0.25)
    assert client.reservations("nothing-named-so") == []


def test_reservations_and_their_release_survive_a_gpuosd_restart(short_dir: Path) -> None:
    for daemon in serve(short_dir):
        uuids = [d.uuid for d in daemon.controller.devices]
        with Client(socket=daemon.config.socket) as c:
            kept = c.reserve("k8s:gpuos.io/gpu", [uuids[0]], common_pb2.Resources(gpus=1), keys=[uuids[0]])
            gone = c.reserve("k8s:gpuos.io/gpu", [uuids[1]], common_pb2.Resources(gpus=1), keys=[uuids[1]])
            assert c.release([uuids[1]]) == 1
    for daemon in serve(short_dir):
        with Client(socket=daemon.config.socket) as c:
            assert [r.job_id for r in c.reservations("k8s:")] == [kept.job_id]
            assert c.get(gone.job_id).reason == "released"
            assert c.release([uuids[0]]) == 1
    for daemon in serve(short_dir):
        with Client(socket=daemon.config.socket) as c:
            assert c.reservations() == []


def test_release_rejects_empty_keys_and_a_bare_string(client: Client) -> None:
    with pytest.raises(ApiError) as err:
        client.release([""])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "keys" in err.value.details
    with pytest.raises(ValueError, match="keys"):
        client.release("GPU-1234")


def ceiling(control_log: Path) -> tuple[str, str]:
    """The thread percentage and pinned memory limit last set as the MPS control daemon's defaults."""
    lines = control_log.read_text().splitlines()
    percent = [line.rsplit(" ", 1)[1] for line in lines if "set_default_active_thread_percentage " in line]
    memory = [line.rsplit(" ", 1)[1] for line in lines if "set_default_device_pinned_mem_limit " in line]
    return percent[-1], memory[-1]


def test_an_mps_reservations_limits_are_set_on_the_control_daemon_following_the_largest_share(
        daemon: Daemon, client: Client) -> None:
    uuid = daemon.controller.devices[0].uuid
    quarter = client.reserve("k8s:gpuos.io/gpu-shared", [uuid], common_pb2.Resources(gpu_fraction=0.25), keys=["s0"])
    control_log = Path(quarter.env["CUDA_MPS_LOG_DIRECTORY"]) / "control.log"
    assert ceiling(control_log) == ("25", "20480M")
    # A larger share on the same GPU raises the ceiling: no client is held below its own share.
    client.reserve("k8s:gpuos.io/gpu-shared", [uuid], common_pb2.Resources(gpu_fraction=0.5), keys=["s1"])
    assert ceiling(control_log) == ("50", "40960M")
    # When it ends the ceiling comes down to the largest share left.
    assert client.release(["s1"]) == 1
    assert ceiling(control_log) == ("25", "20480M")
    # Limits round down, the client's and the daemon's alike: 25.5% and 20889.6 MiB are 25 and 20889.
    odd = client.reserve("k8s:gpuos.io/gpu-shared", [uuid], common_pb2.Resources(gpu_fraction=0.255), keys=["s2"])
    assert (odd.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], odd.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]) == ("25", "0=20889M")
    assert ceiling(control_log) == ("25", "20889M")
