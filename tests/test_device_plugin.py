"""The Kubernetes device plugin against a fake kubelet that speaks the real v1beta1 protobuf API
over the same Unix sockets, with gpuosd on the simulated backend behind it."""

from __future__ import annotations

import glob
import os
import queue
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.deviceplugin.plugin import Inventory, Manager
from gpuos.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from gpuos.v1 import jobs_pb2
from tests.conftest import wait_for

PY = sys.executable


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    """The kubelet's side: Registration on kubelet.sock, and a client of each plugin."""

    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.registrations: queue.Queue[api_pb2.RegisterRequest] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{plugin_dir / 'kubelet.sock'}")
        self.server.start()

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        self.registrations.put(request)
        return api_pb2.Empty()

    def registered(self, count: int) -> dict[str, api_pb2.RegisterRequest]:
        out = {}
        while len(out) < count:
            request = self.registrations.get(timeout=15)
            out[request.resource_name] = request
        return out

    def plugin(self, endpoint: str) -> api_pb2_grpc.DevicePluginStub:
        return api_pb2_grpc.DevicePluginStub(grpc.insecure_channel(f"unix:{self.plugin_dir / endpoint}"))

    def restart_away(self) -> None:
        """What a kubelet restart does: it goes, and the plugin sockets go with it."""
        self.server.stop(0).wait()
        for path in glob.glob(str(self.plugin_dir / "*.sock")):
            os.unlink(path)


RESOURCES = ["gpuos.io/gpu", "gpuos.io/gpu-shared", "gpuos.io/mig-1g.10gb", "gpuos.io/mig-1g.20gb",
             "gpuos.io/mig-2g.20gb", "gpuos.io/mig-3g.40gb", "gpuos.io/mig-4g.40gb", "gpuos.io/mig-7g.80gb"]


@pytest.fixture
def cluster(daemon: Daemon, short_dir: Path) -> Iterator[tuple[Daemon, FakeKubelet, Manager]]:
    plugin_dir = short_dir / "dp"
    plugin_dir.mkdir()
    kubelet = FakeKubelet(plugin_dir)
    manager = Manager(str(plugin_dir), Inventory(Client(socket=daemon.config.socket), replicas=4), poll=0.1)
    thread = threading.Thread(target=manager.run, daemon=True)
    thread.start()
    yield daemon, kubelet, manager
    manager.stop()
    thread.join(5)
    kubelet.server.stop(0)


def test_each_resource_registers_with_the_kubelet(cluster) -> None:  # type: ignore[no-untyped-def]
    _, kubelet, _ = cluster
    registered = kubelet.registered(len(RESOURCES))
    assert sorted(registered) == sorted(RESOURCES)
    for request in registered.values():
        assert request.version == "v1beta1" and request.options.get_preferred_allocation_available
        assert os.path.exists(kubelet.plugin_dir / request.endpoint)


def first_list(kubelet: FakeKubelet, endpoint: str):  # type: ignore[no-untyped-def]
    stream = kubelet.plugin(endpoint).ListAndWatch(api_pb2.Empty(), timeout=20)
    return stream, next(stream)


def test_list_and_watch_follows_gpu_health(cluster) -> None:  # type: ignore[no-untyped-def]
    daemon, kubelet, _ = cluster
    endpoint = kubelet.registered(len(RESOURCES))["gpuos.io/gpu"].endpoint
    stream, first = first_list(kubelet, endpoint)
    uuids = [d.uuid for d in daemon.controller.devices]
    assert {(d.ID, d.health) for d in first.devices} == {(u, "Healthy") for u in uuids}
    with Client(socket=daemon.config.socket) as c:
        c.inject_fault(0, "gpu-fail")
        update = next(stream)
        assert {d.ID: d.health for d in update.devices} == {uuids[0]: "Unhealthy", uuids[1]: "Healthy"}
        c.inject_fault(0, "gpu-restore")
        assert {d.health for d in next(stream).devices} == {"Healthy"}
    stream.cancel()


def allocate(kubelet: FakeKubelet, endpoint: str, ids: list[str]) -> api_pb2.ContainerAllocateResponse:
    request = api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
    return kubelet.plugin(endpoint).Allocate(request, timeout=20).container_responses[0]


def test_allocating_a_whole_gpu_reserves_it_in_gpuosd(cluster) -> None:  # type: ignore[no-untyped-def]
    daemon, kubelet, _ = cluster
    endpoint = kubelet.registered(len(RESOURCES))["gpuos.io/gpu"].endpoint
    uuid = daemon.controller.devices[1].uuid
    response = allocate(kubelet, endpoint, [uuid])
    assert response.envs["CUDA_VISIBLE_DEVICES"] == uuid == response.envs["NVIDIA_VISIBLE_DEVICES"]
    with Client(socket=daemon.config.socket) as c:
        job = c.get(response.envs["GPUOS_JOB_ID"])
        assert job.state == jobs_pb2.RUNNING and job.spec.kind == jobs_pb2.EXTERNAL
        assert list(job.placement.devices) == [1]
        # gpuos's own jobs now see GPU 1 taken.
        mine = c.submit([PY, "-c", "import time; time.sleep(30)"], gpus=2)
        assert c.get(mine.id).state == jobs_pb2.PENDING
        c.cancel(mine.id)


def test_shared_devices_become_an_mps_share_with_the_pipe_mounted(cluster) -> None:  # type: ignore[no-untyped-def]
    daemon, kubelet, _ = cluster
    endpoint = kubelet.registered(len(RESOURCES))["gpuos.io/gpu-shared"].endpoint
    uuid = daemon.controller.devices[0].uuid
    response = allocate(kubelet, endpoint, [f"{uuid}::shared-0", f"{uuid}::shared-1"])
    assert response.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert response.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=40960M"
    pipe = response.envs["CUDA_MPS_PIPE_DIRECTORY"]
    assert [(m.host_path, m.container_path) for m in response.mounts] == [(pipe, pipe)]


def test_a_mig_device_becomes_a_mig_slice(cluster) -> None:  # type: ignore[no-untyped-def]
    daemon, kubelet, _ = cluster
    endpoint = kubelet.registered(len(RESOURCES))["gpuos.io/mig-3g.40gb"].endpoint
    uuid = daemon.controller.devices[0].uuid
    response = allocate(kubelet, endpoint, [f"{uuid}::mig-3g.40gb-0"])
    assert response.envs["CUDA_VISIBLE_DEVICES"].startswith("MIG-")
    assert [m.profile for m in daemon.backend.mig_instances(0)] == ["3g.40gb"]


def test_a_device_handed_out_again_releases_its_previous_holder(cluster) -> None:  # type: ignore[no-untyped-def]
    daemon, kubelet, _ = cluster
    endpoint = kubelet.registered(len(RESOURCES))["gpuos.io/gpu"].endpoint
    uuid = daemon.controller.devices[0].uuid
    first = allocate(kubelet, endpoint, [uuid]).envs["GPUOS_JOB_ID"]
    second = allocate(kubelet, endpoint, [uuid]).envs["GPUOS_JOB_ID"]
    with Client(socket=daemon.config.socket) as c:
        old = c.get(first)
        assert old.state == jobs_pb2.SUCCEEDED and old.reason == "released"
        assert c.get(second).state == jobs_pb2.RUNNING


def test_bad_allocations_get_clear_errors(cluster) -> None:  # type: ignore[no-untyped-def]
    daemon, kubelet, _ = cluster
    registered = kubelet.registered(len(RESOURCES))
    uuid = daemon.controller.devices[0].uuid
    with pytest.raises(grpc.RpcError) as err:
        allocate(kubelet, registered["gpuos.io/gpu"].endpoint, ["GPU-no-such-device"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "GPU-no-such-device" in err.value.details()
    shares = [f"{uuid}::shared-{k}" for k in range(5)]
    with pytest.raises(grpc.RpcError) as err:
        allocate(kubelet, registered["gpuos.io/gpu-shared"].endpoint, shares)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shared-4" in err.value.details()
    with Client(socket=daemon.config.socket) as c:
        busy = c.submit([PY, "-c", "import time; time.sleep(30)"], gpus=2)
        wait_for(lambda: c.get(busy.id).state == jobs_pb2.RUNNING)
        with pytest.raises(grpc.RpcError) as err:
            allocate(kubelet, registered["gpuos.io/gpu"].endpoint, [uuid])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and busy.id in err.value.details()
        c.cancel(busy.id)


def test_preferred_allocation_keeps_a_containers_shares_on_one_gpu(cluster) -> None:  # type: ignore[no-untyped-def]
    daemon, kubelet, _ = cluster
    endpoint = kubelet.registered(len(RESOURCES))["gpuos.io/gpu-shared"].endpoint
    a, b = (d.uuid for d in daemon.controller.devices)
    available = [f"{a}::shared-0", f"{b}::shared-0", f"{b}::shared-1", f"{a}::shared-1"]
    request = api_pb2.PreferredAllocationRequest(container_requests=[api_pb2.ContainerPreferredAllocationRequest(
        available_deviceIDs=available, must_include_deviceIDs=[f"{b}::shared-1"], allocation_size=2)])
    chosen = kubelet.plugin(endpoint).GetPreferredAllocation(request, timeout=20).container_responses[0].deviceIDs
    assert sorted(chosen) == [f"{b}::shared-0", f"{b}::shared-1"]


def test_the_plugin_registers_again_when_the_kubelet_restarts(cluster) -> None:  # type: ignore[no-untyped-def]
    _, kubelet, manager = cluster
    kubelet.registered(len(RESOURCES))
    kubelet.restart_away()
    wait_for(lambda: not manager.resources)
    again = FakeKubelet(kubelet.plugin_dir)
    try:
        registered = again.registered(len(RESOURCES))
        assert sorted(registered) == sorted(RESOURCES)
        endpoint = registered["gpuos.io/gpu"].endpoint
        options = again.plugin(endpoint).GetDevicePluginOptions(api_pb2.Empty(), timeout=10)
        assert options.get_preferred_allocation_available
    finally:
        again.server.stop(0)


@pytest.mark.parametrize(("policy", "expected_gpu"), [("binpack", 0), ("spread", 1)])
def test_preferred_allocation_follows_the_active_policys_score(cluster, policy: str, expected_gpu: int) -> None:  # type: ignore[no-untyped-def]
    daemon, kubelet, _ = cluster
    endpoint = kubelet.registered(len(RESOURCES))["gpuos.io/gpu-shared"].endpoint
    a, b = (d.uuid for d in daemon.controller.devices)
    with Client(socket=daemon.config.socket) as c:
        c.set_policy(policy)
        busy = c.submit([PY, "-c", "import time; time.sleep(30)"], gpu_fraction=0.25)
        wait_for(lambda: c.get(busy.id).state == jobs_pb2.RUNNING)
        assert list(c.get(busy.id).placement.devices) == [0]
        request = api_pb2.PreferredAllocationRequest(container_requests=[api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=[f"{a}::shared-3", f"{b}::shared-3"], allocation_size=1)])
        chosen = kubelet.plugin(endpoint).GetPreferredAllocation(request, timeout=20)
        assert list(chosen.container_responses[0].deviceIDs) == [f"{(a, b)[expected_gpu]}::shared-3"]
        c.cancel(busy.id)
