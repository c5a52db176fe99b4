"""Shadow mode: a candidate policy decides every round beside the active one, and nothing it decides is applied.

A policy's decisions are a pure function of a snapshot (:func:`gpuos.scheduler.schedule`), so the
shadow asks the framework for the candidate's decisions on the very snapshot the active policy
just decided on, before the active decisions take effect, and keeps only where the two differ:
jobs placed by one and not the other, the same job on other GPUs (or shared another way), the
jobs both placed in another order, and preemptions asked by one only. The differences go into a
bounded log (the latest ``EXAMPLES_KEPT`` differing rounds) and counters. A candidate that raises,
or takes longer than ``TIME_LIMIT`` to decide a round, is switched off with an event; the round
goes on as if there were no shadow.

A candidate is untrusted (a policy file is screened by the sandbox's loader, yet runs in gpuosd's
process), so it decides in a thread of its own that the round waits for at most ``TIME_LIMIT``,
on a sealed copy of the snapshot (:func:`sealed`): nothing it is handed is anything the daemon
keeps using, so whatever it does to it, the active policy's decisions and the model stay as
they were.

The report's simulated effect replays the jobs seen since the shadow began through the simulator
(the same policy code), on gpuosd's GPUs, once under the active policy and once under the
candidate; :func:`window_trace` says how a live job becomes a trace job.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gpuos.devices.backend import DeviceInfo
from gpuos.history import HistoryJob, RunTime, run_time
from gpuos.jobs import Event, Job, JobKind, JobState
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
# The longest a candidate may take to decide one round. The active policy's own time is only
# measured (the controller rests ROUND_DUTY times it after each round); with a deep queue its
# rounds take tens of ms. A candidate several times slower than that would, deployed, keep the
# loop busy or resting for over a second after each round, so it is off before it is deployed;
# and the round it stalls, which holds the loop's lock, waits no longer than this.
TIME_LIMIT = 0.25
# Events read per query when a running job's run so far is added up.
_EVENTS_PER_READ = 1000


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
        self.limit = TIME_LIMIT  # seconds a round waits for the candidate (tests shorten it)

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

    def stop(self, reason: str = "", code: str = "") -> None:
        """Stop shadowing; the log and counters stay readable until the next start. With a
        ``reason`` (and its event reason ``code``) the candidate was switched off, not stopped."""
        with self._guard:
            name = self._choice.name if self._choice is not None else ""
            self._choice = self._policy = None
            self._disabled = reason
        if name:
            kind = "shadow-disabled" if reason else "shadow-stopped"
            self.store.record(kind, code, f"{name}: {reason or 'stopped by an admin'}", {})

    def round(self, snap: Snapshot, active: Sequence[Decision]) -> RoundDiff | None:
        """Compare the candidate's decisions on ``snap`` with ``active`` (about to be applied); None
        when nothing is shadowed, or the candidate raised or ran past ``limit`` seconds (it is then
        switched off). Returns within about ``limit`` seconds whatever the candidate does."""
        policy = self._policy
        if policy is None:
            return None
        outcome: list[list[Decision] | BaseException] = []
        view = sealed(snap)

        def decide() -> None:
            try:
                outcome.append(schedule(view, policy))
            except BaseException as exc:  # noqa: BLE001 - reported on the control thread, below
                outcome.append(exc)

        # Python cannot stop a thread: a candidate that never returns keeps its thread (a daemon
        # thread, so gpuosd can still exit) and its CPU, but the shadow is off by then and never
        # calls it again, and its snapshot is its own (no model state to race on).
        worker = threading.Thread(target=decide, name=f"shadow {policy.name}", daemon=True)
        worker.start()
        worker.join(self.limit)
        if not outcome:
            log.warning("shadow candidate %s took over %g s to decide; shadow switched off", policy.name, self.limit)
            self.stop(f"took over {self.limit:g} s to decide a round", "candidate-too-slow")
            return None
        theirs = outcome[0]
        if isinstance(theirs, BaseException):
            log.warning("shadow candidate %s raised; shadow switched off", policy.name, exc_info=theirs)
            self.stop(f"raised {type(theirs).__name__}: {theirs}", "candidate-raised")
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
        from gpuos.scheduler.sim.cluster import DaemonGpu, daemon_node

        node = daemon_node(DaemonGpu(d.index, d.model, d.memory_total, d.mig_profiles) for d in devices)
        trace, left_out = window_trace(self._window(after, since, now), since, node)
        if not trace.jobs:
            return SimulatedEffect(None, None, 0, left_out, "no job of the window can be simulated yet")
        return SimulatedEffect(_effect(trace, active.load()), _effect(trace, candidate.load()), len(trace.jobs),
                               left_out)

    def _window(self, after: int, since: float, now: float) -> list[HistoryJob]:
        """The newest ``MAX_SIMULATED_JOBS`` jobs after sequence number ``after`` submitted since
        ``since``, in submission order, each with its run time: the export's (store.history) for
        ended jobs, up to ``now`` for placed ones, none for waiting ones."""
        floor = self.store.page(size=1, newest=MAX_SIMULATED_JOBS).floor
        start = max(after, floor - 1)
        # Unfinished first, then the ended: a job ending in between is then read twice (the
        # ended record wins), never missed.
        by_id = {j.id: HistoryJob(j, self._run_so_far(j, now)) for j in self.store.active()
                 if j.seq > start and j.created_at >= since}
        cursor = start
        while True:
            ended, cursor = self.store.history(since=since, after=cursor)
            by_id.update((h.job.id, h) for h in ended)
            if not cursor:
                return sorted(by_id.values(), key=lambda h: h.job.seq)

    def _run_so_far(self, job: Job, now: float) -> RunTime:
        if not job.state.active:
            return RunTime(0.0, None)  # a waiting job replays for its estimate (window_trace)
        events: list[Event] = []
        while True:
            read = self.store.events(after_seq=events[-1].seq if events else 0, job_id=job.id,
                                     limit=_EVENTS_PER_READ)
            events += read
            if len(read) < _EVENTS_PER_READ:
                return run_time(events, end=now)


def sealed(snap: Snapshot) -> Snapshot:
    """``snap`` for the candidate: without the model's capacity index (mutable, and changed even
    by its reads, so neither the framework on the candidate's thread nor a runaway thread may
    touch it; the framework decides alike without it). The rest of a snapshot is immutable
    (frozen views in tuples, read-only mappings: scheduler/state.py)."""
    return dataclasses.replace(snap, index=None)


def window_trace(jobs: Sequence[HistoryJob], since: float, node: NodeSpec) -> tuple[Trace, int]:
    """The live ``jobs`` (each with its run time) as a trace starting at ``since``, and how many
    were left out.

    A job's duration is its run time once it ended, as ``gpuosctl trace export`` writes it (the
    stretches it spent RUNNING: gpuos/history.py); a placed job's is the larger of its estimate
    and its run time so far; a waiting job's is its estimate. Left out: jobs that ended without
    running, waiting jobs without an estimate, reservations, and jobs gpuosd's GPUs could never
    run. Groups and dedupe keys are not replayed: each job runs on its own."""
    from gpuos.scheduler.sim.traces import Trace, TraceJob, placeable

    out: list[TraceJob] = []
    left_out = 0
    for entry in jobs:
        job, spec = entry.job, entry.job.spec
        if spec.kind is JobKind.EXTERNAL or job.created_at < since:
            left_out += 1
            continue
        if job.state.terminal:
            duration = entry.run.seconds
        elif job.state == JobState.PENDING:
            duration = spec.estimated_seconds
        else:
            duration = max(spec.estimated_seconds, entry.run.seconds)
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
