"""Shadow mode: a candidate policy decides every round beside the active one, and nothing it decides is applied.

A policy's decisions are a pure function of a snapshot (:func:`gpuos.scheduler.schedule`), so the
shadow asks the framework for the candidate's decisions on the very snapshot the active policy
just decided on, before the active decisions take effect, and keeps only where the two differ:
jobs placed by one and not the other, the same job on other GPUs (or shared another way), the
jobs both placed in another order, and preemptions asked by one only. The differences go into a
bounded log (the latest ``EXAMPLES_KEPT`` differing rounds) and counters. A candidate that raises
is switched off with an event; the round goes on as if there were no shadow.

The report's simulated effect replays the jobs seen since the shadow began through the simulator
(the same policy code), on gpuosd's GPUs, once under the active policy and once under the
candidate; :func:`window_trace` says how a live job becomes a trace job.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gpuos.devices.backend import DeviceInfo
from gpuos.jobs import Job, JobKind, JobState
from gpuos.policy_choice import PolicyChoice
from gpuos.scheduler.framework import schedule
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.snapshot import Decision, Snapshot
from gpuos.shadowing import DIFF_KINDS, Effect, RoundDiff, ShadowState, SimulatedEffect, compare

if TYPE_CHECKING:
    from gpuos.daemon.metrics import DaemonMetrics
    from gpuos.scheduler.sim.cluster import NodeSpec
    from gpuos.scheduler.sim.traces import Trace
    from gpuos.store import Store

log = logging.getLogger("gpuos.shadow")

EXAMPLES_KEPT = 100
# The newest jobs the simulated effect replays (a long shadow's window is cut to these).
MAX_SIMULATED_JOBS = 5000
class Shadow:
    """The candidate being shadowed (at most one), its counters and its log of differing rounds.

    Its methods are called under the control loop's lock (``round`` from the loop, the others
    through the controller); ``state`` may be read from any thread."""

    def __init__(self, store: Store, metrics: DaemonMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._guard = threading.Lock()  # for readers outside the control loop's lock
        self._choice: PolicyChoice | None = None
        self._policy: Policy | None = None
        self._since = 0.0
        self._after_seq = 0
        self._rounds = 0
        self._differing = 0
        self._counts = dict.fromkeys(DIFF_KINDS, 0)
        self._examples: deque[RoundDiff] = deque(maxlen=EXAMPLES_KEPT)
        self._disabled = ""
        self._last_candidate = ""

    @property
    def on(self) -> bool:
        return self._policy is not None

    def start(self, choice: PolicyChoice, policy: Policy, now: float) -> None:
        """Shadow ``policy`` from the next round on; an earlier shadow's log and counters go."""
        latest = self.store.list(limit=1)
        with self._guard:
            self._choice, self._policy = choice, policy
            self._last_candidate = choice.name
            self._since = now
            self._after_seq = latest[0].seq if latest else 0
            self._rounds = self._differing = 0
            self._counts = dict.fromkeys(DIFF_KINDS, 0)
            self._examples.clear()
            self._disabled = ""
        self.store.record("shadow-started", "", f"shadowing {choice.name}", {})
        log.info("shadowing %s", choice.name)

    def stop(self, reason: str = "") -> None:
        """Stop shadowing; the log and counters stay readable until the next start."""
        with self._guard:
            name = self._choice.name if self._choice is not None else ""
            self._choice = self._policy = None
            self._disabled = reason
        if name:
            kind = "shadow-disabled" if reason else "shadow-stopped"
            self.store.record(kind, "candidate-raised" if reason else "", f"{name}: {reason or 'stopped by an admin'}",
                              {})

    def round(self, snap: Snapshot, active: Sequence[Decision]) -> RoundDiff | None:
        """Compare the candidate's decisions on ``snap`` with ``active`` (about to be applied); None
        when nothing is shadowed or the candidate raised (it is then switched off)."""
        policy = self._policy
        if policy is None:
            return None
        try:
            theirs = schedule(snap, policy)
        except Exception as exc:  # noqa: BLE001 - a candidate's failure must never fail the round
            log.warning("shadow candidate %s raised; shadow switched off", policy.name, exc_info=exc)
            self.stop(f"raised {type(exc).__name__}: {exc}")
            return None
        diff = compare(active, theirs, snap.now)
        counts = diff.counts()
        with self._guard:
            self._rounds += 1
            if diff.differs:
                self._differing += 1
                self._examples.append(diff)
                for kind, n in counts.items():
                    self._counts[kind] += n
        if self.metrics is not None:
            self.metrics.shadow_rounds.inc()
            for kind, n in counts.items():
                if n:
                    self.metrics.shadow_differences.labels(kind).inc(n)
        return diff

    def state(self, examples: int = 10) -> ShadowState:
        with self._guard:
            shown = tuple(self._examples)[-examples:] if examples > 0 else ()
            return ShadowState(self._policy is not None, self._last_candidate, self._since, self._rounds,
                               self._differing, self._disabled, dict(self._counts), shown)

    # -- the simulated effect ------------------------------------------------------------------

    def simulate(self, active: PolicyChoice, devices: Sequence[DeviceInfo], now: float) -> SimulatedEffect:
        """Replay the jobs seen since the shadow began under ``active`` and the candidate."""
        from gpuos import extras

        with self._guard:
            candidate, since, after = self._choice, self._since, self._after_seq
        if candidate is None:
            return SimulatedEffect(None, None, 0, 0, "no candidate is shadowed")
        if extras.missing(("numpy",)):
            return SimulatedEffect(None, None, 0, 0, f"the simulator needs numpy ({extras.install_hint('sim')})")
        jobs = self._jobs_since(after)
        trace, left_out = window_trace(jobs, since, now, cluster_of(devices))
        if not trace.jobs:
            return SimulatedEffect(None, None, 0, left_out, "no job of the window can be simulated yet")
        return SimulatedEffect(_effect(trace, active.load()), _effect(trace, candidate.load()), len(trace.jobs),
                               left_out)

    def _jobs_since(self, after: int) -> list[Job]:
        out: list[Job] = []
        while True:
            page = self.store.page(after=after, size=500)
            out.extend(page.jobs)
            if not page.next_after:
                return out[-MAX_SIMULATED_JOBS:]
            after = page.next_after


def cluster_of(devices: Sequence[DeviceInfo]) -> NodeSpec:
    """gpuosd's GPUs as one simulated node (their models, memory and MIG profiles)."""
    from gpuos.scheduler.sim.cluster import GpuType, NodeSpec

    gpus = tuple(GpuType(d.model, d.memory_total, d.mig_profiles) for d in sorted(devices, key=lambda d: d.index))
    return NodeSpec("gpuosd", gpus)


def window_trace(jobs: Sequence[Job], since: float, now: float, node: NodeSpec) -> tuple[Trace, int]:
    """The live ``jobs`` as a trace starting at ``since``, and how many were left out.

    A job's duration is its last run (end - latest start) once it ended; a running job's is the
    larger of its estimate and its run so far; a waiting job's is its estimate. Left out: jobs
    that ended without running, waiting jobs without an estimate, reservations, and jobs gpuosd's
    GPUs could never run. Groups and dedupe keys are not replayed: each job runs on its own."""
    from gpuos.scheduler.sim.traces import Trace, TraceJob, placeable

    out: list[TraceJob] = []
    left_out = 0
    for job in jobs:
        spec = job.spec
        if spec.kind is JobKind.EXTERNAL or job.created_at < since:
            left_out += 1
            continue
        if job.state.terminal:
            duration = (job.finished_at or now) - job.started_at if job.started_at is not None else 0.0
        elif job.state == JobState.PENDING:
            duration = spec.estimated_seconds
        else:
            duration = max(spec.estimated_seconds, now - (job.started_at or now))
        if duration <= 0:
            left_out += 1
            continue
        out.append(TraceJob(id=job.id, arrival=job.created_at - since, duration=duration, request=spec.resources,
                            tenant=spec.tenant, qos=spec.qos.value, priority=int(spec.priority),
                            estimate=spec.estimated_seconds))
    trace, unplaceable = placeable(Trace("gpuosd shadow window", (node,), tuple(out), "gpuosd's own jobs"))
    return trace, left_out + len(unplaceable)


def _effect(trace: Trace, policy: Policy) -> Effect:
    from gpuos.scheduler.sim import run_simulation

    result = run_simulation(trace, policy)
    return Effect(policy.name, result.gpu_jct_mean, result.latency_wait_p99, result.slo_attainment)
