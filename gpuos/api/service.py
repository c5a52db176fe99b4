"""What the servicers need of gpuosd, and nothing more: the API's one view of the daemon.

The servicers (:mod:`gpuos.api.server`) are written against :class:`DaemonService`, so the API
never imports :mod:`gpuos.daemon` and a change inside the control loop cannot reach a handler
except through a method named here. The daemon implements it in ``gpuos.daemon.service``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from gpuos.api.identity import Authenticator
from gpuos.devices.backend import DeviceInfo, DeviceStatus, MigInstance, SuspendSupport
from gpuos.draining import DrainPlan
from gpuos.groups import Group, GroupSpec
from gpuos.guard import DeployStatus, GuardSpec
from gpuos.history import HistoryJob
from gpuos.jobs import Event, Job, JobSpec, JobState, KernelProgress, Priority, Resources
from gpuos.partitions.slo import ColocationStatus
from gpuos.policy_choice import PolicyChoice
from gpuos.scheduler.explain import WaitReason
from gpuos.scheduler.policy import Policy
from gpuos.shadowing import ShadowState, SimulatedEffect
from gpuos.store import JobPage, Submitted


class JobStore(Protocol):
    """The store's reads and writes that the servicers make (``gpuos.store.Store`` has them all)."""

    @property
    def last_event_seq(self) -> int: ...

    def submit_one(self, spec: JobSpec, owner_uid: int, idempotency_key: str = "",
                   group: GroupSpec | None = None) -> tuple[Job, Submitted]: ...

    def submit_later(self, spec: JobSpec, owner_uid: int, idempotency_key: str = "",
                     group: GroupSpec | None = None) -> Future[tuple[Job, Submitted]]: ...

    def submit_batch(self, items: list[tuple[JobSpec, str, GroupSpec | None]],
                     owner_uid: int) -> list[tuple[Job, Submitted]]: ...

    def set_priority(self, job_id: str, priority: Priority) -> Job: ...

    def group(self, tenant: str, name: str) -> Group: ...

    def groups(self, tenant: str = "") -> list[Group]: ...

    def members(self, tenant: str, name: str) -> list[Job]: ...

    def end_group(self, tenant: str, name: str, reason: str) -> Group: ...

    def get(self, job_id: str, tenant: str = "") -> Job: ...

    def page(self, states: Iterable[JobState] = (), tenant: str = "", *, after: int = 0, size: int = 500,
             newest: int = 0, floor: int = 0) -> JobPage: ...

    def update(self, job_id: str, *, expect: Iterable[JobState] | None = None, event: str = "",
               event_message: str = "", **changes: Any) -> Job: ...

    def events(self, after_seq: int = 0, job_id: str = "", limit: int = 1000, tenant: str = "",
               group: str = "") -> list[Event]: ...

    def history(self, *, since: float | None = None, until: float | None = None, tenant: str = "",
                after: int = 0, size: int = 500) -> tuple[list[HistoryJob], int]: ...

    def wait_for_events(self, after_seq: int, timeout: float, tenant: str = "") -> bool: ...

    def placed(self) -> list[Job]: ...

    def active_job(self, job_id: str) -> Job | None: ...

    def listen(self, listener: Callable[[list[Event]], None]) -> None: ...


class DaemonService(Protocol):
    """gpuosd as the servicers see it: its jobs, GPUs, policy and callers."""

    @property
    def store(self) -> JobStore: ...

    @property
    def auth(self) -> Authenticator:
        """Who may call; read per call, since the daemon sets it up only when it starts serving."""
        ...

    @property
    def kill_grace_seconds(self) -> float:
        """How long a stopped job has between SIGTERM and SIGKILL (a cancel waits that long and more)."""
        ...

    # -- GPUs ---------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str: ...

    @property
    def devices(self) -> list[DeviceInfo]: ...

    def statuses(self) -> list[DeviceStatus]:
        """One fresh sample of every GPU."""
        ...

    def mig_instances(self, index: int) -> list[MigInstance]: ...

    @property
    def mps_available(self) -> bool:
        """Whether GPUs can be shared by fraction (an MPS control daemon can be started)."""
        ...

    def mps_running(self, index: int) -> bool: ...

    @property
    def suspend_support(self) -> SuspendSupport:
        """Whether jobs can be suspended to host memory here (detected at start), and how or why not."""
        ...

    # -- jobs the controller knows more of than the store -------------------------------------

    def wake(self) -> None:
        """Run a control round soon (a job arrived or was asked to stop)."""
        ...

    def kernel_progress(self, job_id: str) -> KernelProgress | None: ...

    def colocation(self, job_id: str) -> ColocationStatus | None:
        """What SLO-driven colocation measures (a job with an SLO) or does (a throttled neighbour)."""
        ...

    def service_of(self, job: Job) -> float:
        """GPU-seconds of service ``job`` has had up to now (running jobs' included)."""
        ...

    def log_path(self, job_id: str, stream: str) -> Path:
        """Where job ``job_id``'s ``stream`` ("stdout" or "stderr") is written."""
        ...

    def waiting(self, job_id: str) -> WaitReason | None:
        """Why the latest round left pending job ``job_id`` unplaced."""
        ...

    def reserve(self, spec: JobSpec, owner_uid: int, uuids: tuple[str, ...]) -> tuple[Job, dict[str, str]]:
        """Hold a partition on the GPUs named for work started elsewhere; the job and its environment."""
        ...

    def release(self, keys: tuple[str, ...]) -> list[Job]:
        """End the reservations holding any of ``keys``; those ended (none for unknown keys)."""
        ...

    def reservations(self, name_prefix: str) -> list[Job]:
        """The reservations held now whose name starts with ``name_prefix``."""
        ...

    def rank(self, request: Resources, uuids: tuple[str, ...]) -> list[str]:
        """``uuids`` best first for ``request`` by the active policy."""
        ...

    # -- faults, for tests and drills (admins only; the servicer checks) ----------------------

    def set_gpu_failed(self, index: int, failed: bool) -> None:
        """Fail or restore GPU ``index``; raises FailedPrecondition where the backend cannot."""
        ...

    def crash_mps_daemon(self, index: int) -> None: ...

    # -- draining (admins only; the servicer checks) -------------------------------------------

    def drain(self, index: int, *, undrain: bool, requeue: bool) -> DrainPlan:
        """Take GPU ``index`` out of service (its jobs move, finish or are requeued: gpuos.draining)
        or, with ``undrain``, put it back."""
        ...

    def draining(self) -> frozenset[int]:
        """The GPUs taken out of service."""
        ...

    def check_now(self) -> None:
        """Run the health checks now, so the fault just injected shows in the next reply."""
        ...

    # -- policy -------------------------------------------------------------------------------

    def deploy(self, choice: PolicyChoice, policy: Policy, guard: GuardSpec | None) -> None:
        """Schedule with ``policy`` (which ``choice`` names, a policy file's text with it) from the
        next round on and after restarts, watched by ``guard`` when given (gpuos/guard.py); every
        switch is an event."""
        ...

    def policy_status(self) -> DeployStatus:
        """The active policy's choice and class, its guard and latest reading, the recent switches."""
        ...

    def start_shadow(self, choice: PolicyChoice, policy: Policy) -> None:
        """Compute ``policy``'s decisions each round beside the active one's, applying none."""
        ...

    def stop_shadow(self) -> None: ...

    def shadow_state(self, examples: int) -> ShadowState:
        """The shadow's counters and its latest ``examples`` differing rounds."""
        ...

    def shadow_effect(self) -> SimulatedEffect:
        """The window's jobs replayed in the simulator under the active policy and the candidate."""
        ...
