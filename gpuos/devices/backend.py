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
    # The host NUMA node the GPU hangs off (topology hints for the kubelet); -1 when unknown.
    numa_node: int = -1
    # /dev/nvidia<minor_number>, what a container needs to reach the GPU; -1 when there is none.
    minor_number: int = -1

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)

    def mig_profile(self, name: str) -> MigProfile | None:
        return next((p for p in self.mig_profiles if p.name == name), None)


@dataclass(frozen=True)
class MigInstance:
    """A MIG GPU instance (with one compute instance spanning it) that exists on a GPU.

    ``index`` is NVIDIA's GPU instance id and ``compute_instance`` the id of the compute instance
    in it: with the GPU's minor number they name the slice's capability device nodes.
    """

    index: int
    profile: str
    start: int
    uuid: str
    compute_instance: int = 0


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


@dataclass(frozen=True)
class SuspendSupport:
    """Whether a backend can move a process's GPU memory to host memory and back (suspend-to-host)."""

    supported: bool
    cross_gpu: bool = False  # may restore onto another GPU of the same model
    detail: str = ""  # why not, or which mechanism (shown by gpuosctl devices)


@dataclass(frozen=True)
class Transfer:
    """One suspend or restore: how many bytes crossed the host link, and how long it took."""

    bytes: int
    seconds: float

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


class DeviceBackend(abc.ABC):
    """A source of GPUs: the simulator or the NVIDIA driver."""

    name: str = "abstract"
    # Whether a process must be running (not SIGSTOP-ed) while it is suspended or restored: the
    # CUDA driver does the work on a thread inside the process; the simulator needs no such thing.
    suspend_needs_running: bool = False

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

    # -- suspend-to-host: backends that cannot do it say so (suspend_support) -------------------

    def suspend_support(self) -> SuspendSupport:
        """Whether :meth:`suspend` and :meth:`restore` work here, and if not, why not."""
        return SuspendSupport(False, detail=f"the {self.name} backend cannot suspend processes to host memory")

    def suspend(self, index: int, pid: int) -> Transfer:
        """Move process ``pid``'s memory on GPU ``index`` to host memory and free it on the GPU.

        Blocks for the transfer (callers run it off the control loop). The process must not run
        GPU work meanwhile. Raises :class:`BackendError` with the driver's message on failure,
        and the process is then as it was.
        """
        raise BackendError(self.suspend_support().detail)

    def restore(self, pid: int, index: int, from_index: int) -> Transfer:
        """Bring suspended process ``pid``'s memory back onto GPU ``index`` (``from_index``: the
        GPU it was suspended from; another one only where ``suspend_support().cross_gpu``)."""
        raise BackendError(self.suspend_support().detail)

    def adopt_suspended(self, index: int, pid: int, memory_bytes: int, compute_milli: int) -> None:  # noqa: B027
        """A restarted daemon found process ``pid`` suspended from GPU ``index`` (optional hook:
        the driver keeps the checkpoint in the process itself and needs no telling)."""

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
