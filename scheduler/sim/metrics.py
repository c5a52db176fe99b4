"""What a simulation run measured, as a table a person reads and a figure.

JCT = finish - arrival; queueing delay = first start - arrival; both per QoS class over the jobs
that finished (unfinished jobs are counted apart). Allocation and fragmentation are time
averages over [first arrival, last event] of the share of healthy GPU capacity allocated, and
unusable by fragmentation (FGD's measure against the trace's own request distribution).

The user-facing figures count GPU jobs only (a request with GPU compute; CPU-only pods are left
out), and a job unfinished when the run stopped counts as if it finished (or, never started,
started) then, so a policy cannot improve a figure by leaving a job out of it:

- ``gpu_jct_mean``: mean JCT of the GPU jobs that finished (0 when none did);
- the latency group: the latency-class (LS, Guaranteed) GPU jobs, or all GPU jobs in a trace
  without any. ``slo_attainment``: its share finished within the job's SLO (a job without one
  gets the latency class's rule, :func:`slo_for`); ``latency_wait_p99``: the 99th percentile of
  its queueing delays;
- ``slowdown_mean``: mean bounded slowdown, max(1, JCT / max(duration, ``SLOWDOWN_TAU``));
- ``idle_while_waiting``: FGD's "unallocated GPU while jobs wait": over the time some GPU job
  waits that an empty cluster could take, the time-averaged share of healthy GPU capacity
  left unallocated (0 when no such job ever waits);
- ``jain``: Jain's index over tenants of their GPU jobs' mean service ratio min(1, duration /
  JCT) (1 = equal treatment); ``gpu_max_wait``: the longest queueing delay of a GPU job that
  started; ``gpu_never_started``: GPU jobs that never did;
- ``gpu_seconds``: the GPU-seconds every job was served (up to the end for one still running).

A trace with job groups or deduplication also gets ``agentic`` (:func:`agentic_stats`): its
GPU-seconds per group, each group's time to first success (from its first member's arrival to
its first member's success), the members their group stopped and the duplicates absorbed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpuos.scheduler.sim.engine import JobRecord, Outcome, Timeline
from gpuos.scheduler.sim.traces import LATENCY_CLASSES, slo_for
from gpuos.scheduler.snapshot import GroupKey

# Bounded slowdown's threshold (Feitelson): a job shorter than this is judged as if it took this
# long, so a 1-second job that waited 10 s does not outweigh every long job's slowdown.
SLOWDOWN_TAU = 10.0
# The class whose SLO rule applies to a job that carries no SLO of its own.
_LATENCY_RULE = "LS"


@dataclass(frozen=True)
class ClassStats:
    qos: str
    jobs: int
    finished: int
    jct_mean: float
    jct_median: float
    jct_p99: float
    wait_mean: float
    wait_median: float
    wait_p99: float


@dataclass(frozen=True)
class GroupStats:
    tenant: str
    name: str
    members: int
    gpu_seconds: float
    # Seconds from the group's first arrival to its first success (NaN: none succeeded).
    first_success: float
    # Members stopped by the group (sibling-succeeded, group-budget).
    stopped: int


@dataclass(frozen=True)
class AgenticStats:
    """Groups and deduplication in one run (:func:`agentic_stats`)."""

    gpu_seconds: float
    groups: tuple[GroupStats, ...]
    # Over the groups that had a success (NaN when none did).
    first_success_mean: float
    first_success_p50: float
    groups_succeeded: int
    stopped: int
    duplicates: int

    def line(self) -> str:
        return (f"groups {len(self.groups)}  succeeded {self.groups_succeeded}  GPU-seconds {self.gpu_seconds:.0f}  "
                f"first success mean {_dur(self.first_success_mean)} p50 {_dur(self.first_success_p50)}  "
                f"stopped by group {self.stopped}  duplicates absorbed {self.duplicates}")


def agentic_stats(records: list[JobRecord], labels: Mapping[str, GroupKey] | None = None) -> AgenticStats:
    """Group figures of a run; ``labels`` (job id -> group) counts groups for jobs that ran
    without them (the same jobs submitted plainly), else each job's own group counts."""
    by_group: dict[GroupKey, list[JobRecord]] = {}
    for r in records:
        key = labels.get(r.job.id) if labels is not None else ((r.job.tenant, r.job.group) if r.job.group else None)
        if key is not None:
            by_group.setdefault(key, []).append(r)
    stats = []
    for (tenant, name), members in sorted(by_group.items()):
        born = min(r.job.arrival for r in members)
        wins = [r.finish for r in members if r.finish is not None and r.succeeded]
        stats.append(GroupStats(
            tenant, name, len(members), sum(r.attained for r in members),
            min(wins) - born if wins else float("nan"), sum(1 for r in members if r.reason),
        ))
    firsts = [g.first_success for g in stats if g.first_success == g.first_success]
    return AgenticStats(
        gpu_seconds=sum(r.attained for r in records),
        groups=tuple(stats),
        first_success_mean=float(np.mean(firsts)) if firsts else float("nan"),
        first_success_p50=float(np.median(firsts)) if firsts else float("nan"),
        groups_succeeded=len(firsts),
        stopped=sum(1 for r in records if r.reason),
        duplicates=sum(1 for r in records if r.duplicate_of),
    )


@dataclass
class SimResult:
    """The outcome of :func:`gpuos.scheduler.sim.run_simulation`."""

    trace: str
    policy: str
    cluster: str
    seed: int
    jobs: int
    finished: int
    classes: tuple[ClassStats, ...]
    makespan: float
    allocation: float
    fragmentation: float
    slo_attainment: float
    jain: float
    preemptions: int
    failures: int
    rounds: int
    wall_seconds: float
    gpu_jct_mean: float
    latency_wait_p99: float
    slowdown_mean: float
    idle_while_waiting: float
    gpu_max_wait: float
    gpu_never_started: int
    outcome: Outcome = field(repr=False)
    gpu_seconds: float = 0.0
    agentic: AgenticStats | None = None

    @property
    def overall(self) -> ClassStats:
        return next(c for c in self.classes if c.qos == "all")

    def table(self) -> str:
        """A compact text table: one row per QoS class, then the cluster-wide figures."""
        head = f"{'qos':<11}{'jobs':>7}{'done':>7}{'JCT mean':>11}{'p50':>10}{'p99':>10}{'wait mean':>11}{'p50':>10}{'p99':>10}"
        lines = [f"{self.trace} | policy {self.policy} | {self.cluster} | seed {self.seed}", head]
        for c in self.classes:
            lines.append(
                f"{c.qos:<11}{c.jobs:>7}{c.finished:>7}{_dur(c.jct_mean):>11}{_dur(c.jct_median):>10}"
                f"{_dur(c.jct_p99):>10}{_dur(c.wait_mean):>11}{_dur(c.wait_median):>10}{_dur(c.wait_p99):>10}"
            )
        lines.append(
            f"makespan {_dur(self.makespan)}  alloc {self.allocation:.1%}  frag {self.fragmentation:.1%}  "
            f"SLO {self.slo_attainment:.1%}  Jain {self.jain:.3f}  preemptions {self.preemptions}  "
            f"failures {self.failures}  ({self.wall_seconds:.2f} s, {self.rounds} rounds)"
        )
        if self.agentic is not None:
            lines.append(self.agentic.line())
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Write a PNG: allocation, fragmentation and queue over time; the JCT distribution."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = self.outcome.timeline
        hours = np.asarray(t.times) / 3600.0
        fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 9))
        ax1.step(hours, np.asarray(t.allocated) * 100, where="post", label="allocated")
        ax1.step(hours, np.asarray(t.fragmented) * 100, where="post", label="fragmented (FGD measure)")
        ax1.set_ylabel("% of GPU capacity")
        ax1.legend(loc="upper right")
        ax2.step(hours, t.queued, where="post", label="queued")
        ax2.step(hours, t.running, where="post", label="running")
        ax2.set_ylabel("jobs")
        ax2.set_xlabel("hours")
        ax2.legend(loc="upper right")
        by_class: dict[str, list[float]] = {}
        for rec in self.outcome.records:
            if rec.finish is not None:
                by_class.setdefault(rec.job.qos, []).append(rec.finish - rec.job.arrival)
        for qos, values in sorted(by_class.items()):
            xs = np.sort(np.maximum(values, 1e-3))
            ax3.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=qos)
        ax3.set_xscale("log")
        ax3.set_xlabel("JCT (s)")
        ax3.set_ylabel("CDF")
        ax3.legend(loc="lower right")
        fig.suptitle(f"{self.trace} / {self.policy}")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


def _dur(seconds: float) -> str:
    if seconds != seconds:  # NaN: no jobs
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _class_stats(qos: str, records: list[JobRecord]) -> ClassStats:
    done = [r for r in records if r.finish is not None]
    jct = np.array([r.finish - r.job.arrival for r in done], dtype=float)  # type: ignore[operator]
    # A job that ended without running (stopped by its group, a duplicate) has no wait.
    wait = np.array([r.first_start - r.job.arrival for r in done if r.first_start is not None], dtype=float)  # type: ignore[operator]

    def stats(a: np.ndarray) -> tuple[float, float, float]:
        if not len(a):
            return float("nan"), float("nan"), float("nan")
        return float(a.mean()), float(np.median(a)), float(np.percentile(a, 99))

    return ClassStats(qos, len(records), len(done), *stats(jct), *stats(wait))


def jain_index(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one gets everything."""
    if not values:
        return 1.0
    a = np.asarray(values, dtype=float)
    denom = len(a) * float((a * a).sum())
    return float(a.sum() ** 2 / denom) if denom else 1.0


def _end(outcome: Outcome) -> float:
    """When the run stopped; for an outcome that does not say, its last recorded instant."""
    if outcome.end == outcome.end:
        return outcome.end
    instants = [*outcome.timeline.times[-1:], *(r.finish for r in outcome.records if r.finish is not None),
                *(r.first_start for r in outcome.records if r.first_start is not None)]
    return max(instants, default=0.0)


def _jct(r: JobRecord, end: float) -> float:
    """Completion time, up to ``end`` for a job that had not finished by then."""
    return max(0.0, (r.finish if r.finish is not None else end) - r.job.arrival)


def _wait(r: JobRecord, end: float) -> float:
    """Queueing delay (first start - arrival), up to ``end`` for a job that never started."""
    return max(0.0, (r.first_start if r.first_start is not None else end) - r.job.arrival)


def _slo(r: JobRecord) -> float:
    return r.job.slo or slo_for(_LATENCY_RULE, r.job.duration)


def _idle_while_waiting(t: Timeline, end: float) -> float:
    """Time-averaged unallocated share of healthy GPU capacity while a GPU job that an empty
    cluster could take waits; each sample holds until the next one (the last until ``end``).
    NaN where the timeline does not record waiting (a replay of gpuosd)."""
    if not t.times:
        return 0.0
    if len(t.gpu_waiting) != len(t.times):
        return float("nan")
    times = np.append(np.asarray(t.times, dtype=float), max(end, t.times[-1]))
    dt = np.diff(times)
    waiting = np.asarray(t.gpu_waiting, dtype=bool)
    span = float(dt[waiting].sum())
    if span <= 0:
        return 0.0
    idle = 1.0 - np.asarray(t.allocated, dtype=float)
    return float((idle[waiting] * dt[waiting]).sum() / span)


def summarise(outcome: Outcome, trace: str, policy: str, cluster: str, seed: int, wall: float) -> SimResult:
    records = outcome.records
    by_qos: dict[str, list[JobRecord]] = {}
    for r in records:
        by_qos.setdefault(r.job.qos, []).append(r)
    classes = [_class_stats(q, rs) for q, rs in sorted(by_qos.items())]
    classes.append(_class_stats("all", records))
    end = _end(outcome)
    gpu = [r for r in records if r.gpu]
    latency = [r for r in gpu if r.job.qos in LATENCY_CLASSES] or gpu
    met = sum(1 for r in latency if r.finish is not None and r.finish - r.job.arrival <= _slo(r))
    ratios: dict[str, list[float]] = {}
    for r in gpu:
        jct = _jct(r, end)
        ratios.setdefault(r.job.tenant, []).append(min(1.0, r.job.duration / jct) if jct > 0 else 1.0)
    done = [_jct(r, end) for r in gpu if r.finish is not None]
    latency_waits = [_wait(r, end) for r in latency]
    started = [_wait(r, end) for r in gpu if r.first_start is not None]
    slowdowns = [max(1.0, _jct(r, end) / max(r.job.duration, SLOWDOWN_TAU)) for r in gpu]
    t = outcome.timeline
    allocation = fragmentation = 0.0
    if len(t.times) > 1:
        times = np.asarray(t.times)
        dt = np.diff(times)
        span = times[-1] - times[0]
        if span > 0:
            allocation = float((np.asarray(t.allocated[:-1]) * dt).sum() / span)
            fragmentation = float((np.asarray(t.fragmented[:-1]) * dt).sum() / span)
    finishes = [r.finish for r in records if r.finish is not None]
    first = min((r.job.arrival for r in records), default=0.0)
    return SimResult(
        trace=trace,
        policy=policy,
        cluster=cluster,
        seed=seed,
        jobs=len(records),
        finished=len(finishes),
        classes=tuple(classes),
        makespan=(max(finishes) - first) if finishes else 0.0,
        allocation=allocation,
        fragmentation=fragmentation,
        slo_attainment=met / len(latency) if latency else 1.0,
        jain=jain_index([sum(v) / len(v) for v in ratios.values()]),
        preemptions=sum(r.preemptions for r in records),
        failures=outcome.failures,
        rounds=outcome.rounds,
        wall_seconds=wall,
        gpu_jct_mean=float(np.mean(done)) if done else 0.0,
        latency_wait_p99=float(np.percentile(latency_waits, 99)) if latency_waits else 0.0,
        slowdown_mean=float(np.mean(slowdowns)) if slowdowns else 1.0,
        idle_while_waiting=_idle_while_waiting(t, end),
        gpu_max_wait=max(started, default=0.0),
        gpu_never_started=len(gpu) - len(started),
        outcome=outcome,
        gpu_seconds=sum(r.attained for r in records),
        agentic=agentic_stats(records) if any(r.job.group or r.job.dedupe_key for r in records) else None,
    )
