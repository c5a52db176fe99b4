"""What the DRA driver publishes for this node's GPUs: devices, their attributes and capacity, and
the counter sets that keep MIG layouts to the slots NVIDIA allows.

Per GPU ``i`` (device names are DNS labels, as ResourceSlices require):

- ``gpu-i``: the whole GPU.
- ``gpu-i-mig-<profile>-<start>``: a MIG slice of ``<profile>`` (``3g.40gb`` spelt ``3g-40gb``)
  at memory slice ``<start>``; offered at the first slot gpuosd would choose for that profile,
  and kept while a prepared claim holds it (see below).
- ``gpu-i-mps``: MPS shares (consumable capacity, KEP-5075: ``allowMultipleAllocations`` with
  capacities ``gpuos.io/compute``, percent of the SMs, and ``gpuos.io/memory``).
- ``gpu-i-timeslice``: turns on the GPU (consumable ``gpuos.io/slots``, one per time-sharer the
  scheduler allows a GPU, ``MAX_TIMESLICE_JOBS``).

Partitionable devices (KEP-4815): a MIG-capable GPU has a counter set ``gpu-i`` with one counter
per memory slice (``memory-slice-0`` .. ``-7``, value 1), ``compute-slices`` (7) and, where a
profile may have fewer instances than slots, ``mig-<profile>`` (its maximum count). A MIG device
consumes the memory slices it spans, its compute slices and one of its profile's count; the whole
GPU consumes every memory and compute slice. So the scheduler accepts exactly the layouts
:func:`gpuos.mig.fits_at` accepts (a start slot NVIDIA allows, no overlap, at most seven compute
slices, at most ``max_count`` per profile).

Which MIG slots are offered: gpuosd places a new slice at the first slot that fits
(:func:`gpuos.mig.find_slot`), not at a slot the caller names. So each profile is offered at the
slots gpuosd would give its next slices, in that order (the first-fit slot, the one after it once
that is taken, ...), and republished after every change. The scheduler takes devices in the
order a slice lists them, so a claim lands where it was offered. Should a slice land elsewhere
(the scheduler skipped the first offer), the slice that exists and the device the claim holds are
both counted as taken until the claim ends: the published view can waste a slot, never promise
one twice.

What is offered follows how gpuosd's GPU is used now (a GPU is shared one way at a time): an idle
GPU offers every kind; a GPU with MIG slices only more slices; one with MPS clients only MPS
capacity (less what gpuosd's own jobs hold); one with time-sharers only turns; a GPU held whole,
unhealthy or draining nothing new. Devices that prepared claims hold stay published whatever
happens, so the scheduler keeps counting what they consume.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuos.capacity import gpu_view
from gpuos.errors import InvalidArgument
from gpuos.mig import COMPUTE_SLICES, Instance, MigProfile, find_slot, profiles_reported
from gpuos.scheduler.snapshot import MAX_TIMESLICE_JOBS, MILLI
from gpuos.units import MiB
from gpuos.v1 import devices_pb2

log = logging.getLogger("gpuos.dra")

DRIVER = "gpuos.io"
COMPUTE = "gpuos.io/compute"
MEMORY = "gpuos.io/memory"
SLOTS = "gpuos.io/slots"
MEMORY_SLICES = 8


class Kind(str, enum.Enum):
    """How a published device holds its GPU (the ``type`` attribute DeviceClasses select on)."""

    GPU = "gpu"
    MIG = "mig"
    MPS = "mps"
    TIMESLICE = "timeslice"


def label(profile: str) -> str:
    """A MIG profile name as it appears in device and counter names (``3g.40gb`` -> ``3g-40gb``)."""
    return profile.replace(".", "-").lower()


@dataclass(frozen=True, order=True)
class DeviceRef:
    """What a published device name stands for: a kind of partition of GPU ``gpu``."""

    gpu: int
    kind: Kind
    profile: str = ""  # MIG only, as gpuos names it ("3g.40gb")
    start: int = 0  # MIG only: the first memory slice

    @property
    def name(self) -> str:
        if self.kind is Kind.GPU:
            return f"gpu-{self.gpu}"
        if self.kind is Kind.MIG:
            return f"gpu-{self.gpu}-mig-{label(self.profile)}-{self.start}"
        return f"gpu-{self.gpu}-{self.kind.value}"

    @property
    def counter_set(self) -> str:
        return f"gpu-{self.gpu}"


_NAME = re.compile(r"^gpu-(\d+)(?:-(mps|timeslice)|-mig-([a-z0-9-]+)-(\d+))?$")


def gpu_index(name: str) -> int:
    """The GPU index a published device name carries; InvalidArgument for a name not of this driver."""
    match = _NAME.match(name)
    if not match:
        raise InvalidArgument("device", f"{name!r} is not a device this driver publishes")
    return int(match.group(1))


def parse(name: str, profiles: Iterable[str] = ()) -> DeviceRef:
    """The device a published name stands for; MIG names are resolved against ``profiles`` (the
    GPU's profile names). Raises InvalidArgument naming the device for anything else."""
    match = _NAME.match(name)
    if not match:
        raise InvalidArgument("device", f"{name!r} is not a device this driver publishes")
    gpu = int(match.group(1))
    if match.group(2):
        return DeviceRef(gpu, Kind(match.group(2)))
    if match.group(3):
        wanted = match.group(3)
        profile = next((p for p in profiles if label(p) == wanted), None)
        if profile is None:
            raise InvalidArgument("device", f"{name!r}: GPU {gpu} has no MIG profile {wanted!r}")
        return DeviceRef(gpu, Kind.MIG, profile, int(match.group(4)))
    return DeviceRef(gpu, Kind.GPU)


Attribute = str | int | bool


@dataclass(frozen=True)
class Capacity:
    """A device capacity; ``default`` and the range make it consumable (a request policy)."""

    value: str
    default: str = ""
    minimum: str = ""
    maximum: str = ""
    step: str = ""


@dataclass(frozen=True)
class Published:
    """One device as published: its name's meaning, attributes, capacity and counter consumption."""

    ref: DeviceRef
    attributes: Mapping[str, Attribute]
    capacity: Mapping[str, Capacity]
    consumes: Mapping[str, int] = field(default_factory=dict)
    multiple: bool = False

    @property
    def name(self) -> str:
        return self.ref.name


@dataclass(frozen=True)
class CounterSet:
    name: str
    counters: Mapping[str, int]


@dataclass(frozen=True)
class Inventory:
    """Everything one node publishes, in a stable order (so equal inventories compare equal)."""

    counter_sets: tuple[CounterSet, ...] = ()
    devices: tuple[Published, ...] = ()


ALL_KINDS = frozenset(Kind)


def mig_rules(device: devices_pb2.Device) -> tuple[MigProfile, ...]:
    """The slot rules of the MIG profiles ``device`` reports (memory slices and start slots come
    with the listing, from NVML on a real GPU), the same the device plugin plans by."""
    return profiles_reported(device.mig_profiles)


def _counters(rules: Sequence[MigProfile], foreign: Sequence[Instance]) -> dict[str, int]:
    by_name = {p.name: p for p in rules}
    taken = {s for i in foreign if i.profile in by_name
             for s in range(i.start, i.start + by_name[i.profile].memory_slices)}
    counters = {f"memory-slice-{s}": 0 if s in taken else 1 for s in range(MEMORY_SLICES)}
    counters["compute-slices"] = COMPUTE_SLICES - sum(by_name[i.profile].slices for i in foreign if i.profile in by_name)
    for p in rules:
        # Only where the count binds: with as many instances allowed as slots, overlap already limits it.
        if p.max_count < len(p.placements):
            counters[f"mig-{label(p.name)}"] = p.max_count - sum(1 for i in foreign if i.profile == p.name)
    return counters


def _mig_consumes(rule: MigProfile, start: int, counters: Mapping[str, int]) -> dict[str, int]:
    out = {f"memory-slice-{s}": 1 for s in range(start, start + rule.memory_slices)}
    out["compute-slices"] = rule.slices
    if f"mig-{label(rule.name)}" in counters:
        out[f"mig-{label(rule.name)}"] = 1
    return out


def _whole_consumes() -> dict[str, int]:
    out = {f"memory-slice-{s}": 1 for s in range(MEMORY_SLICES)}
    out["compute-slices"] = COMPUTE_SLICES
    return out


def _memory_mib(n: int) -> str:
    return f"{n // MiB}Mi"


def inventory(
    devices: Sequence[devices_pb2.Device],
    held: Collection[DeviceRef] = (),
    held_jobs: Collection[str] = (),
    kinds: Collection[Kind] = ALL_KINDS,
) -> Inventory:
    """What to publish for ``devices`` (gpuosd's listing), given the devices prepared claims hold
    (``held``) and the gpuosd jobs that hold them (``held_jobs``); ``kinds`` limits what is offered."""
    counter_sets: list[CounterSet] = []
    out: list[Published] = []
    for d in sorted(devices, key=lambda d: d.index):
        mine = {r for r in held if r.gpu == d.index}
        sets, published = _gpu(d, mine, [a for a in d.allocations if a.job_id not in held_jobs], kinds)
        counter_sets += sets
        out += published
    return Inventory(tuple(counter_sets), tuple(out))


def _gpu(
    d: devices_pb2.Device, mine: set[DeviceRef], foreign: Sequence[devices_pb2.Allocation], kinds: Collection[Kind]
) -> tuple[list[CounterSet], list[Published]]:
    """One GPU's counter set (if it has MIG slot rules) and devices."""
    rules = mig_rules(d) if Kind.MIG in kinds or any(r.kind is Kind.MIG for r in mine) else ()
    held_slices = {(r.profile, r.start) for r in mine if r.kind is Kind.MIG}
    instances = [Instance(m.profile, m.start) for m in d.mig_instances]
    counters = _counters(rules, [i for i in instances if (i.profile, i.start) not in held_slices]) if rules else {}
    base: dict[str, Attribute] = {"uuid": d.uuid, "index": d.index, "model": d.model, "migCapable": bool(d.mig_profiles)}
    if d.numa_node >= 0:
        base["numaNode"] = d.numa_node
    mode = d.partitioning or "idle"
    usable = d.healthy and not d.draining

    def offered(kind: Kind, modes: tuple[str, ...]) -> bool:
        return kind in kinds and usable and mode in modes

    def attrs(kind: Kind, **extra: Attribute) -> dict[str, Attribute]:
        return {"type": kind.value, **base, **extra}

    out: list[Published] = []
    whole = DeviceRef(d.index, Kind.GPU)
    if whole in mine or offered(Kind.GPU, ("idle",)):
        out.append(Published(whole, attrs(Kind.GPU), {"memory": Capacity(str(d.memory_total))},
                             _whole_consumes() if counters else {}))

    by_name = {p.name: p for p in rules}
    slices = {r for r in mine if r.kind is Kind.MIG and r.profile in by_name}
    if offered(Kind.MIG, ("idle", "mig")):
        for rule in rules:
            # The slots gpuosd would give one, two, ... more slices of this profile, so a claim
            # may ask for several at once.
            placed = list(instances)
            while (slot := find_slot(rules, placed, rule.name)) is not None:
                slices.add(DeviceRef(d.index, Kind.MIG, rule.name, slot))
                placed.append(Instance(rule.name, slot))
    for ref in sorted(slices):
        rule = by_name[ref.profile]
        extra: dict[str, Attribute] = {"profile": rule.name, "placement": ref.start, "computeSlices": rule.slices}
        out.append(Published(ref, attrs(Kind.MIG, **extra), {"memory": Capacity(str(rule.memory_bytes))},
                             _mig_consumes(rule, ref.start, counters)))

    # What gpuosd's own jobs hold is not the scheduler's to give: the capacity is the rest, as the
    # device plugin counts it.
    rest = gpu_view(d, foreign)
    mps = DeviceRef(d.index, Kind.MPS)
    percent = rest.milli_free * 100 // MILLI  # whole percents, rounded down: never more than is free
    memory = rest.memory_free
    if mps in mine or (offered(Kind.MPS, ("idle", "mps")) and percent >= 1 and memory >= MiB):
        percent, memory = max(percent, 1), max(memory, MiB)
        out.append(Published(mps, attrs(Kind.MPS), {
            COMPUTE: Capacity(str(percent), default=str(percent), minimum="1", maximum=str(percent), step="1"),
            MEMORY: Capacity(_memory_mib(memory), default=_memory_mib(memory), minimum="1Mi", step="1Mi"),
        }, multiple=True))

    turns = DeviceRef(d.index, Kind.TIMESLICE)
    free = MAX_TIMESLICE_JOBS - len(rest.jobs)
    if turns in mine or (offered(Kind.TIMESLICE, ("idle", "timeslice")) and free >= 1):
        free = max(free, 1)
        out.append(Published(turns, attrs(Kind.TIMESLICE), {
            SLOTS: Capacity(str(free), default="1", minimum="1", maximum=str(free), step="1"),
        }, multiple=True))
    return ([CounterSet(f"gpu-{d.index}", counters)] if counters else []), out
