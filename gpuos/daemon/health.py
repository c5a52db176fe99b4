"""Device health: sample the GPUs, judge each one, and find the jobs a fault or an overrun must stop.

This module only observes and judges; the control loop decides what a finding does to a job
(the policy says whether a fault requeues it) and the lifecycle carries it out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gpuos.daemon.partitioning import Partitions
from gpuos.devices.backend import DeviceBackend, DeviceInfo, DeviceStatus
from gpuos.jobs import Job, PartitionKind, Reason
from gpuos.partitions.memory import Overrun, overruns, usage_by_group

log = logging.getLogger("gpuos.controller")

HEALTH_INTERVAL = 1.0
MPS_DAEMON_LOST = "mps-daemon-lost"


@dataclass(frozen=True)
class Fault:
    """A fault took ``job``'s GPU (or its MPS daemon) away."""

    job: Job
    reason: str
    message: str


@dataclass(frozen=True)
class Findings:
    """What one health sample found, in the order it is to be acted on."""

    changed: bool  # some GPU turned failed or healthy again: the scheduler's view changed
    faults: tuple[Fault, ...]
    overruns: tuple[Overrun, ...]


class Health:
    """Samples the devices every ``interval`` seconds and keeps each GPU's verdict."""

    def __init__(
        self,
        backend: DeviceBackend,
        devices: Sequence[DeviceInfo],
        partitions: Partitions,
        failures_before_lost: int,
        interval: float = HEALTH_INTERVAL,
    ) -> None:
        self.backend = backend
        self.partitions = partitions
        self.interval = interval
        self.healthy = {d.index: True for d in devices}
        # Failed health samples in a row, per GPU: one NVML hiccup must not drain a GPU.
        self.failures_before_lost = failures_before_lost
        self._failed_samples = {d.index: 0 for d in devices}
        self.statuses: list[DeviceStatus] = []
        self._last = 0.0

    def due(self, now: float) -> bool:
        return now - self._last >= self.interval

    def sample_next_round(self) -> None:
        """Make the next ``due`` true (after an injected fault, say), whatever the interval."""
        self._last = 0.0

    def check(self, now: float, active: Sequence[Job]) -> Findings:
        """Sample the devices; the faults and memory overruns among ``active`` (jobs with a placement)."""
        self._last = now
        self.statuses = self.backend.status()
        changed = False
        faults: list[Fault] = []
        for status in self.statuses:
            was = self.healthy.get(status.index, True)
            healthy = self._judge(status)
            self.healthy[status.index] = healthy
            if was != healthy:
                changed = True
                log.warning("GPU %d is %s", status.index, "healthy again" if healthy else "failed; draining it")
            if healthy:
                continue
            faults += [Fault(job, Reason.DEVICE_LOST, f"GPU {status.index} failed")
                       for job in active if status.index in job.placement.devices]  # type: ignore[union-attr]
        for index in self.partitions.lost_mps_daemons():
            faults += [
                Fault(job, MPS_DAEMON_LOST, f"the MPS control daemon of GPU {index} died")
                for job in active
                if job.placement.kind is PartitionKind.MPS and index in job.placement.devices  # type: ignore[union-attr]
            ]
        for index in self.partitions.lost_executors():
            faults += [
                Fault(job, Reason.EXECUTOR_LOST, f"the kernel executor of GPU {index} died")
                for job in active
                if job.placement.kind is PartitionKind.EXECUTOR and index in job.placement.devices  # type: ignore[union-attr]
            ]
        return Findings(changed, tuple(faults), self._overruns(active))

    def _judge(self, status: DeviceStatus) -> bool:
        """Whether GPU ``status.index`` counts as healthy after this sample.

        A sample that could not be read (``sample_error``) counts against the GPU only after
        ``failures_before_lost`` of them in a row; a backend that knows the GPU is gone (the
        simulator's injected failure) reports it unhealthy without a sample error, and that
        counts at once.
        """
        index = status.index
        if status.sample_error:
            self._failed_samples[index] = self._failed_samples.get(index, 0) + 1
            if self._failed_samples[index] < self.failures_before_lost:
                log.info("GPU %d: health sample failed (%d of %d before it counts as lost): %s", index,
                         self._failed_samples[index], self.failures_before_lost, status.sample_error)
                return self.healthy.get(index, True)
            return False
        self._failed_samples[index] = 0
        return status.healthy

    def _overruns(self, active: Sequence[Job]) -> tuple[Overrun, ...]:
        limits = {
            j.id: (j.child_pid, j.placement.devices, j.placement.granted.memory_bytes)  # type: ignore[union-attr]
            for j in active if j.child_pid
        }
        return tuple(overruns(limits, usage_by_group(self.statuses, exclude=self.partitions.executor_pids())))
