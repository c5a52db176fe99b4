"""The device-plugin servers (one per resource) and their registration with the kubelet.

Each resource gets its own gRPC server on its own socket in the kubelet's device-plugin
directory and registers itself with the kubelet (``Registration.Register`` on ``kubelet.sock``).
When the kubelet restarts it deletes every plugin socket and comes back with a new
``kubelet.sock``; the manager notices (a socket gone, or kubelet.sock replaced), starts its
servers again and registers anew.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from gpuos.client import ApiError, Client
from gpuos.deviceplugin import resources
from gpuos.deviceplugin.resources import Advertised
from gpuos.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from gpuos.errors import GpuosError

log = logging.getLogger("gpuos.deviceplugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"


def socket_name(resource: str) -> str:
    return "gpuos-" + resource.removeprefix(resources.PREFIX).replace("/", "-").replace(".", "_") + ".sock"


class Inventory:
    """What gpuosd's GPUs offer as Kubernetes resources, refreshed from gpuosd on demand."""

    def __init__(self, client: Client, replicas: int) -> None:
        self.client = client
        self.replicas = replicas
        self._lock = threading.Lock()
        self._last: dict[str, list[Advertised]] = {}

    def refresh(self) -> dict[str, list[Advertised]]:
        try:
            current = resources.advertise(list(self.client.devices().devices), self.replicas)
        except ApiError as exc:
            log.warning("cannot reach gpuosd (%s); advertising every device unhealthy", exc.details)
            with self._lock:
                current = {r: [Advertised(a.device_id, a.gpu_uuid, resources.UNHEALTHY) for a in devs]
                           for r, devs in self._last.items()}
        with self._lock:
            self._last = current
        return current

    def devices(self, resource: str) -> list[Advertised]:
        with self._lock:
            return list(self._last.get(resource, []))


class ResourcePlugin:
    """The DevicePlugin service for one resource."""

    def __init__(self, resource: str, inventory: Inventory, poll: float) -> None:
        self.resource = resource
        self.inventory = inventory
        self.poll = poll
        self.stopped = threading.Event()

    def GetDevicePluginOptions(self, request: api_pb2.Empty, context: grpc.ServicerContext) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(self, request: api_pb2.Empty, context: grpc.ServicerContext) -> Iterator[api_pb2.ListAndWatchResponse]:
        last: list[Advertised] | None = None
        while context.is_active() and not self.stopped.is_set():
            current = sorted(self.inventory.refresh().get(self.resource, []))
            if current != last:
                last = current
                yield api_pb2.ListAndWatchResponse(
                    devices=[api_pb2.Device(ID=a.device_id, health=a.health) for a in current]
                )
            self.stopped.wait(self.poll)

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        out = api_pb2.PreferredAllocationResponse()
        for container in request.container_requests:
            chosen = self._prefer(list(container.available_deviceIDs), list(container.must_include_deviceIDs),
                                  container.allocation_size, context)
            out.container_responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        return out

    def _prefer(self, available: list[str], must: list[str], size: int, context: grpc.ServicerContext) -> list[str]:
        """Devices on the GPUs the active gpuos policy scores best, keeping a container's shares together."""
        if size <= 0 or size > len(available):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"allocation_size {size} is not between 1 and the {len(available)} devices available")
        probe = resources.probe_request(self.resource, self.inventory.replicas, size)
        gpus = sorted({resources.gpu_of(d) for d in available})
        try:
            ranked = self.inventory.client.rank(probe, gpus)
        except ApiError:
            ranked = gpus  # gpuosd unreachable: any valid answer beats none
        order = {g: i for i, g in enumerate(ranked)}
        by_gpu: dict[str, list[str]] = {}
        for device in available:
            by_gpu.setdefault(resources.gpu_of(device), []).append(device)
        chosen = list(must)
        wanted_gpus = sorted(by_gpu, key=lambda g: (g not in {resources.gpu_of(m) for m in must}, order.get(g, len(order))))
        for gpu in wanted_gpus:
            for device in sorted(by_gpu[gpu]):
                if len(chosen) >= size:
                    break
                if device not in chosen:
                    chosen.append(device)
        return chosen[:size]

    def Allocate(self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext) -> api_pb2.AllocateResponse:
        out = api_pb2.AllocateResponse()
        advertised = self.inventory.devices(self.resource) or self.inventory.refresh().get(self.resource, [])
        for container in request.container_requests:
            ids = list(container.devices_ids)
            try:
                gpus, wanted = resources.request_for(self.resource, ids, advertised, self.inventory.replicas)
                reservation = self.inventory.client.reserve(f"k8s:{self.resource}", gpus, wanted, keys=ids)
            except GpuosError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except ApiError as exc:
                context.abort(exc.code, f"gpuosd refused {self.resource} {ids}: {exc.details}")
            response = api_pb2.ContainerAllocateResponse(envs=dict(reservation.env))
            for mount in reservation.mounts:
                response.mounts.append(api_pb2.Mount(container_path=mount.container_path, host_path=mount.host_path,
                                                     read_only=mount.read_only))
            out.container_responses.append(response)
        return out

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


class Manager:
    """Runs one plugin server per resource and keeps each registered with the kubelet."""

    def __init__(self, plugin_dir: str, inventory: Inventory, poll: float = 1.0) -> None:
        self.plugin_dir = plugin_dir
        self.inventory = inventory
        self.poll = poll
        self._servers: dict[str, tuple[grpc.Server, ResourcePlugin]] = {}
        self._kubelet_id: tuple[int, int] | None = None
        self._stop = threading.Event()

    @property
    def kubelet_socket(self) -> str:
        return os.path.join(self.plugin_dir, KUBELET_SOCKET)

    def _kubelet_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.kubelet_socket)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_ctime_ns

    def _start(self, resource: str) -> None:
        path = os.path.join(self.plugin_dir, socket_name(resource))
        if os.path.exists(path):
            os.unlink(path)
        plugin = ResourcePlugin(resource, self.inventory, self.poll)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="gpuos-dp"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(plugin, server)  # type: ignore[arg-type]
        server.add_insecure_port(f"unix:{path}")
        server.start()
        self._servers[resource] = (server, plugin)

    def _stop_servers(self) -> None:
        for server, plugin in self._servers.values():
            plugin.stopped.set()
            server.stop(0)
        self._servers.clear()

    def _register(self, resource: str) -> None:
        with grpc.insecure_channel(f"unix:{self.kubelet_socket}") as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(
                    version=API_VERSION,
                    endpoint=socket_name(resource),
                    resource_name=resource,
                    options=api_pb2.DevicePluginOptions(get_preferred_allocation_available=True),
                ),
                timeout=10,
            )
        log.info("registered %s with the kubelet", resource)

    def sync(self) -> bool:
        """Start and register servers if the kubelet (re)appeared or a socket vanished; True if it did."""
        kubelet = self._kubelet_identity()
        if kubelet is None:
            if self._servers:
                log.info("kubelet.sock is gone; waiting for the kubelet to come back")
                self._stop_servers()
                self._kubelet_id = None
            return False
        sockets_gone = any(not os.path.exists(os.path.join(self.plugin_dir, socket_name(r))) for r in self._servers)
        if kubelet == self._kubelet_id and not sockets_gone and self._servers:
            return False
        self._stop_servers()
        for resource in sorted(self.inventory.refresh()):
            self._start(resource)
        try:
            for resource in self._servers:
                self._register(resource)
        except grpc.RpcError as exc:
            log.warning("registration failed (%s); will retry", exc.details())  # type: ignore[attr-defined]
            self._stop_servers()
            return False
        self._kubelet_id = kubelet
        return True

    def run(self, until: Callable[[], bool] | None = None) -> None:
        while not self._stop.is_set() and not (until and until()):
            self.sync()
            self._stop.wait(self.poll)
        self._stop_servers()

    def stop(self) -> None:
        self._stop.set()

    @property
    def resources(self) -> list[str]:
        return sorted(self._servers)


def wait_registered(manager: Manager, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not manager.resources:
        time.sleep(0.05)
