"""The NVIDIA driver backend: real GPUs through NVML (``pynvml`` from nvidia-ml-py).

NVML sees every process on a GPU by itself, so ``attach``/``detach`` are no-ops. A GPU whose
queries fail, with any error, gets a sample that says so (``sample_error``) rather than raising:
one GPU's error never stops the daemon from watching the others, and the daemon decides, over
several samples, whether the GPU is lost.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

import psutil

from gpuos.devices import checkpoint, numa
from gpuos.devices.backend import (
    DeviceBackend,
    DeviceInfo,
    DeviceStatus,
    MigInstance,
    MigProfile,
    ProcessUsage,
    SuspendSupport,
    Transfer,
)
from gpuos.devices.catalog import match_nvml_name
from gpuos.errors import BackendError
from gpuos.units import MiB

try:
    import pynvml
except ImportError:  # the daemon still runs on the simulator without nvidia-ml-py
    pynvml = None

# GPU-instance profile constants in the order NVIDIA lists them, smallest first. Media-extension
# variants are skipped: gpuos never requests them.
_GI_PROFILE_CONSTANTS = (
    "NVML_GPU_INSTANCE_PROFILE_1_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2",
    "NVML_GPU_INSTANCE_PROFILE_2_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_3_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_4_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_6_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_7_SLICE",
    "NVML_GPU_INSTANCE_PROFILE_8_SLICE",
)
_MEMORY_SLICES = 8


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlBackend(DeviceBackend):
    """Real GPUs. Raises :class:`BackendError` when NVML or a GPU cannot be reached."""

    name = "nvml"
    suspend_needs_running = True  # the driver's checkpoint thread runs inside the process

    def __init__(self) -> None:
        if pynvml is None:
            raise BackendError("NVML is unavailable: the nvidia-ml-py package is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise BackendError(f"NVML could not start ({exc}); is the NVIDIA driver loaded?") from exc
        self._lock = threading.Lock()
        # Suspend-to-host, detected on first use (it loads cuda-python and calls cuInit).
        self._support: SuspendSupport | None = None
        self._checkpoint: checkpoint.Driver | None = None
        # Suspended job process -> (the GPU it left, the CUDA processes of its tree checkpointed).
        self._suspended: dict[int, tuple[int, tuple[int, ...]]] = {}
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._devices = [self._info(i, h) for i, h in enumerate(self._handles)]
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise BackendError(f"NVML could not list the GPUs: {exc}") from exc

    # -- static facts ---------------------------------------------------------------------------

    def _info(self, index: int, handle: Any) -> DeviceInfo:
        product = _text(pynvml.nvmlDeviceGetName(handle))
        memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        return DeviceInfo(
            index,
            _text(pynvml.nvmlDeviceGetUUID(handle)),
            product,
            memory,
            self._sm_count(handle, product),
            self._mig_profiles(handle),
            self._numa_node(handle),
            self._minor_number(handle),
        )

    @staticmethod
    def _minor_number(handle: Any) -> int:
        try:
            return int(pynvml.nvmlDeviceGetMinorNumber(handle))
        except (pynvml.NVMLError, AttributeError):
            return -1

    @staticmethod
    def _numa_node(handle: Any) -> int:
        # The PCI device's node in sysfs is the CPU side the GPU hangs off, what the kubelet's
        # topology hints mean. (nvmlDeviceGetNumaNodeId is another thing: the node that is the
        # GPU's own memory, on platforms such as Grace Hopper where GPU memory is a NUMA node.)
        try:
            bus_id = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)
        except (pynvml.NVMLError, AttributeError):
            return numa.UNKNOWN  # one field unknown, never the whole GPU
        return numa.numa_node(bus_id)

    @staticmethod
    def _sm_count(handle: Any, product: str) -> int:
        try:
            return int(pynvml.nvmlDeviceGetAttributes(handle).multiprocessorCount)
        except (pynvml.NVMLError, AttributeError):
            # Older drivers answer this only in MIG mode; the catalog knows the product's count.
            model = match_nvml_name(product)
            return model.sm_count if model else 0

    @staticmethod
    def _mig_supported(handle: Any) -> bool:
        try:
            pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError:
            return False  # NOT_SUPPORTED on GPUs without MIG
        return True

    def _mig_profiles(self, handle: Any) -> tuple[MigProfile, ...]:
        if not self._mig_supported(handle):
            return ()
        profiles: list[MigProfile] = []
        for name, info in self._gi_profile_infos(handle).items():
            found = self._possible_placements(handle, info.id)
            profiles.append(
                MigProfile(
                    name=name,
                    slices=int(info.sliceCount),
                    memory_bytes=int(info.memorySizeMB) * MiB,
                    memory_slices=found[0][1] if found else 0,
                    max_count=int(info.instanceCount),
                    placements=tuple(start for start, _ in found),
                )
            )
        if not profiles:
            # Some drivers answer profile queries only while MIG mode is on; the catalog holds
            # NVIDIA's table for the product, so the scheduler can still plan MIG placements.
            model = match_nvml_name(_text(pynvml.nvmlDeviceGetName(handle)))
            return model.mig_profiles if model else ()
        return tuple(profiles)

    @staticmethod
    def _possible_placements(handle: Any, profile_id: int) -> list[tuple[int, int]]:
        """(start, size in memory slices) of every placement NVIDIA allows for the profile."""
        # The binding takes C out-parameters: an array at least as long as the slot count.
        slots = (pynvml.c_nvmlGpuInstancePlacement_t * _MEMORY_SLICES)()
        count = ctypes.c_uint(_MEMORY_SLICES)
        try:
            pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, slots, ctypes.byref(count))
        except pynvml.NVMLError:
            return []
        return sorted((int(slots[i].start), int(slots[i].size)) for i in range(count.value))

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    # -- live status ----------------------------------------------------------------------------

    def status(self) -> list[DeviceStatus]:
        with self._lock:
            return [self._status(i, h) for i, h in enumerate(self._handles)]

    def _status(self, index: int, handle: Any) -> DeviceStatus:
        try:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            processes = tuple(
                ProcessUsage(int(p.pid), int(p.usedGpuMemory or 0))
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            )
            utilization = _optional(lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        except Exception as exc:  # noqa: BLE001 - any error spoils this GPU's sample, not the others'
            return DeviceStatus(index, False, 0.0, 0, sample_error=f"{type(exc).__name__}: {exc}"[:200])
        temperature = _optional(
            lambda: float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
        )
        power = _optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        return DeviceStatus(
            index=index,
            healthy=True,
            # In MIG mode the GPU reports no whole-device utilisation (NOT_SUPPORTED).
            utilization_pct=utilization if utilization is not None else 0.0,
            memory_used=int(memory.used),
            processes=processes,
            temperature_c=temperature,
            power_w=power,
        )

    def attach(self, index: int, pid: int, memory_bytes: int, compute_milli: int) -> None:
        """NVML sees the process by itself."""

    def detach(self, index: int, pid: int) -> None:
        """NVML sees the process leave by itself."""

    def mig_enabled(self, index: int) -> bool:
        """Whether GPU ``index`` is in MIG mode now."""
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(self._handles[index])
        except pynvml.NVMLError:
            return False
        return bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)

    def mig_instances(self, index: int) -> list[MigInstance]:
        if not self.mig_enabled(index):
            return []
        handle = self._handles[index]
        by_id = {}
        for name, info in self._gi_profile_infos(handle).items():
            found = (pynvml.c_nvmlGpuInstance_t * _MEMORY_SLICES)()
            count = ctypes.c_uint(_MEMORY_SLICES)
            try:
                pynvml.nvmlDeviceGetGpuInstances(handle, info.id, found, ctypes.byref(count))
            except pynvml.NVMLError:
                continue
            for gi in found[: count.value]:
                gi_info = pynvml.nvmlGpuInstanceGetInfo(gi)
                gi_id = int(gi_info.id)
                uuid, ci_id = self._mig_device(handle, gi_id)
                by_id[gi_id] = MigInstance(gi_id, name, int(gi_info.placement.start), uuid, ci_id)
        return [by_id[k] for k in sorted(by_id)]

    @staticmethod
    def _mig_device(handle: Any, gi_id: int) -> tuple[str, int]:
        """The UUID and compute instance id of GPU instance ``gi_id``'s MIG device (its first, for
        one an administrator split into several); ("", 0) when it has none."""
        try:
            for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
                except pynvml.NVMLError:
                    continue
                if pynvml.nvmlDeviceGetGpuInstanceId(mig) == gi_id:
                    return _text(pynvml.nvmlDeviceGetUUID(mig)), int(pynvml.nvmlDeviceGetComputeInstanceId(mig))
        except pynvml.NVMLError:
            pass
        return "", 0

    def create_mig_instance(self, index: int, profile: str, start: int) -> MigInstance:
        """Create a GPU instance of ``profile`` at ``start`` and one compute instance filling it.

        Only on a GPU already in MIG mode: turning MIG on may reset the GPU, which an operator
        must choose to do (``nvidia-smi -i N -mig 1``), not a daemon placing a job.
        """
        handle = self._handles[index]
        if not self.mig_enabled(index):
            raise BackendError(
                f"GPU {index} is not in MIG mode; an operator must enable it (nvidia-smi -i {index} -mig 1, "
                "with the GPU idle) before gpuos can create MIG instances"
            )
        info = self._gi_profile_infos(handle).get(profile)
        if info is None:
            raise BackendError(f"GPU {index} has no MIG profile {profile!r}")
        placement = pynvml.c_nvmlGpuInstancePlacement_t()
        placement.start = start
        placement.size = next(
            (p.memory_slices for p in self._devices[index].mig_profiles if p.name == profile), 0
        )
        try:
            gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(handle, info.id, ctypes.byref(placement))
        except pynvml.NVMLError as exc:
            raise BackendError(
                f"NVIDIA refused a {profile} instance at slot {start} of GPU {index}: {exc}"
            ) from exc
        try:
            ci_profile = getattr(pynvml, f"NVML_COMPUTE_INSTANCE_PROFILE_{int(info.sliceCount)}_SLICE")
            ci_info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, ci_profile, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )
            pynvml.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)
        except (pynvml.NVMLError, AttributeError) as exc:
            # Leave no half-made instance behind: a GPU instance without a compute instance
            # holds its slices but cannot run anything.
            pynvml.nvmlGpuInstanceDestroy(gi)
            raise BackendError(
                f"could not create the compute instance of {profile} on GPU {index}: {exc}"
            ) from exc
        gi_id = int(pynvml.nvmlGpuInstanceGetInfo(gi).id)
        uuid, ci_id = self._mig_device(handle, gi_id)
        return MigInstance(gi_id, profile, start, uuid, ci_id)

    def destroy_mig_instance(self, index: int, uuid: str) -> None:
        handle = self._handles[index]
        instance = next((m for m in self.mig_instances(index) if m.uuid == uuid), None)
        if instance is None:
            raise BackendError(f"GPU {index} has no MIG instance {uuid}")
        try:
            gi = pynvml.nvmlDeviceGetGpuInstanceById(handle, instance.index)
            cis = (pynvml.c_nvmlComputeInstance_t * _MEMORY_SLICES)()
            for ci_profile in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
                count = ctypes.c_uint(_MEMORY_SLICES)
                try:
                    pynvml.nvmlGpuInstanceGetComputeInstances(gi, ci_profile, cis, ctypes.byref(count))
                except pynvml.NVMLError:
                    continue  # no compute instance of that profile in this GPU instance
                for ci in cis[: count.value]:
                    pynvml.nvmlComputeInstanceDestroy(ci)
            pynvml.nvmlGpuInstanceDestroy(gi)
        except pynvml.NVMLError as exc:
            raise BackendError(f"could not destroy MIG instance {uuid} on GPU {index}: {exc}") from exc

    @staticmethod
    def _gi_profile_infos(handle: Any) -> dict[str, Any]:
        """NVML's profile info for each GPU-instance profile of this GPU, by NVIDIA's name."""
        infos: dict[str, Any] = {}
        for constant in _GI_PROFILE_CONSTANTS:
            profile_id = getattr(pynvml, constant, None)
            if profile_id is None:
                continue
            try:
                info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile_id)
            except pynvml.NVMLError:
                continue
            infos[f"{info.sliceCount}g.{_nominal_gb(int(info.memorySizeMB))}gb"] = info
        return infos

    def mps_control_command(self) -> list[str]:
        return ["nvidia-cuda-mps-control"]

    # -- suspend-to-host through the CUDA checkpoint API (gpuos/devices/checkpoint.py) -----------

    def suspend_support(self) -> SuspendSupport:
        if self._support is None:
            version = _optional(lambda: _text(pynvml.nvmlSystemGetDriverVersion()))
            self._support, self._checkpoint = checkpoint.detect(version)
        return self._support

    def _driver(self) -> checkpoint.Driver:
        support = self.suspend_support()
        if self._checkpoint is None:
            raise BackendError(support.detail)
        return self._checkpoint

    def _memory_of(self, index: int) -> dict[int, int]:
        """GPU memory each process holds on GPU ``index``, by NVML."""
        with self._lock:
            try:
                found = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handles[index])
            except pynvml.NVMLError as exc:
                raise BackendError(f"NVML cannot list GPU {index}'s processes: {exc}") from exc
        return {int(p.pid): int(p.usedGpuMemory or 0) for p in found}

    @staticmethod
    def _tree(pid: int) -> list[int]:
        """``pid`` and its descendants: a job's CUDA process may be a child of its command."""
        try:
            return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            return [pid]

    def suspend(self, index: int, pid: int) -> Transfer:
        """Checkpoint every CUDA process of ``pid``'s tree on GPU ``index``; the bytes are what
        NVML saw those processes free, the seconds the checkpoint's wall time."""
        driver = self._driver()
        if pid in self._suspended:
            raise BackendError(f"process {pid} is already suspended to host memory")
        before = self._memory_of(index)
        targets = tuple(p for p in self._tree(pid) if p in before)
        if not targets:
            raise BackendError(f"process {pid} has no CUDA context on GPU {index} to suspend")
        started = time.perf_counter()
        done: list[int] = []
        try:
            for target in targets:
                checkpoint.suspend_process(driver, target)
                done.append(target)
        except BackendError:
            for target in done:  # all of the job or none of it
                try:
                    checkpoint.restore_process(driver, target)
                except BackendError:
                    pass
            raise
        seconds = time.perf_counter() - started
        after = self._memory_of(index)
        freed = sum(before[p] - after.get(p, 0) for p in targets)
        self._suspended[pid] = (index, targets)
        return Transfer(max(0, freed), seconds)

    def restore(self, pid: int, index: int, from_index: int) -> Transfer:
        driver = self._driver()
        source, targets = self._suspended.get(pid, (from_index, ()))
        if not targets:
            # Suspended before a gpuosd restart: the driver knows which of its processes.
            targets = tuple(p for p in self._tree(pid) if _state(driver, p) == checkpoint.CHECKPOINTED)
        if not targets:
            raise BackendError(f"process {pid} has nothing checkpointed to restore")
        pairs = None
        if index != source:
            if not self.suspend_support().cross_gpu:
                raise BackendError(f"this driver restores only onto the GPU a process left (GPU {source})")
            if self._devices[index].model != self._devices[source].model:
                raise BackendError(f"GPU {index} is a {self._devices[index].model}, GPU {source} a "
                                   f"{self._devices[source].model}: a restore needs the same model")
            pairs = checkpoint.gpu_pairs([d.uuid for d in self._devices], self._devices[source].uuid,
                                         self._devices[index].uuid)
        started = time.perf_counter()
        for target in targets:
            checkpoint.restore_process(driver, target, pairs)
        seconds = time.perf_counter() - started
        self._suspended.pop(pid, None)
        held = self._memory_of(index)
        return Transfer(sum(held.get(p, 0) for p in targets), seconds)

    def close(self) -> None:
        if pynvml is not None:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass


def _nominal_gb(memory_mib: int) -> int:
    """The gigabytes NVIDIA puts in a profile's name: the driver reports a little less than the
    slices hold (9984 MiB for ``1g.10gb``), and names round up to a whole slice's worth."""
    gib = memory_mib / 1024
    # The sizes that appear in NVIDIA's profile names across A100, H100 and H200.
    for step in (5, 10, 18, 20, 35, 40, 71, 80, 141):
        if gib <= step:
            return step
    return round(gib)


def _state(driver: checkpoint.Driver, pid: int) -> str:
    try:
        return driver.state(pid)
    except BackendError:
        return ""  # not a CUDA process


def _optional(read: Any) -> Any:
    try:
        return read()
    except Exception:  # noqa: BLE001 - a sensor some GPUs lack (NOT_SUPPORTED) is just absent
        return None


def nvml_gpu_count() -> int:
    """How many GPUs NVML answers for; 0 when there is no driver or no GPU."""
    if pynvml is None:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0
    finally:
        pynvml.nvmlShutdown()
