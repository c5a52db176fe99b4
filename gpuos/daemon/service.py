"""The daemon behind the API's and the metrics' narrow interfaces.

:class:`ControllerService` implements :class:`gpuos.api.service.DaemonService` (for the
servicers) and :class:`gpuos.daemon.metrics.MetricsSource` (for the gauges) over the store,
controller, device backend and runtime. It is the one place that knows where each answer lives
inside the daemon, so the control loop can be rearranged without touching a servicer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from gpuos.api.identity import Authenticator
from gpuos.daemon.controller import Controller
from gpuos.devices.backend import DeviceBackend, DeviceInfo, DeviceStatus, MigInstance, SuspendSupport
from gpuos.draining import DrainPlan
from gpuos.errors import FailedPrecondition
from gpuos.guard import DeployStatus, GuardSpec
from gpuos.jobs import Job, JobSpec, KernelProgress, Resources
from gpuos.partitions.slo import ColocationStatus
from gpuos.policy_choice import PolicyChoice
from gpuos.runtime.process import ProcessRuntime
from gpuos.scheduler.explain import WaitReason
from gpuos.scheduler.policy import Policy
from gpuos.shadowing import ShadowState, SimulatedEffect
from gpuos.store import Store

log = logging.getLogger("gpuos.daemon")


class ControllerService:
    """What the servicers and the gauges may ask of a running gpuosd."""

    def __init__(
        self,
        store: Store,
        controller: Controller,
        backend: DeviceBackend,
        runtime: ProcessRuntime,
        *,
        kill_grace_seconds: float,
        auth: Callable[[], Authenticator],
    ) -> None:
        self._store = store
        self._controller = controller
        self._backend = backend
        self._runtime = runtime
        self._kill_grace = kill_grace_seconds
        # A getter: the daemon builds its Authenticator only in start(), after the server exists.
        self._auth = auth

    @property
    def store(self) -> Store:
        return self._store

    @property
    def auth(self) -> Authenticator:
        return self._auth()

    @property
    def kill_grace_seconds(self) -> float:
        return self._kill_grace

    # -- GPUs ---------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def devices(self) -> list[DeviceInfo]:
        return self._controller.devices

    def statuses(self) -> list[DeviceStatus]:
        return self._backend.status()

    def mig_instances(self, index: int) -> list[MigInstance]:
        return self._backend.mig_instances(index)

    @property
    def mps_available(self) -> bool:
        return self._controller.mps is not None

    def mps_running(self, index: int) -> bool:
        mps = self._controller.mps
        return mps is not None and mps.running(index)

    @property
    def suspend_support(self) -> SuspendSupport:
        return self._controller.lifecycle.suspend_support

    # -- jobs ---------------------------------------------------------------------------------

    def placed(self) -> list[Job]:
        return self._store.placed()

    def active(self) -> list[Job]:
        return self._store.active()

    def wake(self) -> None:
        self._controller.wake()

    def kernel_progress(self, job_id: str) -> KernelProgress | None:
        return self._controller.kernel_progress(job_id)

    def service_of(self, job: Job) -> float:
        return self._controller.service_of(job)

    def colocation(self, job_id: str) -> ColocationStatus | None:
        return self._controller.colocation.status(job_id)

    def colocation_statuses(self) -> dict[str, ColocationStatus]:
        return self._controller.colocation.statuses()

    def log_path(self, job_id: str, stream: str) -> Path:
        return self._runtime.log_path(job_id, stream)

    def waiting(self, job_id: str) -> WaitReason | None:
        return self._controller.waiting(job_id)

    def reserve(self, spec: JobSpec, owner_uid: int, uuids: tuple[str, ...]) -> tuple[Job, dict[str, str]]:
        return self._controller.reserve(spec, owner_uid, uuids)

    def release(self, keys: tuple[str, ...]) -> list[Job]:
        return self._controller.release(keys)

    def reservations(self, name_prefix: str) -> list[Job]:
        return self._controller.reservations_held(name_prefix)

    def rank(self, request: Resources, uuids: tuple[str, ...]) -> list[str]:
        return self._controller.rank(request, uuids)

    # -- faults -------------------------------------------------------------------------------

    def set_gpu_failed(self, index: int, failed: bool) -> None:
        # Only the simulated backend has these hooks; real GPUs fail on their own.
        hook = getattr(self._backend, "fail_device" if failed else "restore_device", None)
        if hook is None:
            raise FailedPrecondition(f"the {self._backend.name} backend cannot fail a GPU on request; "
                                     "GPU faults are injected on the simulated backend")
        hook(index)

    def crash_mps_daemon(self, index: int) -> None:
        self._controller.crash_mps_daemon(index)

    def drain(self, index: int, *, undrain: bool, requeue: bool) -> DrainPlan:
        return self._controller.drain(index, undrain=undrain, requeue=requeue)

    def draining(self) -> frozenset[int]:
        return self._controller.cluster.draining

    def check_now(self) -> None:
        self._controller.check_now()

    # -- policy -------------------------------------------------------------------------------

    @property
    def policy_name(self) -> str:
        return self._controller.policy.name

    def deploy(self, choice: PolicyChoice, policy: Policy, guard: GuardSpec | None) -> None:
        self._controller.deploy(choice, policy, guard)

    def policy_status(self) -> DeployStatus:
        return self._controller.deployment.status()

    def start_shadow(self, choice: PolicyChoice, policy: Policy) -> None:
        self._controller.start_shadow(choice, policy)

    def stop_shadow(self) -> None:
        self._controller.stop_shadow()

    def shadow_state(self, examples: int) -> ShadowState:
        return self._controller.shadow.state(examples)

    def shadow_effect(self) -> SimulatedEffect:
        # Off the control loop's lock: the replays take a while and read only the store.
        return self._controller.shadow.simulate(self._controller.deployment.status().choice,
                                                self._controller.devices, time.time())
