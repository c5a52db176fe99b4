"""What the device plugin advertises, and what a kubelet allocation of it asks gpuosd for.

Resources and their device IDs (IDs are at most 63 characters, as the kubelet requires):

- ``gpuos.io/gpu``: whole GPUs; ID = the GPU's UUID.
- ``gpuos.io/gpu-shared``: ``replicas`` MPS shares per GPU; ID = ``<uuid>::shared-<k>``. A
  container given n of them on one GPU gets n/replicas of its SMs and of its memory.
- ``gpuos.io/mig-<profile>``: MIG slices of that profile, as many per GPU as the profile allows;
  ID = ``<uuid>::mig-<profile>-<k>``.

Every resource is offered on every GPU, but a GPU is shared one way at a time (whole, MPS shares,
or MIG slices) and only as far as it has room. :func:`advertise` says, from gpuosd's device state
(what ``DeviceService.List`` returns: each GPU's allocations and MIG instances) and the device IDs
that containers hold now, which devices the kubelet may still hand out: those Healthy, the rest
Unhealthy. A device a container holds stays Healthy while its GPU is: the kubelet does not hand
it out again, and an Unhealthy device would mark that container's pod as failing. The fit rules
are the scheduler's own (:mod:`gpuos.capacity`, shared with the DRA driver: the scheduler's
``gpu_fits``, MIG slots by :mod:`gpuos.mig`), so the plugin offers exactly what ``Reserve`` would accept.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gpuos.capacity import gpu_view, room
from gpuos.errors import InvalidArgument
from gpuos.jobs import Resources
from gpuos.scheduler.snapshot import MILLI
from gpuos.v1 import common_pb2, devices_pb2

PREFIX = "gpuos.io/"
WHOLE = PREFIX + "gpu"
SHARED = PREFIX + "gpu-shared"
MIG = PREFIX + "mig-"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"
NO_NUMA = -1


@dataclass(frozen=True, order=True)
class Advertised:
    device_id: str
    gpu_uuid: str
    health: str
    # The host NUMA node of the device's GPU, for the kubelet's topology hints; -1 unknown.
    numa_node: int = NO_NUMA


def share_request(shares: int, replicas: int) -> Resources:
    """The gpuos request of ``shares`` of a GPU's ``replicas`` MPS shares (as Reserve converts it:
    all of them is the whole GPU)."""
    milli = round(shares * MILLI / replicas)
    return Resources(gpus=1) if milli >= MILLI else Resources(gpu_milli=milli)


def _offer(ids: Sequence[str], held: Collection[str], free: int, usable: bool) -> list[tuple[str, str]]:
    """Health of ``ids``: held ones Healthy, then the first ``free`` others; all Unhealthy if not usable."""
    out = []
    for device_id in ids:
        if not usable:
            health = UNHEALTHY
        elif device_id in held:
            health = HEALTHY
        elif free > 0:
            health, free = HEALTHY, free - 1
        else:
            health = UNHEALTHY
        out.append((device_id, health))
    return out


def advertise(devices: Sequence[devices_pb2.Device], replicas: int,
              held: Collection[str] = frozenset()) -> dict[str, list[Advertised]]:
    """Every resource and its devices, Healthy exactly where the kubelet may hand them out now.

    ``held``: the device IDs containers hold now (the keys of the plugin's reservations).
    """
    if replicas < 1:
        raise InvalidArgument("replicas", f"must be at least 1, got {replicas}")
    out: dict[str, list[Advertised]] = {WHOLE: [], SHARED: []}
    for d in devices:
        gpu = gpu_view(d)
        usable = gpu.healthy
        numa = d.numa_node if d.numa_node >= 0 else NO_NUMA

        def add(resource: str, offered: list[tuple[str, str]], uuid: str = d.uuid, node: int = numa) -> None:
            out.setdefault(resource, []).extend(Advertised(i, uuid, h, node) for i, h in offered)

        add(WHOLE, _offer([d.uuid], held, room(gpu, Resources(gpus=1), 1), usable))
        shares = [f"{d.uuid}::shared-{k}" for k in range(replicas)]
        free = room(gpu, share_request(1, replicas), replicas)
        add(SHARED, _offer(shares, held, free, usable))
        for profile in gpu.mig_profiles:
            ids = [f"{d.uuid}::mig-{profile.name}-{k}" for k in range(profile.max_count)]
            free = room(gpu, Resources(mig_profile=profile.name), profile.max_count)
            add(MIG + profile.name, _offer(ids, held, free, usable))
    return out


def gpu_of(device_id: str) -> str:
    return device_id.split("::", 1)[0]


def request_for(
    resource: str, device_ids: Sequence[str], advertised: Sequence[Advertised], replicas: int
) -> tuple[list[str], common_pb2.Resources]:
    """The GPUs and the gpuos request that a kubelet allocation of ``device_ids`` stands for."""
    known = {a.device_id for a in advertised}
    if not device_ids:
        raise InvalidArgument("devices_ids", f"the allocation of {resource} names no devices")
    for device_id in device_ids:
        if device_id not in known:
            raise InvalidArgument("devices_ids", f"{device_id!r} is not a device of {resource} on this node")
    if len(set(device_ids)) != len(device_ids):
        raise InvalidArgument("devices_ids", "the allocation names a device twice")
    gpus = sorted({gpu_of(i) for i in device_ids})
    if resource == WHOLE:
        return gpus, common_pb2.Resources(gpus=len(gpus))
    if len(gpus) != 1:
        raise InvalidArgument("devices_ids", f"{resource} devices of one container must be on one GPU, got {len(gpus)}")
    if resource == SHARED:
        if len(device_ids) > replicas:
            raise InvalidArgument("devices_ids", f"more than the {replicas} shares one GPU has")
        fraction = len(device_ids) / replicas
        return gpus, common_pb2.Resources(gpu_fraction=fraction)
    if resource.startswith(MIG):
        if len(device_ids) != 1:
            raise InvalidArgument("devices_ids", "a container takes one MIG slice of a profile")
        return gpus, common_pb2.Resources(mig_profile=resource[len(MIG):])
    raise InvalidArgument("resource", f"{resource!r} is not a gpuos resource")


def probe_request(resource: str, replicas: int, size: int) -> common_pb2.Resources:
    """The request one container of ``size`` devices of ``resource`` makes on one GPU (for ranking)."""
    if resource == SHARED:
        return common_pb2.Resources(gpu_fraction=min(1.0, size / replicas))
    if resource.startswith(MIG):
        return common_pb2.Resources(mig_profile=resource[len(MIG):])
    return common_pb2.Resources(gpus=1)
