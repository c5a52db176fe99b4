"""The Kubernetes device plugin against a fake kubelet that speaks the real v1beta1 device-plugin
protobuf API and the upstream PodResources v1 API over the same Unix sockets, with gpuosd on the
simulated backend behind it; and the pure rule that says which devices the kubelet may still give."""

from __future__ import annotations

import glob
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gpuos import cdi
from gpuos.cdi import device_nodes
from gpuos.client import ApiError, Client
from gpuos.daemon.daemon import Daemon
from gpuos.deviceplugin import resources
from gpuos.deviceplugin.plugin import Inventory, Manager, Options, backoff
from gpuos.deviceplugin.podresources import api_pb2 as pr_pb2
from gpuos.deviceplugin.podresources import api_pb2_grpc as pr_grpc
from gpuos.deviceplugin.reconcile import Held, Reconciler, in_use, stale
from gpuos.deviceplugin.specs import SpecFiles
from gpuos.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from gpuos.devices.catalog import lookup
from gpuos.errors import InvalidArgument
from gpuos.mig import Instance, find_slot
from gpuos.v1 import devices_pb2, jobs_pb2
from tests.conftest import serve, wait_for
from tests.fake_mig_host import MigHost, WithMinors

PY = sys.executable
# Two simulated H100s on two NUMA nodes (the topology the plugin passes on).
GPUS = "1xH100-80GB@0,1xH100-80GB@1"


# -- the rule: which devices the kubelet may still hand out ------------------------------------

H100 = lookup("H100-80GB")
assert H100 is not None
PROFILES = [p.name for p in H100.mig_profiles]
GIB = 1 << 30


def gpu(uuid: str = "GPU-a", *, allocations: tuple[tuple[str, int, int], ...] = (), mig: tuple[tuple[str, int], ...] = (),
        healthy: bool = True, draining: bool = False, numa: int = 0) -> devices_pb2.Device:
    """A simulated H100 as List shows it: ``allocations`` are (partition, compute_milli, memory)."""
    assert H100 is not None
    return devices_pb2.Device(
        index=0, uuid=uuid, model=H100.name, memory_total=H100.memory_bytes, healthy=healthy, draining=draining,
        numa_node=numa,
        mig_profiles=[devices_pb2.MigProfileInfo(name=p.name, slices=p.slices, memory_bytes=p.memory_bytes,
                                                 max_count=p.max_count, memory_slices=p.memory_slices,
                                                 placements=list(p.placements)) for p in H100.mig_profiles],
        allocations=[devices_pb2.Allocation(partition=part, compute_milli=milli, memory_limit=memory)
                     for part, milli, memory in allocations],
        mig_instances=[devices_pb2.MigInstanceInfo(profile=p, start=s, uuid=f"MIG-{p}-{s}") for p, s in mig],
    )


def health(devices: list[devices_pb2.Device], held: set[str] = frozenset(),  # type: ignore[assignment]
           replicas: int = 4) -> dict[str, dict[str, str]]:
    return {r: {a.device_id: a.health for a in devs} for r, devs in resources.advertise(devices, replicas, held).items()}


def healthy_ids(table: dict[str, dict[str, str]], resource: str) -> list[str]:
    return sorted(i for i, h in table[resource].items() if h == "Healthy")


def test_an_idle_gpu_offers_every_device_of_every_resource() -> None:
    table = health([gpu()])
    assert set(table) == {resources.WHOLE, resources.SHARED, *(resources.MIG + p for p in PROFILES)}
    assert all(h == "Healthy" for devs in table.values() for h in devs.values())
    assert len(table[resources.SHARED]) == 4
    assert len(table[resources.MIG + "1g.10gb"]) == 7 and len(table[resources.MIG + "7g.80gb"]) == 1


def test_a_whole_gpu_reservation_makes_its_shares_and_mig_devices_unhealthy() -> None:
    table = health([gpu(allocations=(("exclusive", 1000, H100.memory_bytes),))], held={"GPU-a"})
    assert table[resources.WHOLE] == {"GPU-a": "Healthy"}  # the container holding it keeps it healthy
    for resource, devs in table.items():
        if resource != resources.WHOLE:
            assert set(devs.values()) == {"Unhealthy"}, resource


def test_gpuosds_own_job_on_a_gpu_takes_every_device_of_it() -> None:
    table = health([gpu(allocations=(("exclusive", 1000, H100.memory_bytes),))])
    assert {h for devs in table.values() for h in devs.values()} == {"Unhealthy"}


@pytest.mark.parametrize(("used_milli", "free_shares"), [(250, 3), (300, 2), (500, 2), (750, 1), (1000, 0)])
def test_mps_shares_leave_as_many_shares_as_fit_and_take_the_whole_gpu_and_mig(used_milli: int,
                                                                               free_shares: int) -> None:
    memory = H100.memory_bytes * used_milli // 1000
    table = health([gpu(allocations=(("mps", used_milli, memory),))])
    assert healthy_ids(table, resources.SHARED) == [f"GPU-a::shared-{k}" for k in range(free_shares)]
    assert table[resources.WHOLE] == {"GPU-a": "Unhealthy"}
    for profile in PROFILES:
        assert set(table[resources.MIG + profile].values()) == {"Unhealthy"}, profile


def test_shares_containers_hold_stay_healthy_and_count_against_the_room() -> None:
    quarter = H100.memory_bytes // 4
    allocations = (("mps", 250, quarter), ("mps", 250, quarter))
    table = health([gpu(allocations=allocations)], held={"GPU-a::shared-1", "GPU-a::shared-3"})
    assert healthy_ids(table, resources.SHARED) == [f"GPU-a::shared-{k}" for k in range(4)]
    table = health([gpu(allocations=(*allocations, ("mps", 250, quarter)))],
                   held={"GPU-a::shared-1", "GPU-a::shared-3", "GPU-a::shared-2"})
    assert healthy_ids(table, resources.SHARED) == ["GPU-a::shared-0", "GPU-a::shared-1", "GPU-a::shared-2",
                                                    "GPU-a::shared-3"]
    assert health([gpu(allocations=(*allocations, ("mps", 500, 2 * quarter)))],
                  held={"GPU-a::shared-1", "GPU-a::shared-3"})[resources.SHARED]["GPU-a::shared-0"] == "Unhealthy"


def test_a_share_memory_limit_bounds_the_room_too() -> None:
    # A quarter of the threads but most of the memory: no other quarter fits beside it.
    table = health([gpu(allocations=(("mps", 250, H100.memory_bytes - GIB),))])
    assert healthy_ids(table, resources.SHARED) == []


def test_time_sharers_take_every_kubernetes_resource_of_their_gpu() -> None:
    table = health([gpu(allocations=(("timeslice", 1000, 10 * GIB),))])
    assert {h for devs in table.values() for h in devs.values()} == {"Unhealthy"}


def more_that_fit(instances: list[Instance], profile: str) -> int:
    """How many more instances of ``profile`` NVIDIA's slot rules allow, placed one by one."""
    assert H100 is not None
    placed, count = list(instances), 0
    while (slot := find_slot(H100.mig_profiles, placed, profile)) is not None:
        placed.append(Instance(profile, slot))
        count += 1
    return count


def layouts() -> Iterator[list[Instance]]:
    """Every MIG layout an H100 reaches by placing instances one by one at the first free slot."""
    assert H100 is not None
    seen: set[tuple[Instance, ...]] = set()
    frontier: list[list[Instance]] = [[]]
    while frontier:
        layout = frontier.pop()
        key = tuple(sorted(layout, key=lambda i: (i.start, i.profile)))
        if key in seen:
            continue
        seen.add(key)
        yield layout
        for profile in PROFILES:
            slot = find_slot(H100.mig_profiles, layout, profile)
            if slot is not None:
                frontier.append([*layout, Instance(profile, slot)])


def test_every_mig_layout_offers_exactly_the_slices_that_still_fit_and_nothing_else() -> None:
    count = 0
    for layout in layouts():
        count += 1
        allocations = tuple(
            (f"mig:{i.profile}", 0, next(p.memory_bytes for p in H100.mig_profiles if p.name == i.profile))
            for i in layout
        )
        table = health([gpu(allocations=allocations, mig=tuple((i.profile, i.start) for i in layout))])
        for profile in PROFILES:
            assert len(healthy_ids(table, resources.MIG + profile)) == more_that_fit(layout, profile), (layout, profile)
        if layout:
            assert table[resources.WHOLE] == {"GPU-a": "Unhealthy"}
            assert set(table[resources.SHARED].values()) == {"Unhealthy"}
    assert count > 20  # the walk reached many layouts, not just the empty one


def test_a_mig_slice_a_container_holds_stays_healthy() -> None:
    table = health([gpu(allocations=(("mig:4g.40gb", 0, 40 * GIB),), mig=(("4g.40gb", 0),))],
                   held={"GPU-a::mig-4g.40gb-0"})
    assert table[resources.MIG + "4g.40gb"] == {"GPU-a::mig-4g.40gb-0": "Healthy"}
    assert healthy_ids(table, resources.MIG + "3g.40gb") == ["GPU-a::mig-3g.40gb-0"]
    assert healthy_ids(table, resources.MIG + "1g.10gb") == [f"GPU-a::mig-1g.10gb-{k}" for k in range(3)]
    assert healthy_ids(table, resources.MIG + "7g.80gb") == []


@pytest.mark.parametrize("state", [{"healthy": False}, {"draining": True}])
def test_a_failed_or_draining_gpu_offers_nothing_even_what_containers_hold(state: dict[str, bool]) -> None:
    table = health([gpu(**state)], held={"GPU-a"})  # type: ignore[arg-type]
    assert {h for devs in table.values() for h in devs.values()} == {"Unhealthy"}


def test_each_gpu_is_judged_on_its_own_and_carries_its_numa_node() -> None:
    busy = gpu("GPU-a", allocations=(("exclusive", 1000, H100.memory_bytes),), numa=0)
    advertised = resources.advertise([busy, gpu("GPU-b", numa=1)], 4)
    whole = {a.device_id: (a.health, a.numa_node) for a in advertised[resources.WHOLE]}
    assert whole == {"GPU-a": ("Unhealthy", 0), "GPU-b": ("Healthy", 1)}
    assert resources.advertise([gpu(numa=-1)], 4)[resources.WHOLE][0].numa_node == -1


def test_replicas_must_be_positive() -> None:
    with pytest.raises(InvalidArgument, match="replicas"):
        resources.advertise([gpu()], 0)


# -- reconciliation's rule ----------------------------------------------------------------------

def test_a_reservation_is_stale_only_after_two_unclaimed_sightings_grace_apart() -> None:
    held = [Held("j1", ("GPU-a",)), Held("j2", ("GPU-b::shared-0", "GPU-b::shared-1"))]
    release, since = stale(held, {"GPU-b::shared-1"}, {}, now=10.0, grace=3.0)
    assert release == [] and since == {"j1": 10.0}
    release, since = stale(held, {"GPU-b::shared-1"}, since, now=12.0, grace=3.0)
    assert release == [] and since == {"j1": 10.0}
    release, since = stale(held, {"GPU-b::shared-1"}, since, now=13.0, grace=3.0)
    assert release == [held[0]] and since == {}


def test_a_reservation_claimed_again_starts_over() -> None:
    held = [Held("j1", ("GPU-a",))]
    _, since = stale(held, set(), {}, now=0.0, grace=3.0)
    _, since = stale(held, {"GPU-a"}, since, now=2.0, grace=3.0)
    release, since = stale(held, set(), since, now=4.0, grace=3.0)
    assert release == [] and since == {"j1": 4.0}


def test_only_gpuos_resources_count_as_in_use() -> None:
    response = pr_pb2.ListPodResourcesResponse(pod_resources=[pr_pb2.PodResources(name="p", containers=[
        pr_pb2.ContainerResources(name="c", devices=[
            pr_pb2.ContainerDevices(resource_name="gpuos.io/gpu", device_ids=["GPU-a"]),
            pr_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["GPU-x"]),
        ])])])
    assert in_use(response) == {"GPU-a"}


def test_registration_backoff_doubles_up_to_a_limit() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff(20) == 30.0


def test_device_nodes_are_the_gpus_and_the_drivers_control_nodes_that_exist(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert device_nodes([1], str(tmp_path)) == ["/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"]
    assert device_nodes([-1], str(tmp_path)) == []  # a simulated GPU has none


# -- against a fake kubelet ----------------------------------------------------------------------

class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    """The kubelet's side: Registration on kubelet.sock, and a client of each plugin.

    ``refuse`` maps a resource to how many of its registrations to refuse before accepting one.
    """

    def __init__(self, plugin_dir: Path, refuse: dict[str, int] | None = None) -> None:
        self.plugin_dir = plugin_dir
        self.refuse = dict(refuse or {})
        self.refused: list[str] = []
        self.registrations: queue.Queue[api_pb2.RegisterRequest] = queue.Queue()
        self.seen: dict[str, api_pb2.RegisterRequest] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{plugin_dir / 'kubelet.sock'}")
        self.server.start()

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        if self.refuse.get(request.resource_name, 0) > 0:
            self.refuse[request.resource_name] -= 1
            self.refused.append(request.resource_name)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the device manager is not ready")
        self.registrations.put(request)
        return api_pb2.Empty()

    def registered(self, count: int) -> dict[str, api_pb2.RegisterRequest]:
        """The registrations so far, by resource, once there are ``count`` of them."""
        while len(self.seen) < count:
            request = self.registrations.get(timeout=15)
            self.seen[request.resource_name] = request
        return dict(self.seen)

    def plugin(self, endpoint: str) -> api_pb2_grpc.DevicePluginStub:
        return api_pb2_grpc.DevicePluginStub(grpc.insecure_channel(f"unix:{self.plugin_dir / endpoint}"))

    def restart_away(self) -> None:
        """What a kubelet restart does: it goes, and the plugin sockets go with it."""
        self.server.stop(0).wait()
        for path in glob.glob(str(self.plugin_dir / "*.sock")):
            os.unlink(path)


class FakePodResources(pr_grpc.PodResourcesListerServicer):
    """The kubelet's PodResources API: the containers it has, set by the test; ``failing`` makes
    List fail as a kubelet that is restarting would."""

    def __init__(self, socket_path: Path) -> None:
        self.pods: dict[str, dict[str, list[str]]] = {}  # pod name -> resource -> device ids
        self.failing = False
        self.calls = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pr_grpc.add_PodResourcesListerServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{socket_path}")
        self.server.start()

    def List(self, request: pr_pb2.ListPodResourcesRequest, context: grpc.ServicerContext) -> pr_pb2.ListPodResourcesResponse:
        self.calls += 1
        if self.failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the kubelet is restarting")
        return pr_pb2.ListPodResourcesResponse(pod_resources=[
            pr_pb2.PodResources(name=pod, namespace="default", containers=[pr_pb2.ContainerResources(
                name="main", devices=[pr_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in held.items()],
            )])
            for pod, held in self.pods.items()
        ])


RESOURCES = ["gpuos.io/gpu", "gpuos.io/gpu-shared", "gpuos.io/mig-1g.10gb", "gpuos.io/mig-1g.20gb",
             "gpuos.io/mig-2g.20gb", "gpuos.io/mig-3g.40gb", "gpuos.io/mig-4g.40gb", "gpuos.io/mig-7g.80gb"]
POLL = 0.1
RECONCILE = 0.2
# Unclaimed this long before release: well past the instant between Allocate's answer and the
# fake kubelet recording the container, even on a loaded machine.
GRACE = 1.0


@dataclass
class Cluster:
    daemon: Daemon
    kubelet: FakeKubelet
    pods: FakePodResources
    manager: Manager
    cdi_dir: Path
    host: MigHost | None = None

    def endpoint(self, resource: str) -> str:
        return self.kubelet.registered(len(RESOURCES))[resource].endpoint

    def client(self) -> Client:
        return Client(socket=self.daemon.config.socket)


def start_cluster(short_dir: Path, refuse: dict[str, int] | None = None, host: MigHost | None = None) -> Iterator[Cluster]:
    """The plugin on two simulated GPUs; with ``host``, seen as GPUs of minor numbers 3 and 4 on it."""
    for daemon in serve(short_dir, sim_gpus=GPUS):
        plugin_dir = short_dir / "dp"
        plugin_dir.mkdir()
        kubelet = FakeKubelet(plugin_dir, refuse)
        pods = FakePodResources(short_dir / "pod-resources.sock")
        client = Client(socket=daemon.config.socket) if host is None else WithMinors(daemon.config.socket, 3)
        reconciler = Reconciler(client, str(short_dir / "pod-resources.sock"), grace=GRACE)
        options = Options(poll=POLL, cdi_dir=str(short_dir / "cdi"), dev_root=str(short_dir / "no-dev"))
        if host is not None:
            options = Options(poll=POLL, cdi_dir=str(short_dir / "cdi"), dev_root=str(host.dev),
                              mig_minors=str(host.mig_minors))
        manager = Manager(str(plugin_dir), Inventory(client, replicas=4), options, reconciler=reconciler,
                          reconcile_every=RECONCILE)
        thread = threading.Thread(target=manager.run, daemon=True)
        thread.start()
        yield Cluster(daemon, kubelet, pods, manager, short_dir / "cdi", host)
        manager.stop()
        thread.join(5)
        kubelet.server.stop(0)
        pods.server.stop(0)
        client.close()


@pytest.fixture
def cluster(short_dir: Path) -> Iterator[Cluster]:
    yield from start_cluster(short_dir)


def test_each_resource_registers_with_the_kubelet(cluster: Cluster) -> None:
    registered = cluster.kubelet.registered(len(RESOURCES))
    assert sorted(registered) == sorted(RESOURCES)
    for request in registered.values():
        assert request.version == "v1beta1" and request.options.get_preferred_allocation_available
        assert os.path.exists(cluster.kubelet.plugin_dir / request.endpoint)


def watch(cluster: Cluster, resource: str):  # type: ignore[no-untyped-def]
    return cluster.kubelet.plugin(cluster.endpoint(resource)).ListAndWatch(api_pb2.Empty(), timeout=20)


def next_where(stream, predicate, within: float = 3.0):  # type: ignore[no-untyped-def]
    """The first update of ``stream`` that satisfies ``predicate``, which must come ``within`` seconds."""
    deadline = time.monotonic() + within
    for update in stream:
        if predicate({d.ID: d.health for d in update.devices}):
            return update
        assert time.monotonic() < deadline, "no such update in time"
    raise AssertionError("the stream ended")


def test_list_and_watch_follows_gpu_health_and_gives_each_gpus_numa_node(cluster: Cluster) -> None:
    stream = watch(cluster, "gpuos.io/gpu")
    first = next(stream)
    uuids = [d.uuid for d in cluster.daemon.controller.devices]
    assert {(d.ID, d.health) for d in first.devices} == {(u, "Healthy") for u in uuids}
    assert {d.ID: [n.ID for n in d.topology.nodes] for d in first.devices} == {uuids[0]: [0], uuids[1]: [1]}
    with cluster.client() as c:
        c.inject_fault(0, "gpu-fail")
        next_where(stream, lambda h: h == {uuids[0]: "Unhealthy", uuids[1]: "Healthy"})
        c.inject_fault(0, "gpu-restore")
        next_where(stream, lambda h: set(h.values()) == {"Healthy"})
    stream.cancel()


def allocate(cluster: Cluster, resource: str, ids: list[str]) -> api_pb2.ContainerAllocateResponse:
    """What the kubelet does for a container of a new pod: Allocate, then record its devices
    (PodResources shows them, under the pod named after its first device, until the test drops it)."""
    request = api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
    response = cluster.kubelet.plugin(cluster.endpoint(resource)).Allocate(request, timeout=20).container_responses[0]
    cluster.pods.pods[ids[0]] = {resource: ids}
    return response


def test_a_whole_gpu_taken_turns_its_shares_and_mig_slices_unhealthy_within_a_poll(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[1].uuid
    shared, mig = watch(cluster, "gpuos.io/gpu-shared"), watch(cluster, "gpuos.io/mig-1g.10gb")
    next(shared), next(mig)
    allocate(cluster, "gpuos.io/gpu", [uuid])
    taken = time.monotonic()
    update = next_where(shared, lambda h: {i: s for i, s in h.items() if i.startswith(uuid)} ==
                        {f"{uuid}::shared-{k}": "Unhealthy" for k in range(4)})
    assert {d.health for d in update.devices if not d.ID.startswith(uuid)} == {"Healthy"}
    next_where(mig, lambda h: all(s == "Unhealthy" for i, s in h.items() if i.startswith(uuid)))
    assert time.monotonic() - taken < 1.0
    shared.cancel(), mig.cancel()


def test_an_mps_share_turns_the_whole_gpu_and_its_mig_slices_unhealthy(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[0].uuid
    whole, mig = watch(cluster, "gpuos.io/gpu"), watch(cluster, "gpuos.io/mig-7g.80gb")
    next(whole), next(mig)
    allocate(cluster, "gpuos.io/gpu-shared", [f"{uuid}::shared-2"])
    next_where(whole, lambda h: h[uuid] == "Unhealthy")
    next_where(mig, lambda h: h[f"{uuid}::mig-7g.80gb-0"] == "Unhealthy")
    whole.cancel(), mig.cancel()


def test_a_mig_slice_leaves_only_the_profiles_that_still_fit(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[0].uuid
    three, seven, whole = (watch(cluster, r) for r in ("gpuos.io/mig-3g.40gb", "gpuos.io/mig-7g.80gb", "gpuos.io/gpu"))
    next(three), next(seven), next(whole)
    allocate(cluster, "gpuos.io/mig-4g.40gb", [f"{uuid}::mig-4g.40gb-0"])
    next_where(three, lambda h: (h[f"{uuid}::mig-3g.40gb-0"], h[f"{uuid}::mig-3g.40gb-1"]) == ("Healthy", "Unhealthy"))
    next_where(seven, lambda h: h[f"{uuid}::mig-7g.80gb-0"] == "Unhealthy")
    next_where(whole, lambda h: h[uuid] == "Unhealthy")
    for stream in (three, seven, whole):
        stream.cancel()


def test_gpuosds_own_jobs_take_the_devices_of_their_gpu(cluster: Cluster) -> None:
    stream = watch(cluster, "gpuos.io/gpu")
    next(stream)
    with cluster.client() as c:
        mine = c.submit([PY, "-c", "import time; time.sleep(30)"], gpus=2)
        next_where(stream, lambda h: set(h.values()) == {"Unhealthy"})
        c.cancel(mine.id)
        next_where(stream, lambda h: set(h.values()) == {"Healthy"})
    stream.cancel()


def test_allocating_a_whole_gpu_reserves_it_in_gpuosd(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[1].uuid
    response = allocate(cluster, "gpuos.io/gpu", [uuid])
    assert response.envs["CUDA_VISIBLE_DEVICES"] == uuid == response.envs["NVIDIA_VISIBLE_DEVICES"]
    with cluster.client() as c:
        job = c.get(response.envs["GPUOS_JOB_ID"])
        assert job.state == jobs_pb2.RUNNING and job.spec.kind == jobs_pb2.EXTERNAL
        assert list(job.placement.devices) == [1]
        # gpuos's own jobs now see GPU 1 taken.
        mine = c.submit([PY, "-c", "import time; time.sleep(30)"], gpus=2)
        assert c.get(mine.id).state == jobs_pb2.PENDING
        c.cancel(mine.id)


def test_an_mps_share_mounts_the_pipe_logs_and_shm_and_caps_the_daemon(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[0].uuid
    response = allocate(cluster, "gpuos.io/gpu-shared", [f"{uuid}::shared-0", f"{uuid}::shared-1"])
    assert response.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert response.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=40960M"
    pipe, logs = response.envs["CUDA_MPS_PIPE_DIRECTORY"], response.envs["CUDA_MPS_LOG_DIRECTORY"]
    mounts = {(m.host_path, m.container_path, m.read_only) for m in response.mounts}
    assert mounts == {(pipe, pipe, False), (logs, logs, True), ("/dev/shm", "/dev/shm", False)}
    # The limits are also the control daemon's, where a container's own variables cannot raise them.
    control_log = (Path(logs) / "control.log").read_text()
    assert "set_default_active_thread_percentage 50" in control_log
    assert "set_default_device_pinned_mem_limit 0 40960M" in control_log


def test_allocate_answers_one_cdi_device_whose_spec_file_carries_the_partition(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[0].uuid
    ids = [f"{uuid}::shared-1", f"{uuid}::shared-0"]
    response = allocate(cluster, "gpuos.io/gpu-shared", ids)
    # One allocation, one spec file and one CDI device, named after its first device ID.
    assert [d.name for d in response.cdi_devices] == [f"gpuos.io/gpu={uuid}::shared-0"]
    path = cdi.spec_path(str(cluster.cdi_dir), f"{uuid}::shared-0")
    assert list(cluster.cdi_dir.glob("*.json")) == [Path(path)]
    document = json.loads(Path(path).read_text())
    assert document["kind"] == "gpuos.io/gpu" and document["cdiVersion"] >= "0.6.0"
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    (device,) = cdi.read_spec(path)
    assert device.name == f"{uuid}::shared-0"
    assert device.env["GPUOS_JOB_ID"] == response.envs["GPUOS_JOB_ID"]
    assert device.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert {m.container_path for m in device.mounts} == {m.container_path for m in response.mounts}
    assert device.device_nodes == ()  # simulated GPUs have no device nodes


def test_a_vanished_pods_reservation_is_released_within_seconds_and_its_spec_removed(cluster: Cluster) -> None:
    a, b = (d.uuid for d in cluster.daemon.controller.devices)
    kept = allocate(cluster, "gpuos.io/gpu", [a]).envs["GPUOS_JOB_ID"]
    gone = allocate(cluster, "gpuos.io/gpu", [b]).envs["GPUOS_JOB_ID"]
    time.sleep(3 * RECONCILE)
    with cluster.client() as c:
        assert c.get(gone).state == jobs_pb2.RUNNING  # its pod still holds it
    del cluster.pods.pods[b]
    with cluster.client() as c:
        started = time.monotonic()
        wait_for(lambda: c.get(gone).state == jobs_pb2.SUCCEEDED, timeout=5)
        assert time.monotonic() - started < 3.0
        assert c.get(gone).reason == "released" and c.get(kept).state == jobs_pb2.RUNNING
        # The same pass sweeps its spec, a moment after the release.
        wait_for(lambda: not os.path.exists(cdi.spec_path(str(cluster.cdi_dir), b)), timeout=2)
        assert os.path.exists(cdi.spec_path(str(cluster.cdi_dir), a))
        # The GPU is offered again at once.
        stream = watch(cluster, "gpuos.io/gpu")
        next_where(stream, lambda h: h == {a: "Healthy", b: "Healthy"})
        stream.cancel()


def test_the_spec_of_a_reservation_ended_another_way_is_swept_and_no_other_file(cluster: Cluster) -> None:
    a, b = (d.uuid for d in cluster.daemon.controller.devices)
    cancelled = allocate(cluster, "gpuos.io/gpu", [a]).envs["GPUOS_JOB_ID"]
    allocate(cluster, "gpuos.io/gpu", [b])
    # The same directory holds the DRA driver's spec, an unannotated one and another vendor's.
    others = [cdi.write_spec(str(cluster.cdi_dir), devices=[cdi.CdiDevice("uid-1-0", {"A": "1"})], name="uid-1",
                             annotations={cdi.OWNER: "gpuos-dra-plugin"}),
              cdi.write_spec(str(cluster.cdi_dir), devices=[cdi.CdiDevice("legacy", {"A": "1"})], name="legacy"),
              cdi.write_spec(str(cluster.cdi_dir), "nvidia.com/gpu", [cdi.CdiDevice("all", {"A": "1"})], name="all")]
    with cluster.client() as c:
        c.cancel(cancelled)  # gpuosctl cancel: the plugin never releases it, its pod still runs
    wait_for(lambda: not os.path.exists(cdi.spec_path(str(cluster.cdi_dir), a)), timeout=5)
    assert sorted(map(str, cluster.cdi_dir.glob("*.json"))) == sorted([*others, cdi.spec_path(str(cluster.cdi_dir), b)])


def test_a_sweep_removes_nothing_while_gpuosd_does_not_answer(tmp_path: Path) -> None:
    specs = SpecFiles(str(tmp_path))
    specs.write(["GPU-b", "GPU-a"], devices_pb2.Reservation(job_id="job-1", env={"A": "1"}), [])
    path = cdi.spec_path(str(tmp_path), "GPU-a")
    assert cdi.read_annotations(path) == {cdi.OWNER: "gpuos-device-plugin", "gpuos.io/reservation": "job-1"}

    def unreachable() -> set[str]:
        raise ApiError(grpc.StatusCode.UNAVAILABLE, "gpuosd is restarting")

    with pytest.raises(ApiError):
        specs.sweep(unreachable)
    assert specs.sweep(lambda: {"job-1"}) == [] and os.path.exists(path)
    assert specs.sweep(lambda: {"job-2"}) == [path] and not os.path.exists(path)


def test_nothing_is_released_while_pod_resources_fails(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[0].uuid
    cluster.pods.failing = True
    job = allocate(cluster, "gpuos.io/gpu", [uuid]).envs["GPUOS_JOB_ID"]
    cluster.pods.pods.clear()  # were the kubelet to answer, the reservation would be stale
    calls = cluster.pods.calls
    wait_for(lambda: cluster.pods.calls >= calls + 5, timeout=5)
    with cluster.client() as c:
        assert c.get(job).state == jobs_pb2.RUNNING


def test_a_mig_device_becomes_a_mig_slice(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[0].uuid
    response = allocate(cluster, "gpuos.io/mig-3g.40gb", [f"{uuid}::mig-3g.40gb-0"])
    assert response.envs["CUDA_VISIBLE_DEVICES"].startswith("MIG-")
    (made,) = cluster.daemon.backend.mig_instances(0)
    assert made.profile == "3g.40gb"
    # gpuosd's listing names its GPU and compute instance, as the capability nodes need them.
    with cluster.client() as c:
        (listed,) = c.devices().devices[0].mig_instances
    assert (listed.uuid, listed.gpu_instance_id, listed.compute_instance_id) == (made.uuid, made.index, 0)


@pytest.fixture
def mig_host_cluster(short_dir: Path, tmp_path: Path) -> Iterator[Cluster]:
    yield from start_cluster(short_dir, host=MigHost(tmp_path, gpu_minors=(3, 4)))


def test_a_mig_slices_container_gets_its_gpu_and_its_capability_nodes(mig_host_cluster: Cluster) -> None:
    cluster, host = mig_host_cluster, mig_host_cluster.host
    assert host is not None
    uuid = cluster.daemon.controller.devices[1].uuid
    allocate(cluster, "gpuos.io/mig-1g.10gb", [f"{uuid}::mig-1g.10gb-0"])  # GPU 1's first GPU instance
    ids = [f"{uuid}::mig-3g.40gb-0"]
    response = allocate(cluster, "gpuos.io/mig-3g.40gb", ids)
    made = next(m for m in cluster.daemon.backend.mig_instances(1) if m.uuid == response.envs["CUDA_VISIBLE_DEVICES"])
    # GPU 1 is /dev/nvidia4 here; the slice is its second GPU instance.
    wanted = ["/dev/nvidia4", "/dev/nvidiactl", "/dev/nvidia-uvm", *host.caps(4, made.index, made.compute_instance)]
    assert made.index == 2 and [d.host_path for d in response.devices] == wanted
    assert all(d.container_path == d.host_path and d.permissions == "rw" for d in response.devices)
    (device,) = cdi.read_spec(cdi.spec_path(str(cluster.cdi_dir), ids[0]))
    assert list(device.device_nodes) == wanted


def test_a_device_handed_out_again_releases_its_previous_holder_and_its_spec(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[0].uuid
    first = allocate(cluster, "gpuos.io/gpu-shared", [f"{uuid}::shared-1", f"{uuid}::shared-2"]).envs["GPUOS_JOB_ID"]
    second = allocate(cluster, "gpuos.io/gpu-shared", [f"{uuid}::shared-0", f"{uuid}::shared-1"]).envs["GPUOS_JOB_ID"]
    with cluster.client() as c:
        old = c.get(first)
        assert old.state == jobs_pb2.SUCCEEDED and old.reason == "released"
        assert c.get(second).state == jobs_pb2.RUNNING
    # The first's spec was named after shared-1: it goes, leaving only the second's.
    assert list(cluster.cdi_dir.glob("*.json")) == [Path(cdi.spec_path(str(cluster.cdi_dir), f"{uuid}::shared-0"))]


def test_bad_allocations_get_clear_errors(cluster: Cluster) -> None:
    uuid = cluster.daemon.controller.devices[0].uuid
    with pytest.raises(grpc.RpcError) as err:
        allocate(cluster, "gpuos.io/gpu", ["GPU-no-such-device"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "GPU-no-such-device" in err.value.details()
    shares = [f"{uuid}::shared-{k}" for k in range(5)]
    with pytest.raises(grpc.RpcError) as err:
        allocate(cluster, "gpuos.io/gpu-shared", shares)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shared-4" in err.value.details()
    with cluster.client() as c:
        busy = c.submit([PY, "-c", "import time; time.sleep(30)"], gpus=2)
        wait_for(lambda: c.get(busy.id).state == jobs_pb2.RUNNING)
        with pytest.raises(grpc.RpcError) as err:
            allocate(cluster, "gpuos.io/gpu", [uuid])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and busy.id in err.value.details()
        c.cancel(busy.id)


def test_preferred_allocation_keeps_a_containers_shares_on_one_gpu(cluster: Cluster) -> None:
    a, b = (d.uuid for d in cluster.daemon.controller.devices)
    available = [f"{a}::shared-0", f"{b}::shared-0", f"{b}::shared-1", f"{a}::shared-1"]
    request = api_pb2.PreferredAllocationRequest(container_requests=[api_pb2.ContainerPreferredAllocationRequest(
        available_deviceIDs=available, must_include_deviceIDs=[f"{b}::shared-1"], allocation_size=2)])
    plugin = cluster.kubelet.plugin(cluster.endpoint("gpuos.io/gpu-shared"))
    chosen = plugin.GetPreferredAllocation(request, timeout=20).container_responses[0].deviceIDs
    assert sorted(chosen) == [f"{b}::shared-0", f"{b}::shared-1"]


def test_the_plugin_registers_again_when_the_kubelet_restarts(cluster: Cluster) -> None:
    cluster.kubelet.registered(len(RESOURCES))
    cluster.kubelet.restart_away()
    wait_for(lambda: not cluster.manager.resources)
    again = FakeKubelet(cluster.kubelet.plugin_dir)
    try:
        registered = again.registered(len(RESOURCES))
        assert sorted(registered) == sorted(RESOURCES)
        endpoint = registered["gpuos.io/gpu"].endpoint
        options = again.plugin(endpoint).GetDevicePluginOptions(api_pb2.Empty(), timeout=10)
        assert options.get_preferred_allocation_available
    finally:
        again.server.stop(0)


@pytest.fixture
def refusing_cluster(short_dir: Path) -> Iterator[Cluster]:
    """A cluster whose kubelet refuses gpu-shared's first two registrations."""
    yield from start_cluster(short_dir, refuse={"gpuos.io/gpu-shared": 2})


def test_a_refused_registration_is_retried_for_that_resource_alone(refusing_cluster: Cluster) -> None:
    kubelet, manager = refusing_cluster.kubelet, refusing_cluster.manager
    # The others register at once and serve while gpu-shared waits out its backoff.
    others = kubelet.registered(len(RESOURCES) - 1)
    assert "gpuos.io/gpu-shared" not in others and "gpuos.io/gpu-shared" not in manager.resources
    options = kubelet.plugin(others["gpuos.io/gpu"].endpoint).GetDevicePluginOptions(api_pb2.Empty(), timeout=10)
    assert options.get_preferred_allocation_available
    assert sorted(kubelet.registered(len(RESOURCES))) == sorted(RESOURCES)
    assert kubelet.refused == ["gpuos.io/gpu-shared"] * 2
    wait_for(lambda: manager.resources == sorted(RESOURCES))


@pytest.mark.parametrize(("policy", "expected_gpu"), [("binpack", 0), ("spread", 1)])
def test_preferred_allocation_follows_the_active_policys_score(cluster: Cluster, policy: str,
                                                               expected_gpu: int) -> None:
    a, b = (d.uuid for d in cluster.daemon.controller.devices)
    with cluster.client() as c:
        c.set_policy(policy)
        busy = c.submit([PY, "-c", "import time; time.sleep(30)"], gpu_fraction=0.25)
        wait_for(lambda: c.get(busy.id).state == jobs_pb2.RUNNING)
        assert list(c.get(busy.id).placement.devices) == [0]
        request = api_pb2.PreferredAllocationRequest(container_requests=[api_pb2.ContainerPreferredAllocationRequest(
            available_deviceIDs=[f"{a}::shared-3", f"{b}::shared-3"], allocation_size=1)])
        plugin = cluster.kubelet.plugin(cluster.endpoint("gpuos.io/gpu-shared"))
        chosen = plugin.GetPreferredAllocation(request, timeout=20)
        assert list(chosen.container_responses[0].deviceIDs) == [f"{(a, b)[expected_gpu]}::shared-3"]
        c.cancel(busy.id)
