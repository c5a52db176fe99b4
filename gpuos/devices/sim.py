"""The simulated backend: GPUs from the catalog, whose memory and utilisation follow the jobs
the daemon attaches to them, so everything above the backend runs unchanged without a GPU.

``SimBackend("2xH100-80GB")`` or ``SimBackend("1xA100-40GB,1xL4")``: count x model, comma
separated, model names as in :mod:`gpuos.devices.catalog` (case-insensitive). A group may end
in ``@N``, the host NUMA node its GPUs are attached to (``2xH100-80GB@0,2xH100-80GB@1`` is a
two-socket host); without it a simulated GPU is on node 0, as on a one-socket host.

Suspend-to-host is modelled on the CUDA driver's process checkpoint: ``suspend`` takes all the
memory a process holds on its GPU (what ``attach`` granted it, or ``set_process_memory`` set),
"copies" it to the host over the model's host link, and frees it on the GPU; the suspended
process then shows no GPU memory and no utilisation, and is not listed among the GPU's
processes (as NVML no longer lists a checkpointed process). A transfer takes
``bytes / GpuModel.host_link_bytes_per_s`` seconds (a PCIe x16 model figure: 50 GB/s on Gen5
parts such as the H100, 25 GB/s Gen4, 12 GB/s Gen3), and the call really sleeps that long, so
the daemon sees time pass as it would on hardware. ``restore`` puts the memory back on the GPU
it left or on any other GPU of the same model (``cross_gpu``), if that GPU has the room free.
Suspension is on unless ``suspend=False`` is given or ``GPUOS_SIM_SUSPEND=0`` is set (to see
the unsupported path).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field, replace

import psutil

from gpuos.devices.backend import (
    DeviceBackend,
    DeviceInfo,
    DeviceStatus,
    MigInstance,
    ProcessUsage,
    SuspendSupport,
    Transfer,
)
from gpuos.devices.catalog import GpuModel, lookup, model_names
from gpuos.errors import BackendError, InvalidArgument
from gpuos.mig import Instance, find_slot

MAX_GPUS_PER_GROUP = 64
# Idle and full-load figures of a data-centre GPU; only their shape matters (rising with load).
_IDLE_TEMP_C, _FULL_TEMP_C = 32.0, 72.0
_IDLE_POWER_FRACTION = 0.15
_TDP_W = {
    "H100": 700.0,
    "H200": 700.0,
    "A100": 400.0,
    "L40S": 350.0,
    "A10": 150.0,
    "L4": 72.0,
    "T4": 70.0,
    "V100": 300.0,
}

MAX_NUMA_NODE = 63
_GROUP = re.compile(r"^\s*(-?\d+)\s*[xX]\s*([A-Za-z0-9][A-Za-z0-9.-]*)\s*(?:@\s*(\d+)\s*)?$")


def parse_spec(spec: str) -> list[GpuModel]:
    """The GPUs a ``--sim-gpus`` spec describes, in index order."""
    return [model for model, _ in parse_groups(spec)]


def parse_groups(spec: str) -> list[tuple[GpuModel, int]]:
    """Each GPU a ``--sim-gpus`` spec describes, with its NUMA node, in index order."""
    field_name = "sim_gpus"
    known = ", ".join(model_names())
    if not spec or not spec.strip():
        raise InvalidArgument(field_name, f"no GPUs given; write e.g. 2xH100-80GB (models: {known})")
    gpus: list[tuple[GpuModel, int]] = []
    for group in spec.split(","):
        match = _GROUP.match(group)
        if not match:
            raise InvalidArgument(field_name, f"{group.strip()!r} is not COUNTxMODEL[@NUMA], e.g. 2xH100-80GB")
        count, name = int(match.group(1)), match.group(2)
        node = int(match.group(3) or 0)
        if node > MAX_NUMA_NODE:
            raise InvalidArgument(field_name, f"NUMA node {node} in {group.strip()!r} must be 0..{MAX_NUMA_NODE}")
        if not 1 <= count <= MAX_GPUS_PER_GROUP:
            raise InvalidArgument(
                field_name, f"count {count} in {group.strip()!r} must be 1..{MAX_GPUS_PER_GROUP}"
            )
        model = lookup(name)
        if model is None:
            raise InvalidArgument(field_name, f"unknown GPU model {name!r}; known models: {known}")
        gpus.extend([(model, node)] * count)
    return gpus


def _uuid(index: int, model: str) -> str:
    # Stable across restarts so jobs re-adopted after a daemon restart find their GPU again.
    digest = hashlib.sha256(f"{index}:{model}".encode()).hexdigest()
    return f"GPU-sim-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _tdp(model: str) -> float:
    return next((w for prefix, w in _TDP_W.items() if model.startswith(prefix)), 250.0)


@dataclass
class _Process:
    memory: int
    compute_milli: int
    paused: bool = False


@dataclass
class _Suspended:
    """A process whose GPU memory is in host memory (or on its way there or back)."""

    index: int  # the GPU it was suspended from
    process: _Process
    moving: bool = True  # a suspend or restore is in flight


@dataclass
class _Gpu:
    info: DeviceInfo
    healthy: bool = True
    processes: dict[int, _Process] = field(default_factory=dict)
    mig: list[MigInstance] = field(default_factory=list)
    next_gi: int = 1


class SimBackend(DeviceBackend):
    """Simulated GPUs. Thread-safe: the daemon's control loop, API and reaper all call it."""

    name = "sim"

    def __init__(self, spec: str, *, suspend: bool | None = None) -> None:
        groups = parse_groups(spec)
        self._gpus = [
            _Gpu(DeviceInfo(i, _uuid(i, m.name), m.name, m.memory_bytes, m.sm_count, m.mig_profiles, node))
            for i, (m, node) in enumerate(groups)
        ]
        self._links = [m.host_link_bytes_per_s for m, _ in groups]
        self._lock = threading.Lock()
        if suspend is None:
            suspend = os.environ.get("GPUOS_SIM_SUSPEND", "1").strip().lower() not in ("0", "off", "false", "no")
        self._suspend_on = suspend
        self._suspended: dict[int, _Suspended] = {}

    def _gpu(self, index: int) -> _Gpu:
        if not 0 <= index < len(self._gpus):
            raise InvalidArgument("index", f"there is no GPU {index}; GPUs are 0..{len(self._gpus) - 1}")
        return self._gpus[index]

    # -- DeviceBackend -------------------------------------------------------------------------

    def devices(self) -> list[DeviceInfo]:
        return [g.info for g in self._gpus]

    def status(self) -> list[DeviceStatus]:
        with self._lock:
            return [self._status(g) for g in self._gpus]

    def _status(self, gpu: _Gpu) -> DeviceStatus:
        # A real driver forgets a process once it has exited; so does the simulator.
        for pid in [p for p in gpu.processes if not psutil.pid_exists(p)]:
            del gpu.processes[pid]
        for pid in [p for p, s in self._suspended.items() if not s.moving and not psutil.pid_exists(p)]:
            del self._suspended[pid]
        index = gpu.info.index
        if not gpu.healthy:
            # A lost GPU answers no queries; the daemon sees only that it is unhealthy.
            return DeviceStatus(index, False, 0.0, 0)
        compute = sum(p.compute_milli for p in gpu.processes.values() if not p.paused)
        utilization = min(100.0, compute / 10)
        load = utilization / 100
        tdp = _tdp(gpu.info.model)
        return DeviceStatus(
            index=index,
            healthy=True,
            utilization_pct=utilization,
            memory_used=sum(p.memory for p in gpu.processes.values()),
            processes=tuple(ProcessUsage(pid, p.memory) for pid, p in sorted(gpu.processes.items())),
            temperature_c=round(_IDLE_TEMP_C + (_FULL_TEMP_C - _IDLE_TEMP_C) * load, 1),
            power_w=round(tdp * (_IDLE_POWER_FRACTION + (1 - _IDLE_POWER_FRACTION) * load), 1),
        )

    def attach(self, index: int, pid: int, memory_bytes: int, compute_milli: int) -> None:
        if memory_bytes < 0 or compute_milli < 0:
            raise InvalidArgument("attach", "memory and compute shares cannot be negative")
        with self._lock:
            gpu = self._gpu(index)
            if pid in self._suspended:
                return  # its memory is in host memory until restored
            previous = gpu.processes.get(pid)
            gpu.processes[pid] = _Process(memory_bytes, compute_milli, previous.paused if previous else False)

    def detach(self, index: int, pid: int) -> None:
        with self._lock:
            self._gpu(index).processes.pop(pid, None)
            # A suspended process that ended takes its host copy with it.
            held = self._suspended.get(pid)
            if held is not None and not held.moving:
                del self._suspended[pid]

    def set_paused(self, index: int, pid: int, paused: bool) -> None:
        with self._lock:
            process = self._gpu(index).processes.get(pid)
            if process is not None:
                process.paused = paused

    # -- suspend-to-host (the model is in the module docstring) -----------------------------------

    def suspend_support(self) -> SuspendSupport:
        if not self._suspend_on:
            return SuspendSupport(False, detail="suspension is turned off in the simulator (GPUOS_SIM_SUSPEND=0)")
        return SuspendSupport(
            True, cross_gpu=True,
            detail="simulated: bytes / the model's host-link bandwidth; restore onto any GPU of the same model",
        )

    def suspend(self, index: int, pid: int) -> Transfer:
        with self._lock:
            self._check_suspend_on()
            gpu = self._gpu(index)
            if pid in self._suspended:
                raise BackendError(f"process {pid} is already suspended to host memory")
            if not gpu.healthy:
                raise BackendError(f"GPU {index} does not answer; its processes cannot be suspended")
            process = gpu.processes.get(pid)
            if process is None:
                raise BackendError(f"process {pid} has no memory on GPU {index} to suspend")
            self._suspended[pid] = _Suspended(index, process)
        seconds = self._move(index, process.memory)
        with self._lock:
            # Freed only once copied out, as the driver frees it at the end of the checkpoint.
            gpu.processes.pop(pid, None)
            self._suspended[pid].moving = False
        return Transfer(process.memory, seconds)

    def restore(self, pid: int, index: int, from_index: int) -> Transfer:
        with self._lock:
            self._check_suspend_on()
            target = self._gpu(index)
            held = self._suspended.get(pid)
            if held is None or held.moving:
                raise BackendError(f"process {pid} is not suspended (or is being moved now)")
            if held.index != from_index:
                raise BackendError(f"process {pid} was suspended from GPU {held.index}, not GPU {from_index}")
            source = self._gpu(held.index).info
            if target.info.model != source.model:
                raise BackendError(f"process {pid} was suspended from a {source.model}; GPU {index} is a "
                                   f"{target.info.model}, and a restore needs the same model")
            if not target.healthy:
                raise BackendError(f"GPU {index} does not answer; nothing can be restored onto it")
            need = held.process.memory
            free = target.info.memory_total - sum(p.memory for p in target.processes.values())
            if need > free:
                raise BackendError(f"GPU {index} has {free} bytes free; process {pid} needs {need} to be restored")
            held.moving = True
            # Held on the target from the start, so nothing else is given that room meanwhile.
            target.processes[pid] = held.process
        seconds = self._move(index, need)
        with self._lock:
            self._suspended.pop(pid, None)
        return Transfer(need, seconds)

    def adopt_suspended(self, index: int, pid: int, memory_bytes: int, compute_milli: int) -> None:
        """A restarted daemon tells the backend of a process it had suspended from GPU ``index``.

        The driver keeps a real checkpoint in the process itself; the simulator's record of it
        lived in the old daemon, so this rebuilds it.
        """
        with self._lock:
            self._gpu(index).processes.pop(pid, None)
            self._suspended.setdefault(pid, _Suspended(index, _Process(memory_bytes, compute_milli, True), False))

    def _check_suspend_on(self) -> None:
        if not self._suspend_on:
            raise BackendError(self.suspend_support().detail)

    def _move(self, index: int, size: int) -> float:
        """Model a copy of ``size`` bytes over GPU ``index``'s host link: sleep its duration."""
        seconds = size / self._links[index] if self._links[index] > 0 else 0.0
        time.sleep(seconds)
        return seconds

    # -- test and fault-injection hooks ---------------------------------------------------------

    def set_process_memory(self, index: int, pid: int, memory_bytes: int) -> None:
        """Pretend process ``pid`` now holds ``memory_bytes`` on GPU ``index`` (a job growing)."""
        with self._lock:
            process = self._gpu(index).processes.get(pid)
            if process is None:
                raise InvalidArgument("pid", f"process {pid} is not attached to GPU {index}")
            process.memory = memory_bytes

    def fail_device(self, index: int) -> None:
        """GPU ``index`` falls off the bus: unhealthy until :meth:`restore_device`."""
        with self._lock:
            self._gpu(index).healthy = False

    def restore_device(self, index: int) -> None:
        with self._lock:
            self._gpu(index).healthy = True

    # -- MIG and MPS ----------------------------------------------------------------------------

    def mig_instances(self, index: int) -> list[MigInstance]:
        with self._lock:
            return list(self._gpu(index).mig)

    def create_mig_instance(self, index: int, profile: str, start: int) -> MigInstance:
        with self._lock:
            gpu = self._gpu(index)
            info = gpu.info
            if not info.mig_capable:
                raise BackendError(f"GPU {index} ({info.model}) does not support MIG")
            wanted = info.mig_profile(profile)
            if wanted is None:
                names = ", ".join(p.name for p in info.mig_profiles)
                raise BackendError(f"{info.model} has no MIG profile {profile!r}; it has {names}")
            if start not in wanted.placements:
                raise BackendError(f"{profile} cannot start at slot {start}; allowed: {wanted.placements}")
            # The driver refuses exactly what the layout rules refuse: ask them whether ``start``
            # is free, by placing the profile with only that slot allowed.
            existing = [Instance(m.profile, m.start) for m in gpu.mig]
            only_here = [
                replace(p, placements=(start,)) if p.name == profile else p for p in info.mig_profiles
            ]
            if find_slot(only_here, existing, profile) != start:
                raise BackendError(
                    f"{profile} does not fit at slot {start} of GPU {index} beside "
                    f"{[(m.profile, m.start) for m in gpu.mig]}"
                )
            digest = hashlib.sha256(f"{info.uuid}:{gpu.next_gi}:{profile}:{start}".encode()).hexdigest()
            # Like the driver: each GPU instance gets an id of its own, and the one compute
            # instance made in it is that instance's first, id 0.
            instance = MigInstance(
                gpu.next_gi,
                profile,
                start,
                f"MIG-sim-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}",
                compute_instance=0,
            )
            gpu.next_gi += 1
            gpu.mig.append(instance)
            return instance

    def destroy_mig_instance(self, index: int, uuid: str) -> None:
        with self._lock:
            gpu = self._gpu(index)
            instance = next((m for m in gpu.mig if m.uuid == uuid), None)
            if instance is None:
                raise BackendError(f"GPU {index} has no MIG instance {uuid}")
            gpu.mig.remove(instance)

    def mps_control_command(self) -> list[str]:
        # A stand-in with nvidia-cuda-mps-control's command-line contract (see sim_mps).
        return [sys.executable, "-m", "gpuos.devices.sim_mps"]
