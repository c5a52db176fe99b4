"""The simulated backend: GPUs from the catalog, whose memory and utilisation follow the jobs
the daemon attaches to them, so everything above the backend runs unchanged without a GPU.

``SimBackend("2xH100-80GB")`` or ``SimBackend("1xA100-40GB,1xL4")``: count x model, comma
separated, model names as in :mod:`gpuos.devices.catalog` (case-insensitive).
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from dataclasses import dataclass, field, replace

import psutil

from gpuos.devices.backend import DeviceBackend, DeviceInfo, DeviceStatus, MigInstance, ProcessUsage
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

_GROUP = re.compile(r"^\s*(-?\d+)\s*[xX]\s*([A-Za-z0-9][A-Za-z0-9.-]*)\s*$")


def parse_spec(spec: str) -> list[GpuModel]:
    """The GPUs a ``--sim-gpus`` spec describes, in index order."""
    field_name = "sim_gpus"
    known = ", ".join(model_names())
    if not spec or not spec.strip():
        raise InvalidArgument(field_name, f"no GPUs given; write e.g. 2xH100-80GB (models: {known})")
    gpus: list[GpuModel] = []
    for group in spec.split(","):
        match = _GROUP.match(group)
        if not match:
            raise InvalidArgument(field_name, f"{group.strip()!r} is not COUNTxMODEL, e.g. 2xH100-80GB")
        count, name = int(match.group(1)), match.group(2)
        if not 1 <= count <= MAX_GPUS_PER_GROUP:
            raise InvalidArgument(
                field_name, f"count {count} in {group.strip()!r} must be 1..{MAX_GPUS_PER_GROUP}"
            )
        model = lookup(name)
        if model is None:
            raise InvalidArgument(field_name, f"unknown GPU model {name!r}; known models: {known}")
        gpus.extend([model] * count)
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
class _Gpu:
    info: DeviceInfo
    healthy: bool = True
    processes: dict[int, _Process] = field(default_factory=dict)
    mig: list[MigInstance] = field(default_factory=list)
    next_gi: int = 1


class SimBackend(DeviceBackend):
    """Simulated GPUs. Thread-safe: the daemon's control loop, API and reaper all call it."""

    name = "sim"

    def __init__(self, spec: str) -> None:
        models = parse_spec(spec)
        self._gpus = [
            _Gpu(DeviceInfo(i, _uuid(i, m.name), m.name, m.memory_bytes, m.sm_count, m.mig_profiles))
            for i, m in enumerate(models)
        ]
        self._lock = threading.Lock()

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
            previous = gpu.processes.get(pid)
            gpu.processes[pid] = _Process(memory_bytes, compute_milli, previous.paused if previous else False)

    def detach(self, index: int, pid: int) -> None:
        with self._lock:
            self._gpu(index).processes.pop(pid, None)

    def set_paused(self, index: int, pid: int, paused: bool) -> None:
        with self._lock:
            process = self._gpu(index).processes.get(pid)
            if process is not None:
                process.paused = paused

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
            instance = MigInstance(
                gpu.next_gi,
                profile,
                start,
                f"MIG-sim-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}",
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
