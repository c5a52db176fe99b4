"""What the device plugin advertises, and what a kubelet allocation of it asks gpuosd for.

Resources and their device IDs (IDs are at most 63 characters, as the kubelet requires):

- ``gpuos.io/gpu``: whole GPUs; ID = the GPU's UUID.
- ``gpuos.io/gpu-shared``: ``replicas`` MPS shares per GPU; ID = ``<uuid>::shared-<k>``. A
  container given n of them on one GPU gets n/replicas of its SMs and of its memory.
- ``gpuos.io/mig-<profile>``: MIG slices of that profile, as many per GPU as the profile allows;
  ID = ``<uuid>::mig-<profile>-<k>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuos.errors import InvalidArgument
from gpuos.v1 import common_pb2, devices_pb2

PREFIX = "gpuos.io/"
WHOLE = PREFIX + "gpu"
SHARED = PREFIX + "gpu-shared"
MIG = PREFIX + "mig-"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"


@dataclass(frozen=True, order=True)
class Advertised:
    device_id: str
    gpu_uuid: str
    health: str


def advertise(devices: Sequence[devices_pb2.Device], replicas: int) -> dict[str, list[Advertised]]:
    """Every resource and its devices, with health following each GPU's."""
    out: dict[str, list[Advertised]] = {WHOLE: [], SHARED: []}
    for d in devices:
        health = HEALTHY if d.healthy else UNHEALTHY
        out[WHOLE].append(Advertised(d.uuid, d.uuid, health))
        out[SHARED].extend(Advertised(f"{d.uuid}::shared-{k}", d.uuid, health) for k in range(replicas))
        for profile in d.mig_profiles:
            out.setdefault(MIG + profile.name, []).extend(
                Advertised(f"{d.uuid}::mig-{profile.name}-{k}", d.uuid, health) for k in range(profile.max_count)
            )
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
