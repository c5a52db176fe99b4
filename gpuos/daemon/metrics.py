"""Prometheus metrics for gpuosd (``--metrics-listen HOST:PORT``).

GPU gauges use the names of NVIDIA's DCGM exporter where the meaning is the same, so existing
dashboards work; everything else is ``gpuos_*``. Gauges are read at scrape time from a
:class:`MetricsSource` (the few reads they need, not the daemon), so scraping costs the control
loop nothing; counters and histograms are updated where the events happen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpuos.devices.backend import DeviceInfo, DeviceStatus
from gpuos.jobs import Job, JobState
from gpuos.partitions.slo import ColocationStatus

MIB = 1 << 20


class MetricsSource(Protocol):
    """What the gauges read at scrape time."""

    @property
    def devices(self) -> list[DeviceInfo]: ...

    def statuses(self) -> list[DeviceStatus]: ...

    def placed(self) -> list[Job]:
        """The RUNNING and PAUSED jobs, in submission order."""
        ...

    def active(self) -> list[Job]:
        """Jobs not yet finished."""
        ...

    @property
    def policy_name(self) -> str: ...

    def colocation_statuses(self) -> dict[str, ColocationStatus]:
        """SLO-driven colocation's placed jobs with an SLO or a throttle, by job id."""
        ...


class DaemonMetrics:
    """The counters and histograms the control loop updates, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_wait = Histogram(
            "gpuos_queue_wait_seconds", "Time from submit to start, per started job",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600), registry=self.registry,
        )
        self.decision = Histogram(
            "gpuos_scheduling_decision_seconds", "Time of one scheduling round (snapshot, policy, framework)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=self.registry,
        )
        self.preemptions = PromCounter("gpuos_preemptions", "Jobs preempted by the policy", registry=self.registry)
        self.memory_kills = PromCounter(
            "gpuos_memory_limit_kills", "Jobs stopped for using more GPU memory than their limit",
            registry=self.registry,
        )
        self.finished = PromCounter(
            "gpuos_jobs_finished", "Jobs that ended, by final state and reason", ["state", "reason"],
            registry=self.registry,
        )
        self.transfers = PromCounter(
            "gpuos_suspend_transfers", "Suspends to host and restores from it, by kind and outcome",
            ["kind", "outcome"], registry=self.registry,
        )
        self.transfer_rate = Histogram(
            "gpuos_suspend_transfer_gigabytes_per_second", "Host-link rate of each suspend or restore (GB/s)",
            ["kind"], buckets=(1, 2, 5, 10, 15, 20, 25, 35, 50, 75, 100), registry=self.registry,
        )
        self.faults = PromCounter(
            "gpuos_fault_stops", "Jobs stopped because their GPU or MPS daemon failed", ["reason"],
            registry=self.registry,
        )
        # Policy deploys (gpuos/daemon/deploy.py) and the shadow (gpuos/daemon/shadow.py).
        self.policy_switches = PromCounter(
            "gpuos_policy_switches", "Switches of the active policy, by kind (set, guarded-set, rollback)", ["kind"],
            registry=self.registry,
        )
        self.guard_value = Gauge(
            "gpuos_policy_guard_value", "The deploy guard's metric over its latest window (NaN: no sample yet)",
            ["metric"], registry=self.registry,
        )
        self.guard_bound = Gauge("gpuos_policy_guard_bound", "The deploy guard's bound", ["metric"],
                                 registry=self.registry)
        self.guard_samples = Gauge("gpuos_policy_guard_samples", "Samples in the deploy guard's latest window",
                                   ["metric"], registry=self.registry)
        self.shadow_rounds = PromCounter("gpuos_shadow_rounds", "Rounds the shadow candidate was asked about",
                                         registry=self.registry)
        self.shadow_differences = PromCounter(
            "gpuos_shadow_differences", "Jobs the shadow candidate decided differently, by kind", ["kind"],
            registry=self.registry,
        )

    def attach(self, source: MetricsSource) -> None:
        """Serve the gauges too, read from ``source`` at each scrape."""
        self.registry.register(_StateCollector(source))


class _StateCollector(Collector):
    """Gauges computed from the daemon's state when Prometheus scrapes."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        source = self.source
        labels = ["gpu", "UUID", "modelName"]
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=labels)
        used = GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=labels)
        free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=labels)
        temp = GaugeMetricFamily("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels=labels)
        power = GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=labels)
        healthy = GaugeMetricFamily("gpuos_gpu_healthy", "1 when the GPU answers and is not failed", labels=labels)
        reserved = GaugeMetricFamily("gpuos_gpu_memory_reserved_bytes", "GPU memory promised to placed jobs",
                                     labels=labels)
        info = {d.index: d for d in source.devices}
        placed = source.placed()
        for status in source.statuses():
            device = info[status.index]
            values = [str(status.index), device.uuid, device.model]
            util.add_metric(values, status.utilization_pct)
            used.add_metric(values, status.memory_used / MIB)
            free.add_metric(values, max(0, device.memory_total - status.memory_used) / MIB)
            if status.temperature_c is not None:
                temp.add_metric(values, status.temperature_c)
            if status.power_w is not None:
                power.add_metric(values, status.power_w)
            healthy.add_metric(values, 1.0 if status.healthy else 0.0)
            reserved.add_metric(values, sum(
                j.placement.granted.memory_bytes for j in placed
                if j.placement is not None and status.index in j.placement.devices
            ))
        yield from (util, used, free, temp, power, healthy, reserved)

        active = source.active()
        counts = Counter(j.state for j in active)
        jobs = GaugeMetricFamily("gpuos_jobs", "Jobs not yet finished, by state", labels=["state"])
        for state in (JobState.PENDING, JobState.RUNNING, JobState.PAUSED):
            jobs.add_metric([state.value.lower()], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("gpuos_queue_length", "Jobs waiting to be placed", value=counts.get(JobState.PENDING, 0))
        policy = GaugeMetricFamily("gpuos_policy_info", "The scheduling policy in use", labels=["policy"])
        policy.add_metric([source.policy_name], 1.0)
        yield policy
        yield from _colocation(source.colocation_statuses())


def _colocation(statuses: dict[str, ColocationStatus]) -> Iterator[Metric]:
    """Per-job SLO gauges. Only placed jobs with an SLO or a throttle have a series, so the
    label set stays bounded, and a job's series goes with it when it ends."""
    measured = GaugeMetricFamily("gpuos_slo_p99_seconds", "A job's requests' p99 latency over the SLO window",
                                 labels=["job"])
    target = GaugeMetricFamily("gpuos_slo_target_seconds", "A job's p99 latency target (its SLO)", labels=["job"])
    attained = GaugeMetricFamily("gpuos_slo_attainment", "Fraction of a job's window of requests within its SLO",
                                 labels=["job"])
    share = GaugeMetricFamily("gpuos_throttle_share", "Share of time a best-effort job may run beside SLO jobs",
                              labels=["job"])
    for job_id, status in statuses.items():
        if status.has_slo:
            measured.add_metric([job_id], status.p99_seconds)
            target.add_metric([job_id], status.slo_p99_seconds)
            attained.add_metric([job_id], status.attainment)
        else:
            share.add_metric([job_id], status.share)
    yield from (measured, target, attained, share)
