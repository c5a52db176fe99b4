"""The immutable world a policy sees, and the decisions it can lead to.

A snapshot holds only what the daemon knows at that moment: requests, priorities, tenants, ages
and attained service. It never holds a job's true remaining duration.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from gpuos.groups import GroupMode
from gpuos.jobs import Resources
from gpuos.mig import Instance, MigProfile

MILLI = 1000
# At most this many jobs take turns on one GPU; beyond it each turn comes too rarely to be useful.
MAX_TIMESLICE_JOBS = 8
# At most this many kernel jobs share one GPU's kernel executor: each waits at most one atom of
# a higher-priority job, but the executor's streams and memory pools are per job.
MAX_EXECUTOR_JOBS = 16


@dataclass(frozen=True, slots=True)
class GpuView:
    index: int
    model: str
    memory_total: int
    memory_free: int
    milli_free: int = MILLI
    healthy: bool = True
    uuid: str = ""
    mig_profiles: tuple[MigProfile, ...] = ()
    # Compute slices (of 7) already held by MIG instances; >0 means the GPU is in MIG mode.
    mig_slices_used: int = 0
    jobs: tuple[str, ...] = ()
    # How the GPU is shared now: "" (idle or one exclusive job), "mps", "timeslice", "executor" or "mig".
    sharing: str = ""
    mig_instances: tuple[Instance, ...] = ()
    # Jobs on this GPU can be suspended to host memory (their memory moved out and freed, and
    # brought back to resume): the daemon's backend says (SuspendSupport), the simulator's config.
    suspend: bool = False
    # Time-sharers' memory limits here may add up to this many times ``memory_total`` (each limit
    # still at most ``memory_total``): what must fit is the resident set. Above 1 only where
    # ``suspend`` is true and the daemon's config allows. ``memory_free`` counts limits, so on an
    # oversubscribed GPU it may fall below 0, down to (1 - oversubscription) x ``memory_total``.
    oversubscription: float = 1.0
    # Bytes of the limits counted in ``memory_free`` whose memory is on the host now (placed jobs
    # suspended in place, ClusterState.set_resident): the GPU holds ``memory_total - memory_free
    # - memory_suspended`` bytes of its jobs' memory.
    memory_suspended: int = 0

    @property
    def idle(self) -> bool:
        # A GPU with MIG slices (even ones no job holds) is not free for whole-GPU work.
        return (
            self.milli_free == MILLI and self.memory_free == self.memory_total and not self.jobs
            and not self.mig_instances
        )


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    gpus: tuple[GpuView, ...]
    cpu_milli_free: int = 1 << 40
    host_memory_free: int = 1 << 60
    # A job suspended on one GPU of this node may be restored onto another of the same model
    # (CUDA 13 drivers' GPU-pair mapping; SuspendSupport.cross_gpu), not only onto its own.
    cross_gpu_restore: bool = False


@dataclass(frozen=True, slots=True)
class Stint:
    """One finished run of a job: from ``start`` to ``stop`` it earned ``service`` GPU-seconds."""

    start: float
    stop: float
    service: float


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    request: Resources
    tenant: str = ""
    priority: int = 1
    qos: str = "BE"
    submitted_at: float = 0.0
    started_at: float | None = None
    # GPU-seconds of service received so far (GPUs held x time running), the LAS measure.
    attained_service: float = 0.0
    # The user's own estimate; 0 when none was given. Policies may use it, never the truth.
    estimated_seconds: float = 0.0
    cpu_milli: int = 0
    host_memory: int = 0
    node: str = ""
    gpus: tuple[int, ...] = ()
    paused: bool = False
    preemptions: int = 0
    # GPUs' worth of service a running job gains per second since ``service_since``, up to which
    # ``attained_service`` counts (see scheduler/state.py for the one definition): a running
    # job's view never has to be rebuilt just because time passed.
    service_rate: float = 0.0
    service_since: float = 0.0
    # The job's finished runs, oldest first (it was preempted or requeued after each): what a
    # policy needs to know how long a job waited since it last ran, or since some past event
    # (Tiresias's promotion). The model keeps it (scheduler/state.py); empty for a fresh job.
    stints: tuple[Stint, ...] = ()
    # The job group it belongs to ("" for none); groups are per tenant, so the group is
    # (tenant, group): see Snapshot.group_of.
    group: str = ""
    # Its memory is on the host, not on a GPU: a waiting job preempted by suspension (it resumes
    # by restore, keeping its process and progress), or a placed, paused one suspended in place.
    # ``suspended_bytes`` is what the host holds; a waiting suspended job may resume only on a GPU
    # of ``suspended_model`` on node ``suspended_gpu[0]``, and only on GPU ``suspended_gpu[1]``
    # unless that node allows cross-GPU restore (NodeView.cross_gpu_restore; see
    # framework.resumes_on). All four are the defaults for a job that is not suspended.
    suspended: bool = False
    suspended_bytes: int = 0
    suspended_model: str = ""
    suspended_gpu: tuple[str, int] | None = None

    def attained(self, now: float) -> float:
        """GPU-seconds of service received up to ``now`` (what LAS policies rank by)."""
        if self.service_rate:
            return self.attained_service + (now - self.service_since) * self.service_rate
        return self.attained_service


class CapacityIndex(Protocol):
    """What the framework asks of a snapshot's capacity index (scheduler/index.py's NodeIndex,
    which imports these views; a protocol here keeps the import one way)."""

    n: int
    nodes: tuple[NodeView, ...]

    def candidates(self, job: JobView) -> Iterator[int]: ...

    def groups(self) -> tuple[dict[int, list[int]], list[int]]: ...

    def first(self, key: int, least: int, start: int) -> int: ...

    def bound(self, key: int, position: int) -> int: ...


@dataclass(frozen=True, slots=True)
class GroupView:
    """A job group as a policy sees it at the snapshot's time (rules: gpuos/groups.py)."""

    tenant: str
    name: str
    mode: GroupMode
    # Successes that end the group (0: none do, mode ``all``).
    goal: int
    # GPU-seconds the members may spend in all (0: no bound).
    budget: float
    # GPU-seconds spent so far: the ended members' plus the unfinished members' service up to
    # the snapshot's time (a running member's grows; a requeued one keeps what it earned).
    spent: float
    # The unfinished members (waiting or running), by id.
    members: tuple[str, ...]
    running: int
    succeeded: int
    open: bool = True

    @property
    def budget_left(self) -> float:
        """GPU-seconds the group may still spend (infinite without a budget)."""
        return max(0.0, self.budget - self.spent) if self.budget > 0 else math.inf


GroupKey = tuple[str, str]
"""A group's identity: (tenant, name)."""

Shape = tuple[Resources, int, int]
"""What decides where a waiting job can go: (request, CPU milli, host memory)."""


def shape_of(job: JobView) -> Shape:
    """``job``'s :data:`Shape`: two jobs of one shape fit, or do not fit, on the same nodes."""
    return (job.request, job.cpu_milli, job.host_memory)

NO_GROUPS: Mapping[GroupKey, GroupView] = MappingProxyType({})


def _no_groups() -> Mapping[GroupKey, GroupView]:
    return NO_GROUPS


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    nodes: tuple[NodeView, ...]
    pending: tuple[JobView, ...]
    running: tuple[JobView, ...] = ()
    # Optional capacity index over ``nodes`` (the simulator keeps one); the framework uses it
    # only to skip nodes that cannot fit, so decisions are the same with or without it.
    index: CapacityIndex | None = field(default=None, compare=False, repr=False)
    # The job groups the model has recorded, by (tenant, name); empty without groups.
    groups: Mapping[GroupKey, GroupView] = field(default_factory=_no_groups)
    # ``pending`` in the default queue order (Policy.order: submitted_at, then id), and how many
    # of them wait with each shape, as the model keeps them (scheduler/state.py), so that a round
    # over a long queue need not sort it nor visit every job to learn that none fits. None when
    # not known (a snapshot built by hand or read from the wire): both are derived from
    # ``pending``, and the framework decides alike with or without them.
    pending_by_age: tuple[JobView, ...] | None = field(default=None, compare=False, repr=False)
    pending_shapes: Mapping[Shape, int] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Read-only whoever built it: a policy that edits a group's view would change the rules
        # of its own round (the views themselves are frozen).
        if not isinstance(self.groups, MappingProxyType):
            object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))

    def group_of(self, job: JobView) -> GroupView | None:
        """The group ``job`` belongs to, as of this snapshot; None for a job without one (or
        whose group the model has no record of)."""
        return self.groups.get((job.tenant, job.group)) if job.group else None


@dataclass(frozen=True, slots=True)
class Place:
    """Start ``job_id`` on ``gpus`` of ``node`` with ``milli`` compute and ``memory`` bytes on each."""

    job_id: str
    node: str
    gpus: tuple[int, ...]
    milli: int
    memory: int
    mig_profile: str = ""
    # First memory slice of the MIG instance to create (-1: not a MIG placement).
    mig_slot: int = -1
    sharing: str = ""


class Share(enum.Enum):
    """How a fractional job whose user pinned no sharing mode shares the GPU it lands on
    (``Policy.share``); the framework turns the choice into what the job takes (framework.shared_as).

    - ``MPS``: an MPS client at the job's requested compute share (the default);
    - ``TIMESLICE``: a time-slice turn, weighted by the share, holding the share's memory;
    - ``MIG``: the smallest MIG profile of the GPU that covers the job's compute and memory (MPS
      where the GPU has none).
    """

    MPS = "mps"
    TIMESLICE = "timeslice"
    MIG = "mig"


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop ``job_id`` and return it to the queue so a more deserving job can run."""

    job_id: str
    reason: str = "preempted"


Decision = Place | Preempt
