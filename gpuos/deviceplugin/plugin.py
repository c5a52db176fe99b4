"""The device-plugin servers (one per resource) and their registration with the kubelet.

Each resource gets its own gRPC server on its own socket in the kubelet's device-plugin
directory and registers itself with the kubelet (``Registration.Register`` on ``kubelet.sock``).
Each registers on its own: one the kubelet refuses is retried, with backoff, while the others
serve. When the kubelet restarts it deletes every plugin socket and comes back with a new
``kubelet.sock``; the manager notices (a socket gone, or kubelet.sock replaced), starts its
servers again and registers anew.

One poller refreshes the inventory from gpuosd every ``poll`` seconds (and at once after an
allocation), and every ``ListAndWatch`` stream sends the kubelet its resource's devices whenever
they change: a GPU that another resource (or gpuosd's own work) takes shows its other devices
Unhealthy within one poll. A reconciler (:mod:`gpuos.deviceplugin.reconcile`) releases the
reservations of containers the kubelet no longer has and sweeps the CDI spec files
(:mod:`gpuos.deviceplugin.specs`) of reservations that ended.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc

from gpuos import cdi
from gpuos.client import ApiError, Client
from gpuos.deviceplugin import resources
from gpuos.deviceplugin.reconcile import RESERVATION_PREFIX, Reconciler
from gpuos.deviceplugin.resources import Advertised
from gpuos.deviceplugin.specs import SpecFiles
from gpuos.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from gpuos.errors import GpuosError
from gpuos.v1 import devices_pb2

log = logging.getLogger("gpuos.deviceplugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
REGISTER_TIMEOUT = 5.0
# A refused registration is retried after 0.5 s, then twice as long each time, at most 30 s.
BACKOFF_FIRST, BACKOFF_MOST = 0.5, 30.0


def socket_name(resource: str) -> str:
    return "gpuos-" + resource.removeprefix(resources.PREFIX).replace("/", "-").replace(".", "_") + ".sock"


def backoff(failures: int) -> float:
    """Seconds to wait before the next registration after ``failures`` refusals in a row."""
    return float(min(BACKOFF_MOST, BACKOFF_FIRST * 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class Options:
    """How the plugin's servers answer, beyond what gpuosd says.

    ``cdi_dir``: where CDI spec files for allocated devices go ("" for none). ``dev_root``: where
    the host's /dev is visible to the plugin, to see which device nodes exist. ``mig_minors``: the
    driver's table of MIG capability minors, to give a MIG slice its capability device nodes.
    """

    poll: float = 0.5
    cdi_dir: str = cdi.DEFAULT_DIR
    dev_root: str = "/dev"
    mig_minors: str = cdi.MIG_MINORS


class Inventory:
    """What gpuosd's GPUs offer as Kubernetes resources, refreshed from gpuosd on demand.

    Each refresh that changes anything bumps a version; ``watch`` waits for the next one.
    """

    def __init__(self, client: Client, replicas: int) -> None:
        self.client = client
        self.replicas = replicas
        self._changed = threading.Condition()
        self._version = 0
        self._last: dict[str, list[Advertised]] = {}
        self._gpus: dict[str, devices_pb2.Device] = {}
        self._unreachable = False
        # One refresh at a time: an older answer must never be stored over a newer one.
        self._refreshing = threading.Lock()

    def refresh(self) -> dict[str, list[Advertised]]:
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> dict[str, list[Advertised]]:
        try:
            gpus = list(self.client.devices().devices)
            held = {k for r in self.client.reservations(RESERVATION_PREFIX) for k in r.keys}
            current = resources.advertise(gpus, self.replicas, held)
            if self._unreachable:
                log.info("gpuosd answers again")
            self._unreachable = False
        except ApiError as exc:
            if not self._unreachable:
                log.warning("cannot reach gpuosd (%s); advertising every device unhealthy", exc.details)
            self._unreachable = True
            gpus = list(self._gpus.values())
            with self._changed:
                current = {r: [Advertised(a.device_id, a.gpu_uuid, resources.UNHEALTHY, a.numa_node) for a in devs]
                           for r, devs in self._last.items()}
        with self._changed:
            self._gpus = {g.uuid: g for g in gpus}
            if current != self._last:
                self._last = current
                self._version += 1
                self._changed.notify_all()
        return current

    def devices(self, resource: str) -> list[Advertised]:
        with self._changed:
            return list(self._last.get(resource, []))

    def resources(self) -> list[str]:
        with self._changed:
            return sorted(self._last)

    def gpu(self, uuid: str) -> devices_pb2.Device | None:
        with self._changed:
            return self._gpus.get(uuid)

    def watch(self, resource: str, version: int, timeout: float) -> tuple[int, list[Advertised]]:
        """``resource``'s devices once the inventory is newer than ``version`` (or after ``timeout``)."""
        with self._changed:
            if self._version == version:
                self._changed.wait(timeout)
            return self._version, list(self._last.get(resource, []))


class ResourcePlugin:
    """The DevicePlugin service for one resource; ``specs``: where its CDI spec files go (None: no CDI)."""

    def __init__(self, resource: str, inventory: Inventory, options: Options, specs: SpecFiles | None) -> None:
        self.resource = resource
        self.inventory = inventory
        self.options = options
        self.specs = specs
        self.stopped = threading.Event()

    def GetDevicePluginOptions(self, request: api_pb2.Empty, context: grpc.ServicerContext) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(self, request: api_pb2.Empty, context: grpc.ServicerContext) -> Iterator[api_pb2.ListAndWatchResponse]:
        last: list[Advertised] | None = None
        version = -1
        while context.is_active() and not self.stopped.is_set():
            version, devices = self.inventory.watch(self.resource, version, self.options.poll)
            current = sorted(devices)
            if current != last:
                last = current
                yield api_pb2.ListAndWatchResponse(devices=[_device(a) for a in current])

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
        try:
            for container in request.container_requests:
                out.container_responses.append(self._allocate(list(container.devices_ids), advertised, context))
        finally:
            # The other resources' devices on these GPUs change health now, not a poll later.
            self.inventory.refresh()
        return out

    def _allocate(self, ids: list[str], advertised: list[Advertised],
                  context: grpc.ServicerContext) -> api_pb2.ContainerAllocateResponse:
        try:
            gpus, wanted = resources.request_for(self.resource, ids, advertised, self.inventory.replicas)
            reservation = self.inventory.client.reserve(f"{RESERVATION_PREFIX}{self.resource}", gpus, wanted, keys=ids)
        except GpuosError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ApiError as exc:
            context.abort(exc.code, f"gpuosd refused {self.resource} {ids}: {exc.details}")
        response = api_pb2.ContainerAllocateResponse(envs=dict(reservation.env))
        for mount in reservation.mounts:
            response.mounts.append(api_pb2.Mount(container_path=mount.container_path, host_path=mount.host_path,
                                                 read_only=mount.read_only))
        minors = [g.minor_number for g in map(self.inventory.gpu, gpus) if g is not None]
        nodes = cdi.reservation_nodes(reservation, minors, self.options.dev_root, self.options.mig_minors)
        for path in nodes:
            response.devices.append(api_pb2.DeviceSpec(container_path=path, host_path=path, permissions="rw"))
        if self.specs is not None:
            try:
                name = self.specs.write(ids, reservation, nodes)
            except (OSError, cdi.CdiError) as exc:
                # Without its spec a CDI name would fail the container; envs and mounts still carry it.
                log.warning("no CDI spec for %s (%s); answering without cdi_devices", ids, exc)
            else:
                response.cdi_devices.append(api_pb2.CDIDevice(name=name))
        return response

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


def _device(a: Advertised) -> api_pb2.Device:
    device = api_pb2.Device(ID=a.device_id, health=a.health)
    if a.numa_node >= 0:
        device.topology.nodes.append(api_pb2.NUMANode(ID=a.numa_node))
    return device


@dataclass
class _Served:
    """One resource's server and where its registration stands."""

    server: grpc.Server
    plugin: ResourcePlugin
    registered: bool = False
    failures: int = 0
    next_try: float = 0.0


class Manager:
    """Runs one plugin server per resource, keeps each registered with the kubelet, keeps the
    inventory fresh and, with a reconciler, releases the reservations of vanished containers."""

    def __init__(self, plugin_dir: str, inventory: Inventory, options: Options | None = None, *,
                 reconciler: Reconciler | None = None, reconcile_every: float = 3.0) -> None:
        self.plugin_dir = plugin_dir
        self.inventory = inventory
        self.options = options or Options()
        self.reconciler = reconciler
        self.reconcile_every = reconcile_every
        self.specs = SpecFiles(self.options.cdi_dir) if self.options.cdi_dir else None
        if reconciler is not None:
            if reconciler.released is None:
                reconciler.released = self.inventory.refresh
            if reconciler.specs is None:
                reconciler.specs = self.specs
        self._servers: dict[str, _Served] = {}
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
        plugin = ResourcePlugin(resource, self.inventory, self.options, self.specs)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="gpuos-dp"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(plugin, server)  # type: ignore[arg-type]
        server.add_insecure_port(f"unix:{path}")
        server.start()
        self._servers[resource] = _Served(server, plugin)

    def _stop_server(self, resource: str) -> None:
        served = self._servers.pop(resource)
        served.plugin.stopped.set()
        served.server.stop(0)

    def _stop_servers(self) -> None:
        for resource in list(self._servers):
            self._stop_server(resource)

    def _register(self, resource: str) -> None:
        with grpc.insecure_channel(f"unix:{self.kubelet_socket}") as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(
                    version=API_VERSION,
                    endpoint=socket_name(resource),
                    resource_name=resource,
                    options=api_pb2.DevicePluginOptions(get_preferred_allocation_available=True),
                ),
                timeout=REGISTER_TIMEOUT,
            )
        log.info("registered %s with the kubelet", resource)

    def sync(self, now: float | None = None) -> bool:
        """Serve every resource and register those not yet registered whose retry is due; True
        if any registered now. A kubelet that (re)appeared, or a socket that vanished, makes the
        servers concerned start again and register anew."""
        now = time.monotonic() if now is None else now
        kubelet = self._kubelet_identity()
        if kubelet is None:
            if self._servers:
                log.info("kubelet.sock is gone; waiting for the kubelet to come back")
                self._stop_servers()
            self._kubelet_id = None
            return False
        if kubelet != self._kubelet_id:
            self._stop_servers()  # a new kubelet deleted our sockets and knows none of us
            self._kubelet_id = kubelet
        for resource in [r for r in self._servers if not os.path.exists(os.path.join(self.plugin_dir, socket_name(r)))]:
            self._stop_server(resource)
        for resource in self.inventory.resources():
            if resource not in self._servers:
                self._start(resource)
        registered = False
        for resource, served in sorted(self._servers.items()):
            if served.registered or now < served.next_try:
                continue
            try:
                self._register(resource)
            except grpc.RpcError as exc:
                served.failures += 1
                delay = backoff(served.failures)
                served.next_try = now + delay
                log.warning("registering %s failed (%s); retrying in %.1f s", resource,
                            exc.details() or exc.code(), delay)  # type: ignore[attr-defined]
                continue
            served.registered, served.failures = True, 0
            registered = True
        return registered

    def _poll(self) -> None:
        while not self._stop.wait(self.options.poll):
            self.inventory.refresh()

    def _reconcile(self) -> None:
        assert self.reconciler is not None
        while not self._stop.wait(self.reconcile_every):
            self.reconciler.once(time.time())

    def run(self, until: Callable[[], bool] | None = None) -> None:
        self.inventory.refresh()
        threads = [threading.Thread(target=self._poll, name="gpuos-dp-poll", daemon=True)]
        if self.reconciler is not None and self.reconcile_every > 0:
            threads.append(threading.Thread(target=self._reconcile, name="gpuos-dp-reconcile", daemon=True))
        for thread in threads:
            thread.start()
        try:
            while not self._stop.is_set() and not (until and until()):
                self.sync()
                self._stop.wait(min(self.options.poll, BACKOFF_FIRST))
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(REGISTER_TIMEOUT)
            self._stop_servers()

    def stop(self) -> None:
        self._stop.set()

    @property
    def resources(self) -> list[str]:
        """The resources registered with the kubelet now."""
        return sorted(r for r, s in self._servers.items() if s.registered)


def wait_registered(manager: Manager, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not manager.resources:
        time.sleep(0.05)
