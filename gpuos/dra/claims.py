"""What a ResourceClaim's allocation asks gpuosd for on this node.

The scheduler writes the allocation into the claim's status: for each device, the request it
answers, the driver, pool and device name, what it consumes of a shareable device's capacity
(``consumedCapacity``) and the configuration (``config``) that applies. This module turns the
results for this driver into gpuos reservations, one per partition:

- whole GPUs of one request: one reservation of all of them (``gpus=N``), so the container sees
  them together in one ``CUDA_VISIBLE_DEVICES``;
- a MIG device: a reservation of its profile;
- an MPS device: a share of ``gpuos.io/compute`` percent of the SMs and ``gpuos.io/memory``
  bytes (from consumed capacity; where the cluster does not track capacity, from the request's
  opaque config ``{"compute": "25", "memory": "20Gi"}``, else the whole capacity);
- a time-slice device: turns weighted by the ``gpuos.io/slots`` consumed, of the scheduler's
  ``MAX_TIMESLICE_JOBS`` a GPU has.

Every partition's keys are ``<claim uid>/<request>/<device>[/<share id>]``: a retried Prepare
that reserves again releases what an interrupted one may have left, and Unprepare releases by them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gpuos.dra.inventory import (
    COMPUTE,
    DRIVER,
    MEMORY,
    SLOTS,
    DeviceRef,
    Kind,
    gpu_index,
    parse,
)
from gpuos.errors import InvalidArgument
from gpuos.scheduler.snapshot import MAX_TIMESLICE_JOBS
from gpuos.v1 import common_pb2, devices_pb2


@dataclass(frozen=True)
class Allocated:
    """One device result of the claim's allocation for this driver."""

    request: str
    pool: str
    device: str
    share_id: str = ""
    consumed: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Partition:
    """One gpuos reservation a claim needs, and the allocated devices it stands for."""

    devices: tuple[Allocated, ...]
    refs: tuple[DeviceRef, ...]
    gpu_uuids: tuple[str, ...]
    resources: common_pb2.Resources
    keys: tuple[str, ...]

    @property
    def request(self) -> str:
        return self.devices[0].request


def _field(obj: Any, name: str) -> Any:
    return getattr(obj, name, None) if obj is not None else None


def allocated(claim: Any, driver: str = DRIVER) -> tuple[list[Allocated], dict[str, dict[str, str]]]:
    """The claim's device results for ``driver`` and, per request, its opaque config parameters
    (later entries override earlier ones, claim config over class config, as the API orders them).

    ``claim`` is the kubernetes client's ``ResourceV1ResourceClaim``. Raises InvalidArgument when the
    claim is not allocated.
    """
    allocation = _field(_field(claim, "status"), "allocation")
    devices = _field(allocation, "devices")
    if devices is None:
        raise InvalidArgument("claim", "the ResourceClaim is not allocated (status.allocation is empty)")
    results = [
        Allocated(r.request, r.pool, r.device, _field(r, "share_id") or "", dict(_field(r, "consumed_capacity") or {}))
        for r in (devices.results or []) if r.driver == driver
    ]
    config: dict[str, dict[str, str]] = {}
    for entry in devices.config or []:
        opaque = _field(entry, "opaque")
        if opaque is None or opaque.driver != driver:
            continue
        parameters = opaque.parameters
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        if not isinstance(parameters, Mapping):
            raise InvalidArgument("config", f"the {driver} config parameters must be an object, got {parameters!r}")
        for request in entry.requests or sorted({r.request for r in results}):
            config.setdefault(request, {}).update({str(k): str(v) for k, v in parameters.items()
                                                   if k not in ("apiVersion", "kind")})
    return results, config


def quantity(text: str, what: str) -> Decimal:
    """A Kubernetes quantity ("20Gi", "25", "500m") as a number; InvalidArgument naming ``what``."""
    from kubernetes.utils import parse_quantity

    try:
        return Decimal(parse_quantity(text))
    except (ValueError, TypeError, ArithmeticError):
        raise InvalidArgument(what, f"{text!r} is not a quantity") from None


def _consumed(device: Allocated, name: str) -> str | None:
    # A capacity may be reported by its qualified name or, being the driver's own, bare.
    consumed = device.consumed or {}
    return consumed.get(name) or consumed.get(name.split("/", 1)[1])


def _share(device: Allocated, gpu: devices_pb2.Device, config: Mapping[str, str]) -> common_pb2.Resources:
    compute_text = _consumed(device, COMPUTE) or config.get("compute")
    memory_text = _consumed(device, MEMORY) or config.get("memory")
    percent = quantity(compute_text, f"{device.request}: compute") if compute_text else Decimal(100)
    if not 0 < percent <= 100:
        raise InvalidArgument(f"{device.request}: compute", f"{compute_text} is not a percentage in (0, 100]")
    resources = common_pb2.Resources(gpu_fraction=float(percent) / 100)
    if memory_text:
        memory = int(quantity(memory_text, f"{device.request}: memory"))
        if not 0 < memory <= gpu.memory_total:
            raise InvalidArgument(f"{device.request}: memory",
                                  f"{memory_text} is not between 1 byte and GPU {gpu.index}'s {gpu.memory_total} bytes")
        resources.memory_bytes = memory
    return resources


def _turns(device: Allocated, gpu: devices_pb2.Device, config: Mapping[str, str]) -> common_pb2.Resources:
    slots_text = _consumed(device, SLOTS) or config.get("slots") or "1"
    slots = quantity(slots_text, f"{device.request}: slots")
    if slots != slots.to_integral_value() or not 1 <= slots <= MAX_TIMESLICE_JOBS:
        raise InvalidArgument(f"{device.request}: slots", f"{slots_text} is not a whole number from 1 to {MAX_TIMESLICE_JOBS}")
    resources = common_pb2.Resources(sharing="timeslice", gpu_fraction=float(slots) / MAX_TIMESLICE_JOBS)
    if "memory" in config:
        resources.memory_bytes = int(quantity(config["memory"], f"{device.request}: memory"))
    return resources


def partitions(
    claim_uid: str, results: Sequence[Allocated], config: Mapping[str, Mapping[str, str]],
    gpus: Sequence[devices_pb2.Device], pool: str,
) -> list[Partition]:
    """The reservations that ``results`` (this driver's part of one claim) stand for on this node,
    whose pool is ``pool`` and whose GPUs gpuosd lists as ``gpus``. Raises InvalidArgument, naming
    the device or request, for anything this node cannot give."""
    by_index = {g.index: g for g in gpus}
    whole: dict[str, list[tuple[Allocated, DeviceRef]]] = {}
    out: list[Partition] = []
    seen: set[tuple[str, str, str]] = set()
    for device in results:
        if device.pool != pool:
            raise InvalidArgument("device", f"{device.device} is allocated from pool {device.pool!r}, "
                                            f"but this node publishes pool {pool!r}")
        if (device.request, device.device, device.share_id) in seen:
            raise InvalidArgument("device", f"{device.device} is allocated twice to request {device.request}")
        seen.add((device.request, device.device, device.share_id))
        index = gpu_index(device.device)
        gpu = by_index.get(index)
        if gpu is None:
            raise InvalidArgument("device", f"{device.device}: this node has no GPU {index}")
        ref = parse(device.device, [p.name for p in gpu.mig_profiles])
        key = f"{claim_uid}/{device.request}/{device.device}" + (f"/{device.share_id}" if device.share_id else "")
        # A subrequest ("main/sub") takes its main request's config, then its own.
        wanted = {**config.get(device.request.split("/", 1)[0], {}), **config.get(device.request, {})}
        if ref.kind is Kind.GPU:
            whole.setdefault(device.request, []).append((device, ref))
            continue
        if ref.kind is Kind.MIG:
            resources = common_pb2.Resources(mig_profile=ref.profile)
        elif ref.kind is Kind.MPS:
            resources = _share(device, gpu, wanted)
        else:
            resources = _turns(device, gpu, wanted)
        out.append(Partition((device,), (ref,), (gpu.uuid,), resources, (key,)))
    grouped = []
    for request, members in whole.items():
        members.sort(key=lambda m: m[1])
        grouped.append(Partition(
            tuple(m[0] for m in members), tuple(m[1] for m in members),
            tuple(by_index[m[1].gpu].uuid for m in members), common_pb2.Resources(gpus=len(members)),
            tuple(f"{claim_uid}/{request}/{m[0].device}" for m in members),
        ))
    return grouped + out
