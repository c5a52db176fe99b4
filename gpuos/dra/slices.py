"""This node's ResourceSlices (resource.k8s.io/v1), built with the kubernetes client's typed
models and kept in step with the inventory.

One pool per node (named after the node). The counter sets go in slices of their own (a slice
holds devices or shared counters, not both; at most 8 counter sets each), the devices in slices of
at most 64 (the limit when devices consume counters). Each change of the inventory publishes
the whole pool again under the next generation, and slices of this node that are no longer part
of it are deleted. Each slice is owned by the node's Node object (an ownerReference, as upstream's
kubelet plugin helper sets it), so deleting the node deletes its slices. Needs the ``kubernetes``
extra.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from gpuos.dra.inventory import DRIVER, Capacity, Inventory, Published

log = logging.getLogger("gpuos.dra")

MAX_COUNTER_SETS = 8
MAX_DEVICES = 64


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _capacity(c: Capacity) -> Any:
    policy = None
    if c.default:
        valid_range = k8s.V1CapacityRequestPolicyRange(min=c.minimum, max=c.maximum or None, step=c.step or None) \
            if c.minimum else None
        policy = k8s.V1CapacityRequestPolicy(default=c.default, valid_range=valid_range)
    return k8s.V1DeviceCapacity(value=c.value, request_policy=policy)


def _attribute(value: str | int | bool) -> Any:
    if isinstance(value, bool):
        return k8s.V1DeviceAttribute(bool=value)
    if isinstance(value, int):
        return k8s.V1DeviceAttribute(int=value)
    return k8s.V1DeviceAttribute(string=value)


def _device(d: Published) -> Any:
    consumes = None
    if d.consumes:
        consumes = [k8s.V1DeviceCounterConsumption(
            counter_set=d.ref.counter_set,
            counters={name: k8s.V1Counter(value=str(n)) for name, n in sorted(d.consumes.items())})]
    return k8s.V1Device(
        name=d.name,
        attributes={k: _attribute(v) for k, v in sorted(d.attributes.items())},
        capacity={k: _capacity(c) for k, c in sorted(d.capacity.items())},
        consumes_counters=consumes,
        allow_multiple_allocations=True if d.multiple else None,
    )


def slice_name(node: str, k: int) -> str:
    return f"{node}-gpuos-io-{k}"


def node_owner(node: str, uid: str) -> Any:
    """The ownerReference of a slice to Node ``node`` (``uid``): the garbage collector deletes the
    slice with the node."""
    return k8s.V1OwnerReference(api_version="v1", kind="Node", name=node, uid=uid, controller=True)


def resource_slices(inventory: Inventory, node: str, generation: int, owner: Any = None) -> list[Any]:
    """The ``V1ResourceSlice`` objects that publish ``inventory`` as pool ``node``, generation
    ``generation``, owned by ``owner`` (a ``V1OwnerReference``) if given."""
    specs: list[dict[str, Any]] = []
    for sets in _chunks(inventory.counter_sets, MAX_COUNTER_SETS):
        specs.append({"shared_counters": [
            k8s.V1CounterSet(name=s.name, counters={n: k8s.V1Counter(value=str(v)) for n, v in sorted(s.counters.items())})
            for s in sets]})
    for devices in _chunks(inventory.devices, MAX_DEVICES):
        specs.append({"devices": [_device(d) for d in devices]})
    pool = k8s.V1ResourcePool(name=node, generation=generation, resource_slice_count=len(specs))
    return [
        k8s.V1ResourceSlice(
            api_version="resource.k8s.io/v1", kind="ResourceSlice",
            metadata=k8s.V1ObjectMeta(name=slice_name(node, k), labels={"gpuos.io/node": node},
                                      owner_references=[owner] if owner is not None else None),
            spec=k8s.V1ResourceSliceSpec(driver=DRIVER, node_name=node, pool=pool, **spec),
        )
        for k, spec in enumerate(specs)
    ]


class Publisher:
    """Publishes this node's inventory as ResourceSlices whenever it changes.

    ``source`` gives the inventory now; ``api`` is a ``kubernetes.client.ResourceV1Api``, whose
    API client also reads the Node (for the slices' owner).
    """

    def __init__(self, api: Any, node: str, source: Callable[[], Inventory]) -> None:
        self.api = api
        self.nodes: Any = k8s.CoreV1Api(api.api_client)
        self.node = node
        self.source = source
        self.generation: int | None = None
        self._published: Inventory | None = None
        self._owner: Any = None
        self._owner_warned = False
        self._lock = threading.Lock()

    def _node_owner(self) -> Any:
        """The ownerReference to this node's Node, read once; None (asked again next time) while it
        cannot be read, and the slices are published without one."""
        if self._owner is None:
            try:
                uid = self.nodes.read_node(self.node).metadata.uid
            except ApiException as exc:
                if not self._owner_warned:
                    log.warning("cannot read Node %s (%s %s): publishing ResourceSlices without an owner, so they "
                                "outlive the node; grant get on nodes", self.node, exc.status, exc.reason)
                    self._owner_warned = True
                return None
            self._owner = node_owner(self.node, uid)
        return self._owner

    def _existing(self) -> dict[str, Any]:
        listed = self.api.list_resource_slice(field_selector=f"spec.nodeName={self.node},spec.driver={DRIVER}")
        return {s.metadata.name: s for s in listed.items}

    def sync(self, force: bool = False) -> bool:
        """Publish if the inventory changed since the last publication (or ``force``); True if it did."""
        with self._lock:
            inventory = self.source()
            if inventory == self._published and not force:
                return False
            existing = self._existing()
            if self.generation is None:
                # A restarted driver continues the pool's generations, so consumers never mistake
                # the new slices for older ones.
                self.generation = max((s.spec.pool.generation for s in existing.values()), default=0)
            self.generation += 1
            wanted = resource_slices(inventory, self.node, self.generation, self._node_owner())
            for body in wanted:
                old = existing.pop(body.metadata.name, None)
                if old is None:
                    self.api.create_resource_slice(body)
                else:
                    body.metadata.resource_version = old.metadata.resource_version
                    self.api.replace_resource_slice(body.metadata.name, body)
            for name in existing:
                self.api.delete_resource_slice(name)
            self._published = inventory
            log.info("published %d devices in %d ResourceSlices (generation %d)", len(inventory.devices),
                     len(wanted), self.generation)
            return True

    def withdraw(self) -> None:
        """Delete every slice of this node (the driver is going away for good)."""
        with self._lock:
            for name in self._existing():
                self.api.delete_resource_slice(name)
            self._published = None
