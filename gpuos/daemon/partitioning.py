"""Partitions of the daemon's GPUs: MIG instances and MPS control daemons, made, kept and given back.

Creating a job's partition also yields the environment that selects it (``CUDA_VISIBLE_DEVICES``
and the MPS client settings); that environment is built here and nowhere else.
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
from gpuos.mig import Instance
from gpuos.partitions.mps import MpsManager

log = logging.getLogger("gpuos.controller")

# An MPS control daemon whose last client ended is stopped only after this long unused: starting
# or stopping one takes the control loop about a second (measured on the simulated backend under
# load), and shares come and go far more often than that on a busy GPU.
MPS_LINGER_SECONDS = 30.0


@dataclass(frozen=True)
class Partitioned:
    """A job's partition once it exists: its placement (with the MIG instance's UUID) and the
    environment that puts the job's processes in it."""

    placement: Placement
    env: dict[str, str]


class Partitions:
    """Creates, releases and re-adopts the MIG instances and MPS daemons that jobs run in."""

    def __init__(self, backend: DeviceBackend, devices: Sequence[DeviceInfo], mps_root: Path,
                 mps_linger: float = MPS_LINGER_SECONDS) -> None:
        self.backend = backend
        self.devices = devices
        self.mps = self._mps_manager(mps_root)
        self.mps_linger = mps_linger
        self._mps_unused_since: dict[int, float] = {}  # GPUs whose control daemon has no client now
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

    def create(self, placement: Placement) -> Partitioned:
        """Create the partition ``placement`` names (MIG instance, MPS daemon). Raises BackendError."""
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
        return Partitioned(placement, self._env(placement))

    def _env(self, placement: Placement) -> dict[str, str]:
        if placement.kind is PartitionKind.MIG:
            return {"CUDA_VISIBLE_DEVICES": placement.mig_uuid}
        env = self.backend.visible_devices_env(placement.devices)
        if placement.kind is PartitionKind.MPS and self.mps is not None:
            env.update(self.mps.client_env(placement.devices[0], placement.granted.gpu_milli,
                                           placement.granted.memory_bytes))
        return env

    def release(self, placement: Placement, others: Iterable[Placement]) -> None:
        """Give back ``placement``'s MIG instance, and its MPS daemon when none of ``others`` uses it."""
        index = placement.devices[0]
        if placement.kind is PartitionKind.MIG and placement.mig_uuid:
            try:
                self.backend.destroy_mig_instance(index, placement.mig_uuid)
            except BackendError as exc:
                log.warning("could not destroy MIG instance %s: %s", placement.mig_uuid, exc)
        elif placement.kind is PartitionKind.MPS and self.mps is not None:
            if not any(p.kind is PartitionKind.MPS and index in p.devices for p in others):
                if self.mps_linger <= 0:
                    self.mps.stop(index)
                else:
                    self._mps_unused_since[index] = time.time()

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
