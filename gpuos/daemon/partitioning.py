"""Partitions of the daemon's GPUs: MIG instances, MPS control daemons and kernel executors, made,
kept and given back.

Creating a job's partition also yields the environment that selects it (``CUDA_VISIBLE_DEVICES``
and the MPS client settings; an executor job's admission token); that environment is built here
and nowhere else.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gpuos.devices.backend import DeviceBackend, DeviceInfo
from gpuos.errors import BackendError, FailedPrecondition
from gpuos.jobs import Job, PartitionKind, Placement
from gpuos.kernels.executor_control import TOKEN_ENV, new_token
from gpuos.mig import Instance
from gpuos.partitions.executor import ExecutorManager
from gpuos.partitions.mps import MpsManager

log = logging.getLogger("gpuos.controller")

# An MPS control daemon whose last client ended is stopped only after this long unused: starting
# or stopping one takes the control loop about a second (measured on the simulated backend under
# load), and shares come and go far more often than that on a busy GPU.
MPS_LINGER_SECONDS = 30.0
# A kernel executor with no job is stopped only after this long: starting one imports torch and
# Triton (seconds), and kernel jobs come in bursts.
EXECUTOR_LINGER_SECONDS = 30.0


@dataclass(frozen=True)
class Partitioned:
    """A job's partition once it exists: its placement (with the MIG instance's UUID) and the
    environment that puts the job's processes in it."""

    placement: Placement
    env: dict[str, str]


class Partitions:
    """Creates, releases and re-adopts the MIG instances and MPS daemons that jobs run in."""

    def __init__(self, backend: DeviceBackend, devices: Sequence[DeviceInfo], mps_root: Path,
                 mps_linger: float = MPS_LINGER_SECONDS, executor_root: Path | None = None,
                 executor_linger: float = EXECUTOR_LINGER_SECONDS) -> None:
        self.backend = backend
        self.devices = devices
        self.mps = self._mps_manager(mps_root)
        self.mps_linger = mps_linger
        self._mps_unused_since: dict[int, float] = {}  # GPUs whose control daemon has no client now
        # Kernel executors (``--share executor``); None where gpuosd was given nowhere to put their sockets.
        self.executors = (ExecutorManager(executor_root, lambda i: backend.visible_devices_env((i,)))
                          if executor_root is not None else None)
        self.executor_linger = executor_linger
        self._executor_unused_since: dict[int, float] = {}
        # MIG instances that exist but no job of ours holds (made by an administrator, say), per
        # GPU, as of the latest survey. They are never torn down: the scheduler sees them as occupied.
        self.foreign_slices: dict[int, list[Instance]] = {}

    def _mps_manager(self, root: Path) -> MpsManager | None:
        try:
            command = self.backend.mps_control_command()
        except BackendError:
            return None
        if shutil.which(command[0]) is None:
            log.info("MPS is not available (%s not found); fractional jobs cannot be placed", command[0])
            return None
        return MpsManager(root, command, {d.index: d.uuid for d in self.devices})

    def create(self, placement: Placement, others: Iterable[Placement] = ()) -> Partitioned:
        """Create the partition ``placement`` names (MIG instance, MPS daemon). Raises BackendError.

        ``others``: the placements that exist besides it; an MPS daemon's limits (its ceiling, see
        MpsManager.set_ceiling) follow the largest share among its clients.
        """
        index = placement.devices[0]
        if placement.kind is PartitionKind.MIG:
            if index in self._mps_unused_since and self.mps is not None:
                # The GPU turns to MIG slices: its idle MPS daemon serves nobody now.
                del self._mps_unused_since[index]
                self.mps.stop(index, wait=False)
            instance = self.backend.create_mig_instance(index, placement.granted.mig_profile, placement.mig_slot)
            placement = replace(placement, mig_uuid=instance.uuid)
        elif placement.kind is PartitionKind.MPS:
            if self.mps is None:
                raise BackendError("MPS is not available on this machine; submit with --share timeslice instead")
            self._mps_unused_since.pop(index, None)
        elif placement.kind is PartitionKind.EXECUTOR:
            if self.executors is None:
                raise BackendError("this gpuosd runs no kernel executors; submit with --share timeslice instead")
            self._executor_unused_since.pop(index, None)
            self.executors.start(index)  # spawned, not waited for: see executor_ready and admit
        partitioned = Partitioned(placement, self._env(placement))
        if placement.kind is PartitionKind.MPS:
            self._mps_ceiling(index, [placement, *others])
        return partitioned

    def _mps_ceiling(self, index: int, placements: Iterable[Placement]) -> None:
        """Set GPU ``index``'s MPS ceiling to the largest of the shares among ``placements`` there
        (a GPU with none keeps its ceiling: its daemon serves nobody until the next share sets it)."""
        shares = [p.granted for p in placements if p.kind is PartitionKind.MPS and index in p.devices]
        if self.mps is None or not shares:
            return
        try:
            self.mps.set_ceiling(index, max(g.gpu_milli for g in shares), max(g.memory_bytes for g in shares))
        except BackendError as exc:
            # The clients' own variables still carry the share; only its enforcement is lost.
            log.warning("could not set the MPS limits of GPU %d on its daemon: %s", index, exc)

    def _env(self, placement: Placement) -> dict[str, str]:
        if placement.kind is PartitionKind.MIG:
            return {"CUDA_VISIBLE_DEVICES": placement.mig_uuid}
        if placement.kind is PartitionKind.EXECUTOR:
            # The client only talks to the executor, which holds the GPU: it sees none itself.
            return {"CUDA_VISIBLE_DEVICES": ""}
        env = self.backend.visible_devices_env(placement.devices)
        if placement.kind is PartitionKind.MPS and self.mps is not None:
            env.update(self.mps.client_env(placement.devices[0], placement.granted.gpu_milli,
                                           placement.granted.memory_bytes))
        return env

    # -- kernel executors -------------------------------------------------------------------------

    def executor_socket(self, index: int) -> str:
        """Where the clients of GPU ``index``'s executor connect."""
        assert self.executors is not None
        return str(self.executors.socket(index))

    def executor_ready(self, index: int) -> bool:
        """Whether GPU ``index``'s executor answers yet; BackendError if it failed to come up."""
        if self.executors is None:
            raise BackendError("this gpuosd runs no kernel executors")
        return self.executors.ready(index)

    def admit(self, job: Job) -> dict[str, str]:
        """Admit executor job ``job`` to its GPU's executor (ready: see executor_ready) and return
        what its client needs: the one-time token, passed in its environment, never its argv."""
        placement = job.placement
        assert placement is not None and placement.kind is PartitionKind.EXECUTOR and self.executors is not None
        token = new_token()
        self.executors.admit(placement.devices[0], job.id, token, job.spec.tenant, job.spec.priority.name.lower(),
                             placement.granted.memory_bytes, job.spec.kernel)
        return {TOKEN_ENV: token}

    def executor_pids(self) -> set[int]:
        """The executors' processes, whose GPU memory no one job's limit counts."""
        return self.executors.pids() if self.executors is not None else set()

    def executor_died(self, index: int) -> bool:
        """GPU ``index``'s executor died and the loss is not reported yet (see lost_executors)."""
        return self.executors is not None and self.executors.known(index) and not self.executors.alive(index)

    def lost_executors(self) -> list[int]:
        """GPUs whose executor died since the last look (forgotten, so reported once; the next job
        placed there starts a new one)."""
        if self.executors is None:
            return []
        lost = self.executors.died()
        for index in lost:
            log.warning("the kernel executor of GPU %d died; its jobs died with it", index)
            self.executors.forget(index)
        return lost

    def stop_idle_executors(self, now: float) -> None:
        """Stop the executors that have had no job for ``executor_linger`` seconds."""
        if self.executors is None:
            return
        for index, since in list(self._executor_unused_since.items()):
            if now - since >= self.executor_linger:
                del self._executor_unused_since[index]
                self.executors.stop(index)

    def stop_unused_executors(self, placed: Iterable[Job]) -> None:
        """Stop the executors none of ``placed`` runs in (after a restart, say)."""
        if self.executors is not None:
            self.executors.stop_unused({
                i for j in placed if j.placement and j.placement.kind is PartitionKind.EXECUTOR
                for i in j.placement.devices
            }, [d.index for d in self.devices])

    def release(self, placement: Placement, others: Iterable[Placement], job_id: str = "") -> None:
        """Give back ``placement``'s MIG instance, and its MPS daemon when none of ``others`` uses it
        (else the daemon's ceiling comes down to the largest share left); an executor job,
        ``job_id``, is revoked, and its executor lingers when it has no other."""
        index = placement.devices[0]
        if placement.kind is PartitionKind.MIG and placement.mig_uuid:
            try:
                self.backend.destroy_mig_instance(index, placement.mig_uuid)
            except BackendError as exc:
                log.warning("could not destroy MIG instance %s: %s", placement.mig_uuid, exc)
        elif placement.kind is PartitionKind.MPS and self.mps is not None:
            left = [p for p in others if p.kind is PartitionKind.MPS and index in p.devices]
            if left:
                self._mps_ceiling(index, left)
            elif self.mps_linger <= 0:
                self.mps.stop(index)
            else:
                self._mps_unused_since[index] = time.time()
        elif placement.kind is PartitionKind.EXECUTOR and self.executors is not None:
            if job_id:
                self.executors.revoke(index, job_id)
            if not any(p.kind is PartitionKind.EXECUTOR and index in p.devices for p in others):
                if self.executor_linger <= 0:
                    self.executors.stop(index)
                else:
                    self._executor_unused_since[index] = time.time()

    def stop_idle_mps(self, now: float) -> None:
        """Stop the MPS control daemons that have had no client for ``mps_linger`` seconds."""
        if self.mps is None:
            return
        for index, since in list(self._mps_unused_since.items()):
            if now - since >= self.mps_linger:
                del self._mps_unused_since[index]
                self.mps.stop(index, wait=False)  # quitting takes a second; the loop need not wait

    def readopt(self, placement: Placement) -> Placement:
        """Make sure a re-attached job's MIG instance and MPS daemon still exist; its placement after."""
        index = placement.devices[0]
        if placement.kind is PartitionKind.MIG:
            if not any(i.uuid == placement.mig_uuid for i in self.backend.mig_instances(index)):
                # The simulator's instances live in gpuosd's memory; NVIDIA's persist on the GPU.
                instance = self.backend.create_mig_instance(index, placement.granted.mig_profile, placement.mig_slot)
                return replace(placement, mig_uuid=instance.uuid)
        elif placement.kind is PartitionKind.MPS and self.mps is not None:
            self.mps.ensure(index)
        elif placement.kind is PartitionKind.EXECUTOR and self.executors is not None:
            # Adopted, never restarted: a new executor would not know the job (its client then
            # fails and is reaped as such).
            self.executors.adopt(index)
        return placement

    def stop_unused_mps(self, placed: Iterable[Job]) -> None:
        """Stop the MPS daemons none of ``placed`` is a client of (after a restart, say)."""
        if self.mps is not None:
            self.mps.stop_unused({
                i for j in placed if j.placement and j.placement.kind is PartitionKind.MPS for i in j.placement.devices
            })

    def survey(self, active: Iterable[Job]) -> None:
        """Refresh ``foreign_slices``: the MIG instances on the GPUs that none of ``active`` holds."""
        ours = {j.placement.mig_uuid for j in active if j.placement is not None and j.placement.mig_uuid}
        self.foreign_slices = {
            d.index: [Instance(m.profile, m.start) for m in self.backend.mig_instances(d.index) if m.uuid not in ours]
            for d in self.devices if d.mig_capable
        }

    def lost_mps_daemons(self) -> list[int]:
        """GPUs whose MPS control daemon died since the last look (forgotten, so reported once)."""
        if self.mps is None:
            return []
        lost = self.mps.died()
        for index in lost:
            log.warning("the MPS control daemon of GPU %d died; its clients died with it", index)
            self.mps.forget(index)
        return lost

    def kill_mps_daemon(self, index: int) -> None:
        """Kill GPU ``index``'s MPS control daemon, as a crash would."""
        if self.mps is None or not self.mps.running(index):
            raise FailedPrecondition(f"GPU {index} has no MPS control daemon running")
        os.kill(self.mps.ensure(index).pid, signal.SIGKILL)

    def await_mps_gone(self, index: int, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds until GPU ``index`` has no MPS control daemon running."""
        deadline = time.time() + timeout
        while self.mps is not None and self.mps.running(index) and time.time() < deadline:
            time.sleep(0.01)
