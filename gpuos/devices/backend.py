"""The one interface every device backend implements.

Everything above this module (scheduler, runtime, API) sees only these types, never which
backend produced them: the simulator and NVML answer the same questions the same way.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from gpuos.errors import BackendError
from gpuos.mig import MigProfile


@dataclass(frozen=True)
class DeviceInfo:
    """Static facts about one GPU."""

    index: int
    uuid: str
    model: str
    memory_total: int
    sm_count: int
    mig_profiles: tuple[MigProfile, ...] = ()

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def mig_profile(self, name: str) -> MigProfile | None:
        return next((p for p in self.mig_profiles if p.name == name), None)


@dataclass(frozen=True)
class MigInstance:
    """A MIG GPU instance (with one compute instance spanning it) that exists on a GPU."""

    index: int
    profile: str
    start: int
    uuid: str


@dataclass(frozen=True)
class ProcessUsage:
    pid: int
    memory_used: int


@dataclass(frozen=True)
class DeviceStatus:
    """What a GPU is doing right now."""

    index: int
    healthy: bool
    utilization_pct: float
    memory_used: int
    processes: tuple[ProcessUsage, ...] = ()
    temperature_c: float | None = None
    power_w: float | None = None
    # Why this sample could not be read (the other fields are then not meaningful). One failed
    # sample is not a lost GPU: the daemon marks it lost only after several in a row.
    sample_error: str = ""


class DeviceBackend(abc.ABC):
    """A source of GPUs: the simulator or the NVIDIA driver."""

    name: str = "abstract"

    @abc.abstractmethod
    def devices(self) -> list[DeviceInfo]:
        """Static facts for every GPU, in index order."""

    @abc.abstractmethod
    def status(self) -> list[DeviceStatus]:
        """A fresh sample of every GPU's health, utilisation and per-process memory."""

    @abc.abstractmethod
    def attach(self, index: int, pid: int, memory_bytes: int, compute_milli: int) -> None:
        """Tell the backend a job process now runs on GPU ``index`` with that share.

        NVML sees real processes by itself and ignores this; the simulator uses it to account
        memory and utilisation as a real GPU would report them.
        """

    @abc.abstractmethod
    def detach(self, index: int, pid: int) -> None:
        """The process left the GPU (exited, or was stopped)."""

    def set_paused(self, index: int, pid: int, paused: bool) -> None:  # noqa: B027 - optional hook
        """A process was paused or resumed; a paused process keeps its memory but uses no SMs."""

    # -- MIG and MPS: backends that cannot do them say so with a BackendError ------------------

    def mig_instances(self, index: int) -> list[MigInstance]:
        """The MIG instances that exist on GPU ``index`` (none when MIG is off)."""
        return []

    def create_mig_instance(self, index: int, profile: str, start: int) -> MigInstance:
        """Create a GPU instance of ``profile`` at slot ``start`` (and a compute instance filling it),
        enabling MIG mode first if the GPU is idle. Refuses layouts NVIDIA would refuse."""
        raise BackendError(f"the {self.name} backend cannot create MIG instances")

    def destroy_mig_instance(self, index: int, uuid: str) -> None:
        """Destroy an idle MIG instance."""
        raise BackendError(f"the {self.name} backend cannot destroy MIG instances")

    def mps_control_command(self) -> list[str]:
        """The MPS control program (``nvidia-cuda-mps-control`` or the simulator's stand-in)."""
        raise BackendError(f"the {self.name} backend has no MPS")

    def visible_devices_env(self, indices: tuple[int, ...]) -> dict[str, str]:
        """Environment that makes exactly these GPUs visible to a CUDA process."""
        uuids = {d.index: d.uuid for d in self.devices()}
        return {"CUDA_VISIBLE_DEVICES": ",".join(uuids[i] for i in indices)}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release driver handles."""
