"""The DRA driver against a fake kubelet speaking the upstream kubelet protos (plugin registration,
DRAPlugin v1 and v1beta1) over Unix sockets, a stand-in API server that stores resource.k8s.io
objects and validates them with the kubernetes client's models, and gpuosd on the simulated
backend."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

k8s = pytest.importorskip("kubernetes.client")

from gpuos import cdi  # noqa: E402
from gpuos.client import Client  # noqa: E402
from gpuos.daemon.daemon import Daemon  # noqa: E402
from gpuos.devices import catalog  # noqa: E402
from gpuos.dra.driver import CDI_OWNER  # noqa: E402
from gpuos.dra.inventory import COMPUTE, MEMORY, SLOTS, inventory, mig_rules  # noqa: E402
from gpuos.dra.main import Plugin, resource_api  # noqa: E402
from gpuos.dra.pluginregistration.v1 import api_pb2 as reg_pb2  # noqa: E402
from gpuos.dra.pluginregistration.v1 import api_pb2_grpc as reg_grpc  # noqa: E402
from gpuos.dra.slices import resource_slices  # noqa: E402
from gpuos.dra.v1 import api_pb2 as v1  # noqa: E402
from gpuos.dra.v1 import api_pb2_grpc as v1_grpc  # noqa: E402
from gpuos.dra.v1beta1 import api_pb2 as v1beta1  # noqa: E402
from gpuos.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc  # noqa: E402
from gpuos.mig import Instance, fits_at  # noqa: E402
from gpuos.v1 import common_pb2, jobs_pb2  # noqa: E402
from tests.conftest import ROOT, wait_for  # noqa: E402
from tests.fake_mig_host import MigHost, WithMinors  # noqa: E402

NODE = "node-a"
NODE_UID = "8d2c5f0e-node-a-uid"
GROUP = "/apis/resource.k8s.io/v1"
SERIALIZE = k8s.ApiClient().sanitize_for_serialization


def from_wire(data: dict[str, Any], kind: str) -> Any:
    """``data`` as the kubernetes client's model ``kind``; raises when the model refuses it."""
    model = getattr(k8s, kind)
    if hasattr(model, "from_dict"):
        return model.from_dict(data)
    return k8s.ApiClient()._ApiClient__deserialize(data, kind)  # the client before 37


class Invalid(ValueError):
    pass


def validate_slice(data: dict[str, Any]) -> None:
    """What the API server checks of a ResourceSlice, as far as these tests rely on it."""
    try:
        model = from_wire(data, "V1ResourceSlice")
    except Exception as exc:
        raise Invalid(f"not a V1ResourceSlice: {exc}") from None
    # A field the model does not know would be dropped by a real server: refuse it here.
    echoed = SERIALIZE(model)
    echoed["metadata"] = data["metadata"]
    if echoed != data:
        raise Invalid(f"fields the model does not know: {json.dumps(data)[:300]}")
    for owner in data["metadata"].get("ownerReferences", []):
        if not all(owner.get(k) for k in ("apiVersion", "kind", "name", "uid")):
            raise Invalid(f"an ownerReference names its owner's apiVersion, kind, name and uid: {owner}")
    spec = model.spec
    if bool(spec.devices) == bool(spec.shared_counters):
        raise Invalid("a slice holds devices or sharedCounters, exactly one of them")
    if spec.node_name is None:
        raise Invalid("spec.nodeName is required of a node-local slice")
    if len(spec.shared_counters or []) > 8 or len(spec.devices or []) > 64:
        raise Invalid("too many counter sets or devices")
    for device in spec.devices or []:
        name = device.name
        if not (len(name) <= 63 and name.replace("-", "a").isalnum() and name.islower() and name[0].isalnum()):
            raise Invalid(f"device name {name!r} is not a DNS label")
        if len(device.attributes or {}) + len(device.capacity or {}) > 32:
            raise Invalid(f"{name}: more than 32 attributes and capacities")


class ApiServer:
    """A stand-in kube-apiserver for resource.k8s.io/v1 (ResourceSlices and ResourceClaims) and
    this node's Node; ``nodes_forbidden`` answers a Node read as an account without RBAC for it."""

    def __init__(self) -> None:
        self.slices: dict[str, dict[str, Any]] = {}
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.nodes = {NODE: {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": NODE_UID}}}
        self.nodes_forbidden = False
        self.refused: list[str] = []
        self.version = itertools.count(1)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def _handle(self, method: str) -> None:
                url = urllib.parse.urlparse(self.path)
                with server.lock:
                    code, body = server.handle(method, url.path, urllib.parse.parse_qs(url.query),
                                               self._body() if method in ("POST", "PUT") else None)
                self._reply(code, body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @staticmethod
    def status(code: int, message: str) -> tuple[int, dict[str, Any]]:
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any] | None):  # type: ignore[no-untyped-def]
        if method == "GET" and path.startswith("/api/v1/nodes/"):
            name = path[len("/api/v1/nodes/"):]
            if self.nodes_forbidden:
                return self.status(403, f'nodes "{name}" is forbidden: cannot get resource "nodes"')
            node = self.nodes.get(name)
            return (200, node) if node else self.status(404, f"nodes {name!r} not found")
        if path.startswith(f"{GROUP}/namespaces/") and "/resourceclaims/" in path:
            _, rest = path.split("/namespaces/", 1)
            namespace, _, name = rest.split("/", 2)
            claim = self.claims.get((namespace, name))
            return (200, claim) if claim else self.status(404, f"resourceclaims {name!r} not found")
        if not path.startswith(f"{GROUP}/resourceslices"):
            return self.status(404, f"no {path}")
        name = path[len(f"{GROUP}/resourceslices/"):] if path.startswith(f"{GROUP}/resourceslices/") else ""
        if method == "GET" and not name:
            items = list(self.slices.values())
            for term in (query.get("fieldSelector", [""])[0]).split(","):
                if term:
                    key, value = term.split("=", 1)
                    field = {"spec.nodeName": "nodeName", "spec.driver": "driver"}[key]
                    items = [s for s in items if s["spec"].get(field) == value]
            return 200, {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList", "metadata": {}, "items": items}
        if method in ("POST", "PUT"):
            assert body is not None
            try:
                validate_slice(body)
            except Invalid as exc:
                self.refused.append(str(exc))
                return self.status(422, str(exc))
            key = body["metadata"]["name"]
            old = self.slices.get(key)
            if method == "POST" and old is not None:
                return self.status(409, f"resourceslices {key!r} already exists")
            if method == "PUT":
                if old is None:
                    return self.status(404, f"resourceslices {key!r} not found")
                given = body["metadata"].get("resourceVersion")
                if given and given != old["metadata"]["resourceVersion"]:
                    return self.status(409, "the object has been modified")
            body["metadata"]["resourceVersion"] = str(next(self.version))
            self.slices[key] = body
            return (201 if method == "POST" else 200), body
        if method == "DELETE":
            gone = self.slices.pop(name, None)
            return (200, gone) if gone else self.status(404, f"resourceslices {name!r} not found")
        return self.status(405, method)

    def pool(self) -> dict[str, dict[str, Any]]:
        """This node's published devices by name, and the counter sets by name, as a consumer sees
        the pool: the newest generation, once all of its slices are there."""

        def complete() -> list[dict[str, Any]] | None:
            with self.lock:
                slices = [s for s in self.slices.values() if s["spec"]["nodeName"] == NODE]
            generation = max(s["spec"]["pool"]["generation"] for s in slices)
            current = [s for s in slices if s["spec"]["pool"]["generation"] == generation]
            return current if all(s["spec"]["pool"]["resourceSliceCount"] == len(current) for s in current) else None

        current = wait_for(complete, timeout=10)
        devices = {d["name"]: d for s in current for d in s["spec"].get("devices", [])}
        counters = {c["name"]: c for s in current for c in s["spec"].get("sharedCounters", [])}
        return {"devices": devices, "counters": counters}

    def add_claim(self, claim: Any) -> None:
        data = SERIALIZE(claim)
        from_wire(data, "ResourceV1ResourceClaim")
        with self.lock:
            self.claims[(claim.metadata.namespace, claim.metadata.name)] = data

    def stop(self) -> None:
        self.http.shutdown()


def claim(name: str, uid: str, results: list[dict[str, Any]], config: list[Any] | None = None,
          requests: list[Any] | None = None) -> Any:
    """A ResourceClaim allocated to ``results`` (driver gpuos.io, pool NODE unless given)."""
    allocated = [k8s.V1DeviceRequestAllocationResult(driver=r.get("driver", "gpuos.io"), pool=r.get("pool", NODE),
                                                     device=r["device"], request=r.get("request", "gpu"),
                                                     consumed_capacity=r.get("consumed"), share_id=r.get("share_id"))
                 for r in results]
    return k8s.ResourceV1ResourceClaim(
        api_version="resource.k8s.io/v1", kind="ResourceClaim",
        metadata=k8s.V1ObjectMeta(name=name, namespace="default", uid=uid),
        spec=k8s.V1ResourceClaimSpec(devices=k8s.V1DeviceClaim(requests=requests or [
            k8s.V1DeviceRequest(name="gpu", exactly=k8s.V1ExactDeviceRequest(device_class_name="gpu.gpuos.io"))])),
        status=k8s.V1ResourceClaimStatus(allocation=k8s.V1AllocationResult(
            devices=k8s.V1DeviceAllocationResult(results=allocated, config=config))),
    )


class FakeKubelet:
    """The kubelet's side: the plugin watcher's registration calls and a DRA client."""

    def __init__(self, registry: Path) -> None:
        self.registry = registry

    def register(self, accept: tuple[str, ...] = ("v1.DRAPlugin", "v1beta1.DRAPlugin")) -> tuple[reg_pb2.PluginInfo, str]:
        """GetInfo on the driver's registration socket, pick the first version of ``accept`` it
        serves, and tell it so; the version chosen."""
        path = wait_for(lambda: next(iter(self.registry.glob("*-reg.sock")), None), timeout=10)
        with grpc.insecure_channel(f"unix:{path}") as channel:
            stub = reg_grpc.RegistrationStub(channel)
            info = stub.GetInfo(reg_pb2.InfoRequest(), timeout=10)
            chosen = next((v for v in accept if v in info.supported_versions), "")
            stub.NotifyRegistrationStatus(reg_pb2.RegistrationStatus(
                plugin_registered=bool(chosen), error="" if chosen else "no supported version"), timeout=10)
        return info, chosen

    def dra(self, endpoint: str, version: str = "v1.DRAPlugin") -> tuple[Any, Any]:
        pb2, grpc_mod = (v1, v1_grpc) if version == "v1.DRAPlugin" else (v1beta1, v1beta1_grpc)
        return pb2, grpc_mod.DRAPluginStub(grpc.insecure_channel(f"unix:{endpoint}"))


class Cluster:
    def __init__(self, daemon: Daemon, base: Path, api: ApiServer) -> None:
        self.daemon = daemon
        self.base = base
        self.api = api
        self.kubelet = FakeKubelet(base / "registry")
        self.cdi_dir = base / "cdi"
        self.client = Client(socket=daemon.config.socket)
        self.plugin: Plugin | None = None
        self.thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        self.plugin = Plugin(Client(socket=self.daemon.config.socket), resource_api(None, self.api.url), NODE,
                             str(self.base / "state"), str(self.cdi_dir), str(self.base / "registry"),
                             str(self.base / "plugins"), poll=0.1)
        self.thread = threading.Thread(target=self.plugin.run, daemon=True)
        self.thread.start()
        # The registration socket appears once the plugin has reconciled with gpuosd and serves.
        wait_for(lambda: (self.base / "registry" / "gpuos.io-reg.sock").exists(), timeout=10)
        wait_for(lambda: any(s["spec"]["nodeName"] == NODE for s in list(self.api.slices.values())), timeout=10)

    def stop(self) -> None:
        assert self.plugin is not None and self.thread is not None
        self.plugin.stop()
        self.thread.join(10)

    def uuid(self, index: int) -> str:
        return self.daemon.controller.devices[index].uuid

    def prepare(self, *claims: Any, version: str = "v1.DRAPlugin") -> dict[str, Any]:
        info, _ = self.kubelet.register()
        pb2, stub = self.kubelet.dra(info.endpoint, version)
        for c in claims:
            self.api.add_claim(c)
        request = pb2.NodePrepareResourcesRequest(claims=[
            pb2.Claim(namespace=c.metadata.namespace, uid=c.metadata.uid, name=c.metadata.name) for c in claims])
        return dict(stub.NodePrepareResources(request, timeout=30).claims)

    def unprepare(self, *claims: Any) -> dict[str, Any]:
        info, _ = self.kubelet.register()
        pb2, stub = self.kubelet.dra(info.endpoint)
        request = pb2.NodeUnprepareResourcesRequest(claims=[
            pb2.Claim(namespace=c.metadata.namespace, uid=c.metadata.uid, name=c.metadata.name) for c in claims])
        return dict(stub.NodeUnprepareResources(request, timeout=30).claims)

    def spec_of(self, answer: Any) -> dict[str, cdi.CdiDevice]:
        """The CDI devices an answer names, read from the spec files the runtime would read."""
        names = [i.split("=", 1)[1] for d in answer.devices for i in d.cdi_device_ids]
        found = {d.name: d for path in self.cdi_dir.glob("*.json") for d in cdi.read_spec(str(path))}
        return {n: found[n] for n in names}

    def reservations(self) -> list[Any]:
        return self.client.reservations("dra:")


@pytest.fixture
def api() -> Iterator[ApiServer]:
    server = ApiServer()
    yield server
    server.stop()


@pytest.fixture
def cluster(daemon: Daemon, short_dir: Path, api: ApiServer) -> Iterator[Cluster]:
    c = Cluster(daemon, short_dir, api)
    yield c
    c.stop()
    c.client.close()


# -- registration ---------------------------------------------------------------------------------


def test_registration_names_the_driver_its_endpoint_and_both_service_versions(cluster: Cluster) -> None:
    info, chosen = cluster.kubelet.register()
    assert (info.type, info.name) == ("DRAPlugin", "gpuos.io")
    assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"] and chosen == "v1.DRAPlugin"
    assert info.endpoint == str(cluster.base / "plugins" / "dra.sock") and os.path.exists(info.endpoint)
    assert cluster.plugin is not None and cluster.plugin.kubelet.registration.registered.is_set()


def test_a_refused_registration_is_recorded(cluster: Cluster) -> None:
    _, chosen = cluster.kubelet.register(accept=("v2.DRAPlugin",))
    assert chosen == ""
    assert cluster.plugin is not None
    registration = cluster.plugin.kubelet.registration
    assert not registration.registered.is_set() and registration.last_error == "no supported version"


def test_sockets_removed_by_the_kubelet_are_served_again(cluster: Cluster) -> None:
    info, _ = cluster.kubelet.register()
    os.unlink(info.endpoint)
    wait_for(lambda: os.path.exists(info.endpoint), timeout=10)

    def registers() -> bool:
        # The socket file appears as the new server binds, a moment before it answers.
        try:
            return cluster.kubelet.register()[1] == "v1.DRAPlugin"
        except grpc.RpcError:
            return False

    wait_for(registers, timeout=10)


# -- ResourceSlices -------------------------------------------------------------------------------


def test_each_gpu_is_published_with_its_attributes(cluster: Cluster) -> None:
    pool = cluster.api.pool()
    devices = pool["devices"]
    for index in (0, 1):
        gpu = devices[f"gpu-{index}"]
        attrs = {k: next(iter(v.values())) for k, v in gpu["attributes"].items()}
        assert attrs == {"type": "gpu", "uuid": cluster.uuid(index), "index": index, "model": "H100-80GB",
                         "migCapable": True, "numaNode": 0}
        assert gpu["capacity"]["memory"]["value"] == str(80 * 1024**3)
        assert {d for d in devices if d.startswith(f"gpu-{index}-")} >= {
            f"gpu-{index}-mps", f"gpu-{index}-timeslice", f"gpu-{index}-mig-3g-40gb-0", f"gpu-{index}-mig-3g-40gb-4",
            f"gpu-{index}-mig-7g-80gb-0"}
    assert set(pool["counters"]) == {"gpu-0", "gpu-1"}
    assert cluster.api.refused == []
    # Every slice is the node's, so the garbage collector deletes them with it.
    owners = [s["metadata"].get("ownerReferences") for s in cluster.api.slices.values()]
    assert owners and all(o == [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID,
                                 "controller": True}] for o in owners)


def test_slices_are_published_without_an_owner_while_the_node_cannot_be_read(
        api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    from gpuos.dra.inventory import Kind
    from gpuos.dra.slices import Publisher
    from gpuos.v1 import devices_pb2

    gpu = devices_pb2.Device(index=0, uuid="GPU-a", model="H100-80GB", memory_total=80 * 1024**3, healthy=True)
    publisher = Publisher(resource_api(None, api.url), NODE, lambda: inventory([gpu], kinds={Kind.GPU}))
    api.nodes_forbidden = True
    with caplog.at_level("WARNING", logger="gpuos.dra"):
        assert publisher.sync() and publisher.sync(force=True)
    assert [s["metadata"].get("ownerReferences") for s in api.slices.values()] == [None]
    # Said once, not at every publication.
    assert len([r for r in caplog.records if "without an owner" in r.getMessage()]) == 1
    api.nodes_forbidden = False
    assert publisher.sync(force=True)
    assert [s["metadata"]["ownerReferences"][0]["uid"] for s in api.slices.values()] == [NODE_UID]
    assert api.refused == []


def test_mps_and_time_slices_are_consumable_capacity(cluster: Cluster) -> None:
    devices = cluster.api.pool()["devices"]
    mps, turns = devices["gpu-0-mps"], devices["gpu-0-timeslice"]
    assert mps["allowMultipleAllocations"] and turns["allowMultipleAllocations"]
    assert mps["capacity"][COMPUTE] == {"value": "100", "requestPolicy": {
        "default": "100", "validRange": {"min": "1", "max": "100", "step": "1"}}}
    assert mps["capacity"][MEMORY]["value"] == "81920Mi"
    assert mps["capacity"][MEMORY]["requestPolicy"]["validRange"] == {"min": "1Mi", "step": "1Mi"}
    assert turns["capacity"][SLOTS]["value"] == "8" and turns["capacity"][SLOTS]["requestPolicy"]["default"] == "1"
    assert "consumesCounters" not in mps and "consumesCounters" not in turns


def consumption(device: dict[str, Any]) -> dict[str, int]:
    (entry,) = device["consumesCounters"]
    return {k: int(v["value"]) for k, v in entry["counters"].items()}


def counters_allow(counters: dict[str, int], devices: list[dict[str, Any]]) -> bool:
    """What the scheduler's allocator checks: the devices together consume no counter past its value."""
    used: dict[str, int] = {}
    for d in devices:
        for k, v in consumption(d).items():
            used[k] = used.get(k, 0) + v
    return all(used.get(k, 0) <= v for k, v in counters.items())


def test_mig_counters_allow_exactly_the_layouts_gpuos_allows(daemon: Daemon) -> None:
    with Client(socket=daemon.config.socket) as c:
        gpu = c.devices().devices[0]
    published = [SERIALIZE(s) for s in resource_slices(inventory([gpu]), NODE, 1)]
    for s in published:
        validate_slice(s)
    counters = {k: int(v["value"]) for k, v in published[0]["spec"]["sharedCounters"][0]["counters"].items()}
    devices = [d for s in published[1:] for d in s["spec"]["devices"]]
    slices = [d for d in devices if d["attributes"]["type"]["string"] == "mig"]
    whole = next(d for d in devices if d["name"] == "gpu-0")
    # The reference is the model catalog's slot rules, not what the driver read from gpuosd.
    model = catalog.lookup(gpu.model)
    assert model is not None and mig_rules(gpu) == model.mig_profiles
    rules = model.mig_profiles

    def gpuos_allows(chosen: tuple[dict[str, Any], ...]) -> bool:
        placed: list[Instance] = []
        for d in chosen:
            inst = Instance(d["attributes"]["profile"]["string"], d["attributes"]["placement"]["int"])
            if not fits_at(rules, placed, inst.profile, inst.start):
                return False
            placed.append(inst)
        return True

    checked = 0
    for size in (1, 2, 3):
        for chosen in itertools.combinations(slices, size):
            assert counters_allow(counters, list(chosen)) == gpuos_allows(chosen), [d["name"] for d in chosen]
            checked += 1
    assert checked > 900
    # A full layout the counters must accept, and the whole GPU excludes every slice.
    seven = [d for d in slices if d["name"].startswith("gpu-0-mig-1g-10gb-")]
    assert len(seven) == 7 and counters_allow(counters, seven)
    assert counters_allow(counters, [whole]) and not any(counters_allow(counters, [whole, s]) for s in slices)


def test_slices_follow_what_gpuosd_has_and_stale_ones_are_deleted(cluster: Cluster, api: ApiServer) -> None:
    # A slice of an earlier run with more GPUs, still named after this node.
    old = SERIALIZE(resource_slices(inventory(list(cluster.client.devices().devices)), NODE, 1)[-1])
    old["metadata"] = {"name": f"{NODE}-gpuos-io-9", "resourceVersion": "1"}
    with api.lock:
        api.slices[old["metadata"]["name"]] = old
    # The device plugin (or any gpuosd user) takes GPU 1 whole.
    busy = cluster.client.reserve("k8s:gpuos.io/gpu", [cluster.uuid(1)], common_pb2.Resources(gpus=1),
                                  keys=[cluster.uuid(1)])
    held = cluster.client.get(busy.job_id).placement.devices[0]

    def withdrawn() -> bool:
        names = set(api.pool()["devices"])
        return f"gpu-{held}" not in names and not any(n.startswith(f"gpu-{held}-") for n in names)

    wait_for(withdrawn, timeout=10)
    wait_for(lambda: f"{NODE}-gpuos-io-9" not in api.slices, timeout=10)
    cluster.client.release([cluster.uuid(1)])
    wait_for(lambda: f"gpu-{held}" in api.pool()["devices"], timeout=10)


# -- Prepare and Unprepare ------------------------------------------------------------------------


def test_a_whole_gpu_claim_reserves_it_and_its_cdi_spec_selects_it(cluster: Cluster) -> None:
    c = claim("whole", "uid-whole", [{"device": "gpu-1"}])
    answer = cluster.prepare(c)["uid-whole"]
    assert answer.error == ""
    (device,) = answer.devices
    assert (list(device.request_names), device.pool_name, device.device_name) == (["gpu"], NODE, "gpu-1")
    assert list(device.cdi_device_ids) == ["gpuos.io/gpu=uid-whole-0"]
    (spec,) = cluster.spec_of(answer).values()
    assert spec.env["CUDA_VISIBLE_DEVICES"] == cluster.uuid(1)
    (held,) = cluster.reservations()
    assert held.name == "dra:default/whole" and list(held.keys) == ["uid-whole/gpu/gpu-1"]
    assert list(held.gpu_uuids) == [cluster.uuid(1)]
    assert cluster.client.get(held.job_id).state == jobs_pb2.RUNNING


def test_two_whole_gpus_of_one_request_are_one_reservation(cluster: Cluster) -> None:
    c = claim("pair", "uid-pair", [{"device": "gpu-0"}, {"device": "gpu-1"}])
    answer = cluster.prepare(c)["uid-pair"]
    assert answer.error == "" and [len(d.cdi_device_ids) for d in answer.devices] == [1, 0]
    (spec,) = cluster.spec_of(answer).values()
    assert spec.env["CUDA_VISIBLE_DEVICES"] == f"{cluster.uuid(0)},{cluster.uuid(1)}"
    (held,) = cluster.reservations()
    assert held.resources.gpus == 2


def test_an_mps_claim_gets_the_share_it_consumed(cluster: Cluster) -> None:
    c = claim("mps", "uid-mps", [{"device": "gpu-0-mps", "consumed": {COMPUTE: "25", MEMORY: "20Gi"},
                                  "share_id": "a1b2"}])
    answer = cluster.prepare(c)["uid-mps"]
    assert answer.error == ""
    (spec,) = cluster.spec_of(answer).values()
    assert spec.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert spec.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=20480M"
    pipe = spec.env["CUDA_MPS_PIPE_DIRECTORY"]
    assert pipe in {m.container_path for m in spec.mounts}
    (held,) = cluster.reservations()
    assert list(held.keys) == ["uid-mps/gpu/gpu-0-mps/a1b2"]
    assert held.resources.gpu_fraction == pytest.approx(0.25) and held.resources.memory_bytes == 20 * 1024**3
    # The GPU is now shared by MPS: no whole GPU or MIG slice is offered on it, and the share stays.
    wait_for(lambda: "gpu-0" not in cluster.api.pool()["devices"], timeout=10)
    names = set(cluster.api.pool()["devices"])
    assert "gpu-0-mps" in names and not any(n.startswith("gpu-0-mig") for n in names) and "gpu-1" in names


def test_an_mps_claim_without_consumed_capacity_takes_its_config(cluster: Cluster) -> None:
    config = [k8s.V1DeviceAllocationConfiguration(source="FromClaim", requests=["gpu"], opaque=k8s.V1OpaqueDeviceConfiguration(
        driver="gpuos.io", parameters={"compute": "50", "memory": "10Gi"}))]
    answer = cluster.prepare(claim("cfg", "uid-cfg", [{"device": "gpu-1-mps"}], config=config))["uid-cfg"]
    assert answer.error == ""
    (held,) = cluster.reservations()
    assert held.resources.gpu_fraction == pytest.approx(0.5) and held.resources.memory_bytes == 10 * 1024**3


def test_a_mig_claim_creates_the_slice_where_it_was_offered(cluster: Cluster) -> None:
    answer = cluster.prepare(claim("mig", "uid-mig", [{"device": "gpu-0-mig-3g-40gb-0"}]))["uid-mig"]
    assert answer.error == ""
    (spec,) = cluster.spec_of(answer).values()
    assert spec.env["CUDA_VISIBLE_DEVICES"].startswith("MIG-")
    assert [(m.profile, m.start) for m in cluster.daemon.backend.mig_instances(0)] == [("3g.40gb", 0)]

    def republished() -> bool:
        names = set(cluster.api.pool()["devices"])
        return "gpu-0" not in names and "gpu-0-mps" not in names and "gpu-0-mig-3g-40gb-0" in names

    wait_for(republished, timeout=10)
    # The next slices of this GPU are offered where gpuosd would put them, beside the held one.
    names = set(cluster.api.pool()["devices"])
    assert "gpu-0-mig-3g-40gb-4" in names and "gpu-0-mig-1g-10gb-4" in names and "gpu-0-mig-1g-10gb-0" not in names


def test_a_mig_claims_spec_gives_its_gpu_and_the_slices_capability_nodes(cluster: Cluster, tmp_path: Path) -> None:
    # GPU 0 as a host with the driver would show it: /dev/nvidia3 and the MIG capability table.
    host = MigHost(tmp_path, gpu_minors=(3, 4))
    assert cluster.plugin is not None
    driver = cluster.plugin.driver
    with WithMinors(cluster.daemon.config.socket, 3) as client:
        driver.client, driver.dev_root, driver.mig_minors = client, str(host.dev), str(host.mig_minors)
        answer = cluster.prepare(claim("mig-caps", "uid-mc", [{"device": "gpu-0-mig-2g-20gb-2"}]))["uid-mc"]
    assert answer.error == ""
    (spec,) = cluster.spec_of(answer).values()
    (made,) = cluster.daemon.backend.mig_instances(0)
    assert list(spec.device_nodes) == ["/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm",
                                       *host.caps(3, made.index, made.compute_instance)]


def test_a_time_sliced_claim_takes_turns(cluster: Cluster) -> None:
    answer = cluster.prepare(claim("ts", "uid-ts", [{"device": "gpu-1-timeslice", "consumed": {SLOTS: "2"}}]))["uid-ts"]
    assert answer.error == ""
    (held,) = cluster.reservations()
    assert held.resources.sharing == "timeslice" and held.resources.gpu_fraction == pytest.approx(0.25)
    job = cluster.client.get(held.job_id)
    assert list(job.placement.devices) == [1]


def test_preparing_again_answers_the_same_devices_without_reserving_again(cluster: Cluster) -> None:
    c = claim("again", "uid-again", [{"device": "gpu-0"}])
    first = cluster.prepare(c)["uid-again"]
    (held,) = cluster.reservations()
    second = cluster.prepare(c)["uid-again"]
    assert second == first and [r.job_id for r in cluster.reservations()] == [held.job_id]


def test_a_restarted_plugin_keeps_its_prepared_claims(cluster: Cluster) -> None:
    c = claim("kept", "uid-kept", [{"device": "gpu-1-mps", "consumed": {COMPUTE: "50", MEMORY: "8Gi"}}])
    first = cluster.prepare(c)["uid-kept"]
    (held,) = cluster.reservations()
    cluster.stop()
    with cluster.api.lock:
        cluster.api.claims.clear()  # a restarted driver must not need the API server to answer again
    cluster.start()
    again = cluster.prepare()
    assert again == {}
    info, _ = cluster.kubelet.register()
    pb2, stub = cluster.kubelet.dra(info.endpoint)
    reply = stub.NodePrepareResources(pb2.NodePrepareResourcesRequest(claims=[
        pb2.Claim(namespace="default", uid="uid-kept", name="kept")]), timeout=30).claims["uid-kept"]
    assert reply == first and [r.job_id for r in cluster.reservations()] == [held.job_id]
    # Its share is still published (and counted) after the restart.
    assert "gpu-1-mps" in cluster.api.pool()["devices"]
    assert cluster.unprepare(c)["uid-kept"].error == "" and cluster.reservations() == []


def test_unprepare_releases_the_reservation_and_removes_the_spec(cluster: Cluster) -> None:
    c = claim("gone", "uid-gone", [{"device": "gpu-0"}])
    cluster.prepare(c)
    (held,) = cluster.reservations()
    assert list(cluster.cdi_dir.glob("*.json"))
    assert cluster.unprepare(c)["uid-gone"].error == ""
    assert cluster.reservations() == [] and not list(cluster.cdi_dir.glob("*.json"))
    job = cluster.client.get(held.job_id)
    assert job.state == jobs_pb2.SUCCEEDED and job.reason == "released"
    # Unpreparing again, or a claim never prepared here, is success.
    replies = cluster.unprepare(c, claim("never", "uid-never", []))
    assert replies["uid-gone"].error == "" and replies["uid-never"].error == ""
    wait_for(lambda: "gpu-0-mig-7g-80gb-0" in cluster.api.pool()["devices"], timeout=10)


def test_bad_claims_get_clear_errors_and_the_good_one_is_prepared(cluster: Cluster) -> None:
    unallocated = claim("unallocated", "uid-u", [])
    unallocated.status = None
    wrong_pool = claim("pool", "uid-p", [{"device": "gpu-0", "pool": "node-b"}])
    unknown = claim("unknown", "uid-x", [{"device": "gpu-7"}])
    foreign = claim("foreign", "uid-f", [{"device": "tpu-0"}])
    too_much = claim("much", "uid-m", [{"device": "gpu-0-mps", "consumed": {COMPUTE: "25", MEMORY: "100Gi"}}])
    good = claim("good", "uid-g", [{"device": "gpu-1"}])
    replies = cluster.prepare(unallocated, wrong_pool, unknown, foreign, too_much, good)
    assert "not allocated" in replies["uid-u"].error
    assert "node-b" in replies["uid-p"].error and NODE in replies["uid-p"].error
    assert "no GPU 7" in replies["uid-x"].error
    assert "'tpu-0' is not a device this driver publishes" in replies["uid-f"].error
    assert "memory" in replies["uid-m"].error and "100Gi" in replies["uid-m"].error
    assert replies["uid-g"].error == "" and [d.device_name for d in replies["uid-g"].devices] == ["gpu-1"]
    assert [list(r.keys) for r in cluster.reservations()] == [["uid-g/gpu/gpu-1"]]
    # A claim the API server does not have, or one made anew under the same name.
    info, _ = cluster.kubelet.register()
    pb2, stub = cluster.kubelet.dra(info.endpoint)
    replies = dict(stub.NodePrepareResources(pb2.NodePrepareResourcesRequest(claims=[
        pb2.Claim(namespace="default", uid="uid-missing", name="missing"),
        pb2.Claim(namespace="default", uid="uid-old", name="good")]), timeout=30).claims)
    assert "does not exist" in replies["uid-missing"].error
    assert "uid-g" in replies["uid-old"].error and "uid-old" in replies["uid-old"].error


def test_a_claim_gpuosd_cannot_place_is_refused_and_holds_nothing(cluster: Cluster) -> None:
    # Taken by the device plugin after the scheduler allocated it, before the kubelet prepared it.
    busy = cluster.client.reserve("k8s:gpuos.io/gpu", [cluster.uuid(0)], common_pb2.Resources(gpus=1),
                                  keys=[cluster.uuid(0)])
    replies = cluster.prepare(claim("late", "uid-late", [{"device": "gpu-1", "request": "a"},
                                                        {"device": "gpu-0", "request": "b"}]))
    assert "gpuosd refused" in replies["uid-late"].error and busy.job_id in replies["uid-late"].error
    # GPU 1 (request a), reserved before GPU 0 failed, is released again: a failed claim holds nothing.
    assert cluster.reservations() == [] and not list(cluster.cdi_dir.glob("*.json"))
    (undone,) = [j for j in cluster.client.list() if j.spec.name == "dra:default/late"]
    assert undone.state == jobs_pb2.SUCCEEDED and undone.reason == "released"
    assert cluster.plugin is not None and cluster.plugin.driver.checkpoint.records() == []


def test_the_v1beta1_service_prepares_as_v1_does(cluster: Cluster) -> None:
    info, chosen = cluster.kubelet.register(accept=("v1beta1.DRAPlugin",))
    assert chosen == "v1beta1.DRAPlugin"
    replies = cluster.prepare(claim("old", "uid-old-kubelet", [{"device": "gpu-0"}]), version="v1beta1.DRAPlugin")
    assert isinstance(replies["uid-old-kubelet"], v1beta1.NodePrepareResourceResponse)
    assert replies["uid-old-kubelet"].error == ""
    assert list(replies["uid-old-kubelet"].devices[0].cdi_device_ids) == ["gpuos.io/gpu=uid-old-kubelet-0"]


def test_a_restart_releases_reservations_no_claim_holds(cluster: Cluster) -> None:
    # What a driver that died between reserving and checkpointing leaves behind.
    cluster.client.reserve("dra:default/lost", [cluster.uuid(0)], common_pb2.Resources(gpus=1), keys=["uid-lost/gpu/gpu-0"])
    cdi.write_spec(str(cluster.cdi_dir), devices=[cdi.CdiDevice("uid-lost-0", {"A": "1"})], name="uid-lost",
                   annotations={cdi.OWNER: CDI_OWNER})
    # The device plugin's spec and one of unknown origin, of the same class in the same directory.
    others = [cdi.write_spec(str(cluster.cdi_dir), devices=[cdi.CdiDevice("GPU-x", {"A": "1"})], name="GPU-x",
                             annotations={cdi.OWNER: "gpuos-device-plugin"}),
              cdi.write_spec(str(cluster.cdi_dir), devices=[cdi.CdiDevice("legacy", {"A": "1"})], name="legacy")]
    cluster.stop()
    cluster.start()
    assert cluster.reservations() == [] and sorted(map(str, cluster.cdi_dir.glob("*.json"))) == sorted(others)


def test_the_gpuos_dra_plugin_command_registers_and_publishes(daemon: Daemon, short_dir: Path, api: ApiServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuos.dra.main", "--socket", daemon.config.socket, "--node-name", NODE,
         "--api-server", api.url, "--state-dir", str(short_dir / "state"), "--cdi-dir", str(short_dir / "cdi"),
         "--registry-dir", str(short_dir / "registry"), "--plugin-dir", str(short_dir / "plugins"),
         "--offer", "gpu,mps", "--poll", "0.2"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        info, chosen = FakeKubelet(short_dir / "registry").register()
        assert chosen == "v1.DRAPlugin"
        wait_for(lambda: any(s["spec"]["nodeName"] == NODE for s in list(api.slices.values())), timeout=15)
        assert sorted(api.pool()["devices"]) == ["gpu-0", "gpu-0-mps", "gpu-1", "gpu-1-mps"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert not os.path.exists(info.endpoint)


def test_bad_command_lines_are_refused_naming_the_option() -> None:
    run = subprocess.run([sys.executable, "-m", "gpuos.dra.main", "--offer", "gpu,tpu"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert run.returncode == 2 and "--offer" in run.stderr and "tpu" in run.stderr


def test_slices_the_driver_builds_are_valid_models(daemon: Daemon) -> None:
    with Client(socket=daemon.config.socket) as c:
        gpus = list(c.devices().devices)
    # Eight GPUs: more devices than one slice may hold, and counter sets in a slice of their own.
    many = []
    for i in range(8):
        g = type(gpus[0])()
        g.CopyFrom(gpus[0])
        g.index, g.uuid = i, f"GPU-{i}"
        many.append(g)
    published = [SERIALIZE(s) for s in resource_slices(inventory(many), NODE, 3)]
    for s in published:
        validate_slice(s)
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in published} == {len(published)} and len(published) >= 4
    assert sum(len(s["spec"].get("sharedCounters", [])) for s in published) == 8


def test_two_slices_of_one_profile_in_one_claim_land_where_offered(cluster: Cluster) -> None:
    c = claim("pair-mig", "uid-pm", [{"device": "gpu-1-mig-1g-10gb-0"}, {"device": "gpu-1-mig-1g-10gb-1"}])
    answer = cluster.prepare(c)["uid-pm"]
    assert answer.error == "" and len(cluster.spec_of(answer)) == 2
    assert sorted((m.profile, m.start) for m in cluster.daemon.backend.mig_instances(1)) == [
        ("1g.10gb", 0), ("1g.10gb", 1)]


def test_unprepare_after_a_crash_while_preparing_releases_what_it_reserved(cluster: Cluster) -> None:
    from gpuos.dra.checkpoint import PREPARING, Checkpoint, ClaimRecord

    cluster.stop()
    key = "uid-crash/gpu/gpu-0"
    Checkpoint(str(cluster.base / "state")).put(ClaimRecord("uid-crash", "default", "crash", PREPARING, (key,)))
    cluster.client.reserve("dra:default/crash", [cluster.uuid(0)], common_pb2.Resources(gpus=1), keys=[key])
    cluster.start()
    assert [list(r.keys) for r in cluster.reservations()] == [[key]]  # its claim is on record: kept
    assert cluster.unprepare(claim("crash", "uid-crash", []))["uid-crash"].error == ""
    assert cluster.reservations() == []


def test_a_checkpoint_written_with_held_device_names_still_loads_and_derives_them(tmp_path: Path) -> None:
    from gpuos.dra.checkpoint import FILENAME, PREPARED, Checkpoint

    # As a driver that stored "held" wrote it; what a claim holds now comes from its devices.
    old = {"version": 1, "claims": [{
        "uid": "uid-old", "namespace": "default", "name": "old", "state": PREPARED, "keys": ["uid-old/gpu/gpu-0-mps"],
        "job_ids": ["j1"], "cdi_spec": "", "held": ["gpu-0-mps"],
        "devices": [{"request_names": ["gpu"], "pool": NODE, "device": "gpu-0-mps",
                     "cdi_device_ids": ["gpuos.io/gpu=uid-old-0"]}]}]}
    (tmp_path / FILENAME).write_text(json.dumps(old))
    (record,) = Checkpoint(str(tmp_path)).records()
    assert record.held == ("gpu-0-mps",) and record.job_ids == ("j1",)
    # Written back with it, so an older driver reading the file still keeps the device published.
    Checkpoint(str(tmp_path)).put(record)
    assert json.loads((tmp_path / FILENAME).read_text())["claims"][0]["held"] == ["gpu-0-mps"]


def test_shares_and_turns_offer_what_gpuosds_own_jobs_leave_in_whole_units() -> None:
    from gpuos.v1 import devices_pb2

    def gpu(partitioning: str, *allocations: devices_pb2.Allocation) -> devices_pb2.Device:
        return devices_pb2.Device(index=0, uuid="GPU-0", model="H100-80GB", memory_total=80 * 1024**3, healthy=True,
                                  partitioning=partitioning, allocations=allocations)

    def capacity(device: devices_pb2.Device, name: str) -> dict[str, str]:
        (published,) = [d for d in inventory([device]).devices if d.name == name]
        return {k: c.value for k, c in published.capacity.items()}

    mps = devices_pb2.Allocation(job_id="j1", partition="mps", compute_milli=255, memory_limit=20 * 1024**3 + 1)
    # 74.5% is left: 74 whole percents, never one more than is free; memory in whole MiB below it.
    assert capacity(gpu("mps", mps), "gpu-0-mps") == {COMPUTE: "74", MEMORY: f"{60 * 1024 - 1}Mi"}
    turns = [devices_pb2.Allocation(job_id=f"t{k}", partition="timeslice", compute_milli=125) for k in range(3)]
    assert capacity(gpu("timeslice", *turns), "gpu-0-timeslice") == {SLOTS: "5"}
