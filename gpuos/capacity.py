"""The room a GPU of gpuosd's device listing has left, by the scheduler's own fit rules.

The node agents (the device plugin, the DRA driver) offer Kubernetes what gpuosd would still
accept; both work it out here, from what ``DeviceService.List`` returns (each GPU's allocations
and MIG instances), with the checks ``Reserve`` itself makes (:func:`gpuos.scheduler.framework.gpu_fits`).
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.jobs import Partition, PartitionKind, Resources
from gpuos.mig import Instance, profiles_reported
from gpuos.scheduler import GpuView, JobView, NodeView
from gpuos.scheduler.framework import gpu_fits, take
from gpuos.scheduler.snapshot import MILLI
from gpuos.v1 import devices_pb2


def gpu_view(device: devices_pb2.Device, allocations: Sequence[devices_pb2.Allocation] | None = None) -> GpuView:
    """gpuosd's ``device`` as the scheduler's fit rules see it: its room after ``allocations``
    (default: all of its allocations).

    A draining or failed GPU is not healthy: gpuosd places nothing new on it.
    """
    allocations = device.allocations if allocations is None else allocations
    profiles = profiles_reported(device.mig_profiles)
    milli_used = memory_used = 0
    kinds: set[PartitionKind] = set()
    for a in allocations:
        try:
            kind = Partition.parse(a.partition).kind
        except ValueError:
            kind = PartitionKind.EXCLUSIVE  # a partition this module does not know: assume the worst
        kinds.add(kind)
        # Turns share time, not space: a time-sharer's weight takes none of the GPU's compute.
        if kind not in (PartitionKind.TIMESLICE, PartitionKind.EXECUTOR):
            milli_used += a.compute_milli
        memory_used += a.memory_limit or (device.memory_total if kind is PartitionKind.EXCLUSIVE else 0)
    sharing = ""
    for kind in (PartitionKind.MIG, PartitionKind.MPS, PartitionKind.TIMESLICE, PartitionKind.EXECUTOR):
        if kind in kinds:
            sharing = kind.sharing
            break
    instances = tuple(Instance(m.profile, m.start) for m in device.mig_instances)
    return GpuView(
        index=device.index, model=device.model, memory_total=device.memory_total,
        memory_free=device.memory_total - memory_used, milli_free=MILLI - milli_used,
        healthy=device.healthy and not device.draining, uuid=device.uuid, mig_profiles=profiles,
        mig_slices_used=sum(next((p.slices for p in profiles if p.name == i.profile), 0) for i in instances),
        jobs=tuple(f"(allocation {k})" for k in range(len(allocations))),
        sharing=sharing, mig_instances=instances,
    )


def room(gpu: GpuView, request: Resources, most: int) -> int:
    """How many more of ``request`` ``gpu`` takes, one after another (at most ``most``)."""
    node = NodeView("(agent)", (gpu,))
    probe = JobView(id="(probe)", request=request)
    count = 0
    while count < most and gpu_fits(request, node.gpus[0]):
        node, _ = take(probe, node, node.gpus)
        count += 1
    return count
