"""The job model shared by the store, the scheduler seam, the runtime and the API."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

TIMESLICE = "timeslice"


class JobState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def active(self) -> bool:
        """Holds a placement on a device (its process exists)."""
        return self in (JobState.RUNNING, JobState.PAUSED)


class Priority(enum.IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2

    @classmethod
    def parse(cls, text: str) -> Priority:
        from gpuos.errors import InvalidArgument

        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidArgument("priority", f"{text!r} is not one of high, normal, low") from None


class JobKind(str, enum.Enum):
    PROCESS = "process"
    KERNEL = "kernel"
    # A partition held for work gpuosd does not start, such as a container the kubelet runs.
    EXTERNAL = "external"


class Reason:
    """Why a job left RUNNING other than by exiting by itself. Strings, so they read well in events."""

    PREEMPTED = "preempted"
    MEMORY_LIMIT = "memory-limit"
    DEVICE_LOST = "device-lost"
    DAEMON_RESTART = "daemon-restart"
    CANCELLED_BY_USER = "cancelled-by-user"
    EXIT_NONZERO = "exit-nonzero"
    SPAWN_FAILED = "spawn-failed"
    TIME_SLICE = "time-slice"
    RELEASED = "released"
    SUPERVISOR_LOST = "supervisor-lost"


@dataclass(frozen=True)
class Resources:
    """What a job asks for (or was given).

    ``gpus`` whole GPUs, or one GPU shared by ``gpu_milli`` thousandths of its compute (1..999),
    or one MIG slice of ``mig_profile``. ``memory_bytes`` is per GPU; 0 means "whatever the share
    implies" (a whole GPU's memory, the fraction's proportion, or the MIG slice's memory).
    """

    gpus: int = 1
    gpu_milli: int = 0
    memory_bytes: int = 0
    mig_profile: str = ""
    gpu_types: tuple[str, ...] = ()
    # How a shared GPU is shared: "" (a whole GPU, or MPS for a fraction) or "timeslice" (take
    # turns with the GPU's other time-sharers; gpu_milli is then the job's weight in turns).
    sharing: str = ""

    @property
    def fractional(self) -> bool:
        return self.gpu_milli > 0

    @property
    def timeslice(self) -> bool:
        return self.sharing == TIMESLICE

    @property
    def compute_milli(self) -> int:
        """Compute share in thousandths of one GPU, summed over GPUs."""
        return self.gpu_milli if self.gpu_milli else self.gpus * 1000


@dataclass(frozen=True)
class JobSpec:
    """What the user submitted. Immutable once acknowledged."""

    name: str
    kind: JobKind
    resources: Resources
    command: tuple[str, ...] = ()
    kernel: str = ""
    params: tuple[tuple[str, str], ...] = ()
    priority: Priority = Priority.NORMAL
    tenant: str = ""
    qos: str = "BE"
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    estimated_seconds: float = 0.0


@dataclass(frozen=True)
class Placement:
    """Where the scheduler put a job: device indices plus the share it holds on them."""

    devices: tuple[int, ...]
    device_uuids: tuple[str, ...] = ()
    # "exclusive", "mps", "timeslice" or "mig:<profile>".
    partition: str = ""
    granted: Resources = field(default_factory=Resources)
    mig_slot: int = -1
    mig_uuid: str = ""

    @property
    def sharing(self) -> str:
        """The GPU sharing mode this placement takes part in ("" for exclusive)."""
        kind = self.partition.split(":")[0]
        return "" if kind == "exclusive" else kind


@dataclass
class Job:
    id: str
    spec: JobSpec
    owner_uid: int
    state: JobState = JobState.PENDING
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    placement: Placement | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attained_service: float = 0.0
    seq: int = 0
    shim_pid: int = 0
    shim_started: float = 0.0
    child_pid: int = 0
    cancel_requested: bool = False
    preemptions: int = 0
    # Start of the current stretch of running (None while paused or not running): attained
    # service counts only time actually on the GPU.
    run_since: float | None = None


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    job_id: str
    kind: str
    state: JobState | None
    reason: str = ""
    message: str = ""
    tenant: str = ""
