"""The job model shared by the store, the scheduler seam, the runtime and the API."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

TIMESLICE = "timeslice"
# Kernel jobs of several tenants in one per-GPU kernel executor (gpuos/partitions/executor.py),
# pinned by the user; a policy never chooses it.
EXECUTOR = "executor"


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


class Qos(str, enum.Enum):
    """Quality-of-service classes: the one vocabulary of the API, the traces and the policies.

    A user submits one of gpuos's two classes, LS (latency-sensitive) or BE (best-effort); see
    ``parse``. Traces (Alibaba's cluster-trace-gpu-v2023) also carry Kubernetes' Guaranteed and
    Burstable. Those keep their names in the simulator, so its report still breaks down by the
    trace's own classes, and they map onto gpuos's two by ``rank``: Guaranteed ranks with LS
    and counts as latency-sensitive, Burstable ranks between LS and BE.
    """

    LS = "LS"
    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BE = "BE"

    @property
    def rank(self) -> int:
        """Higher runs first: 2 latency-sensitive, 1 Burstable, 0 best-effort."""
        return _QOS_RANK[self]

    @property
    def latency_sensitive(self) -> bool:
        return self.rank == 2

    @classmethod
    def parse(cls, text: str) -> Qos:
        """A class as a user spells it (any case; empty is BE); only LS and BE are accepted."""
        from gpuos.errors import InvalidArgument
        from gpuos.text import quote

        spelled = text.strip().upper() or cls.BE.value
        if spelled not in (cls.LS.value, cls.BE.value):
            raise InvalidArgument("qos", f"{quote(text)} is not one of LS (latency-sensitive), BE (best-effort)")
        return cls(spelled)

    @classmethod
    def rank_of(cls, text: str) -> int:
        """The rank of a class named ``text`` (a trace's spelling); one that no class has ranks 1."""
        try:
            return cls(text).rank
        except ValueError:
            return 1


_QOS_RANK = {Qos.LS: 2, Qos.GUARANTEED: 2, Qos.BURSTABLE: 1, Qos.BE: 0}
# The classes whose jobs carry a latency target (SLO) in the simulator's metrics.
LATENCY_CLASSES = frozenset(q.value for q in Qos if q.latency_sensitive)


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
    # A member of a job group stopped by its group (gpuos/groups.py).
    SIBLING_SUCCEEDED = "sibling-succeeded"
    GROUP_BUDGET = "group-budget"
    # A kernel job asked to stop at its next step boundary (steering): it ends CANCELLED with
    # exit code 0 and its progress so far.
    STOPPED_AT_STEP = "stopped-at-step"
    # Its GPU memory was moved to host memory (suspend-to-host): PAUSED and still placed (a
    # time-sharer out of memory), or PENDING with its process kept (preempted by suspension).
    SUSPENDED = "suspended"
    # Its memory could not be brought back: its process was stopped and it waits to restart.
    RESTORE_FAILED = "restore-failed"
    # Its GPU was drained (`gpuosctl drain --requeue`) and it could not move: stopped and requeued.
    DRAINED = "drained"
    # The kernel executor of the job's GPU died (its jobs die with it; like an MPS daemon's loss).
    EXECUTOR_LOST = "executor-lost"


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
    # How a shared GPU is shared: "" (a whole GPU, or for a fraction whatever its policy chooses,
    # MPS by default: Policy.share), "mps" (an MPS client, pinned) or "timeslice" (take turns with
    # the GPU's other time-sharers; gpu_milli is then the job's weight in turns) or "executor" (a
    # kernel job run by the GPU's shared kernel executor; gpu_milli is its weight among equals).
    sharing: str = ""

    @property
    def fractional(self) -> bool:
        return self.gpu_milli > 0

    @property
    def timeslice(self) -> bool:
        return self.sharing == TIMESLICE

    @property
    def executor(self) -> bool:
        return self.sharing == EXECUTOR

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
    qos: Qos = Qos.BE
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    estimated_seconds: float = 0.0
    # An EXTERNAL job's reservation keys (the device plugin's device ids): a new reservation that
    # names any of them releases the older one that holds it.
    reservation_keys: tuple[str, ...] = ()
    # The job group it belongs to (per tenant; gpuos/groups.py), "" for none.
    group: str = ""
    # Deduplication: a submit whose key matches a pending, running or recently succeeded job of
    # the same tenant returns that job instead ("" for no deduplication).
    dedupe_key: str = ""
    # A latency-class (LS) job's target for its requests' p99 latency, in seconds (0: none).
    # gpuosd throttles the best-effort jobs sharing its GPU to hold it (gpuos/daemon/colocation.py).
    slo_p99_seconds: float = 0.0


class PartitionKind(str, enum.Enum):
    """How a placement holds its GPU: the whole of it, an MPS share, turns, or a MIG slice."""

    EXCLUSIVE = "exclusive"
    MPS = "mps"
    TIMESLICE = "timeslice"
    EXECUTOR = "executor"
    MIG = "mig"

    @property
    def sharing(self) -> str:
        """The sharing mode as the scheduler's snapshot spells it ("" for a whole GPU)."""
        return "" if self is PartitionKind.EXCLUSIVE else self.value


@dataclass(frozen=True)
class Partition:
    """A placement's partition. ``str()`` is the one spelling users and the store see:
    "exclusive", "mps", "timeslice", "executor" or "mig:<profile>"; ``parse`` reads it back."""

    kind: PartitionKind = PartitionKind.EXCLUSIVE
    mig_profile: str = ""

    def __post_init__(self) -> None:
        if (self.kind is PartitionKind.MIG) != bool(self.mig_profile):
            raise ValueError(f"a MIG partition, and only one, names its profile: {self.kind.value} {self.mig_profile!r}")

    @classmethod
    def parse(cls, text: str) -> Partition:
        """The partition ``str()`` spelled as ``text``; raises ValueError for any other text."""
        kind, sep, profile = text.partition(":")
        if sep and kind != PartitionKind.MIG.value:
            raise ValueError(f"{text!r} is not a partition: only mig:<profile> names a profile")
        return cls(PartitionKind(kind), profile)

    def __str__(self) -> str:
        if self.kind is PartitionKind.MIG:
            return f"{self.kind.value}:{self.mig_profile}"
        return self.kind.value


@dataclass(frozen=True)
class Placement:
    """Where the scheduler put a job: device indices plus the share it holds on them."""

    devices: tuple[int, ...]
    device_uuids: tuple[str, ...] = ()
    partition: Partition = field(default_factory=Partition)
    granted: Resources = field(default_factory=Resources)
    mig_slot: int = -1
    mig_uuid: str = ""

    @property
    def kind(self) -> PartitionKind:
        return self.partition.kind

    @property
    def sharing(self) -> str:
        """The GPU sharing mode this placement takes part in ("" for exclusive)."""
        return self.partition.kind.sharing


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
    # Why the cancel was asked for (cancelled-by-user, sibling-succeeded, group-budget): what
    # the job ends with once its process is gone, after a restart too.
    cancel_reason: str = ""
    # A kernel job asked to stop at its next step boundary (Reason.STOPPED_AT_STEP).
    stop_requested: bool = False
    preemptions: int = 0
    # Start of the current stretch of running (None while paused or not running): attained
    # service counts only time actually on the GPU.
    run_since: float | None = None
    # Suspended to host (Reason.SUSPENDED): the bytes moved out and the GPU index they left
    # (-1: not suspended). Kept in the store so a restarted gpuosd re-adopts the stopped process.
    suspended_bytes: int = 0
    suspended_from: int = -1

    @property
    def suspended(self) -> bool:
        """Its GPU memory is in host memory now (it resumes by a restore, not a restart)."""
        return self.suspended_from >= 0


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
    group: str = ""


@dataclass(frozen=True)
class KernelProgress:
    """A kernel job's progress as its worker last reported it (gpuos.kernels.worker writes it)."""

    kernel: str = ""
    steps_done: int = 0
    steps_total: int = 0
    last_latency_ms: float = 0.0
    mean_latency_ms: float = 0.0
    p50_latency_ms: float = 0.0
    p99_latency_ms: float = 0.0
    # The kernel's own end-of-run figures (name, value), once it finished.
    summary: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, object]:
        """The worker's file format (progress.json)."""
        return {
            "kernel": self.kernel,
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "last_latency_ms": self.last_latency_ms,
            "mean_latency_ms": self.mean_latency_ms,
            "p50_latency_ms": self.p50_latency_ms,
            "p99_latency_ms": self.p99_latency_ms,
            "summary": dict(self.summary),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> KernelProgress:
        """Read the worker's file leniently: the worker may run as the job's user, so a field
        that is missing or not a number reads as 0 rather than failing the daemon's reply."""

        def number(key: str) -> float:
            value = data.get(key, 0)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

        kernel = data.get("kernel", "")
        summary = data.get("summary")
        return cls(
            kernel=kernel if isinstance(kernel, str) else "",
            steps_done=int(number("steps_done")),
            steps_total=int(number("steps_total")),
            last_latency_ms=number("last_latency_ms"),
            mean_latency_ms=number("mean_latency_ms"),
            p50_latency_ms=number("p50_latency_ms"),
            p99_latency_ms=number("p99_latency_ms"),
            summary=tuple(
                (str(k), float(v)) for k, v in (summary.items() if isinstance(summary, Mapping) else ())
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ),
        )
