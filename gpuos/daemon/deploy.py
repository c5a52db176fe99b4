"""Switching the active policy, with or without a guard, and switching back when a guard is breached.

Every switch goes through :class:`Deployment`: it records the switch as an event (kind
``policy-set``, ``policy-guarded-set`` or ``policy-rollback``, with the reason in words) and
the state it leaves in the store's meta in one transaction, so a restarted gpuosd runs the same
policy and keeps watching the same guard (its window is wall-clock time, so the jobs of the
restart's gap count as they ended). A guard (gpuos/guard.py says what breached means)
watches until the next ``policy set``; a breach switches back to the policy active before the
guarded deploy and ends the guard.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from gpuos.errors import InvalidArgument
from gpuos.guard import GUARD_PERIOD, DeployStatus, GuardSpec, Reading, Switch, Watch, read
from gpuos.jobs import Job
from gpuos.policy_choice import PolicyChoice
from gpuos.scheduler.policy import Policy

if TYPE_CHECKING:
    from gpuos.daemon.metrics import DaemonMetrics
    from gpuos.store import Store

log = logging.getLogger("gpuos.deploy")

# The store's meta keys: the active policy's name (read by older gpuosd too), a policy file's
# text when the active policy came from one, the guard watching it, the recent switches and
# the rollbacks so far.
POLICY_KEY = "policy"
FILE_KEY = "policy_file"
GUARD_KEY = "policy_guard"
SWITCHES_KEY = "policy_switches"
ROLLBACKS_KEY = "policy_rollbacks"
# Switches kept for `gpuosctl policy` (every one is an event too).
SWITCHES_KEPT = 20


def saved_choice(store: Store, configured: str = "") -> PolicyChoice:
    """The policy to start with: ``configured`` (gpuosd --policy), else the one active before
    the last stop (a policy file's kept text included), else fifo."""
    if configured:
        return PolicyChoice(configured)
    name = store.meta(POLICY_KEY) or "fifo"
    text = store.meta(FILE_KEY)
    if text:
        choice = PolicyChoice.from_json(text)
        if choice.name == name:
            return choice
    return PolicyChoice(name)


class Deployment:
    """The active policy's choice, its guard, and the switches between policies.

    ``policy`` is the active instance, which ``choice`` names. ``lock`` is the control loop's: a
    switch and a round never interleave. ``apply`` hands the controller a new policy instance."""

    def __init__(self, store: Store, choice: PolicyChoice, policy: Policy, apply: Callable[[Policy], None],
                 lock: threading.RLock, metrics: DaemonMetrics | None = None) -> None:
        self.store = store
        self.choice = choice
        self._policy_class = type(policy)
        self._apply = apply
        self._lock = lock
        self.metrics = metrics
        text = store.meta(GUARD_KEY)
        self.watch = Watch.from_json(text) if text else None
        if self.watch is not None and self.watch.deployed != choice.name:
            # gpuosd was started with another --policy: the guard watched a policy no longer active.
            log.warning("the guard on %s no longer applies: gpuosd starts with %s", self.watch.deployed, choice.name)
            self.watch = None
            store.set_meta(GUARD_KEY, "")
        self.reading: Reading | None = None
        self._next_read = 0.0
        if self.watch is not None:
            log.info("watching the guard %s on %s (deployed %.0f s ago by the clock)",
                     self.watch.spec.text, self.watch.deployed, max(0.0, time.time() - self.watch.since))
            self._set_gauges()

    # -- switching -----------------------------------------------------------------------------

    def set(self, choice: PolicyChoice, policy: Policy, guard: GuardSpec | None, now: float) -> Switch:
        """Make ``policy`` (which ``choice`` names) active, under ``guard`` when given; the guard
        of an earlier deploy ends either way."""
        with self._lock:
            previous = self.choice
            if guard is not None and previous.name == choice.name:
                raise InvalidArgument("name", f"{choice.name} is already active; a guard needs another policy "
                                              "to switch back to")
            latest = self.store.list(limit=1)
            watch = None
            kind = "set"
            reason = f"set by an admin (was {previous.name})"
            if guard is not None:
                watch = Watch(guard, previous, choice.name, now, latest[0].seq if latest else 0)
                kind = "guarded-set"
                reason = (f"guarded: {guard.text} over {guard.window:g}s windows (judged from {guard.min_samples} "
                          f"samples); a breach switches back to {previous.name}")
            switch = self._switch(choice, policy, kind, reason, watch, now)
            self.reading = None
            self._next_read = now + GUARD_PERIOD
            return switch

    def _switch(self, choice: PolicyChoice, policy: Policy, kind: str, reason: str, watch: Watch | None,
                now: float) -> Switch:
        switch = Switch(now, self.choice.name, choice.name, kind, reason)
        switches = [*self._switches(), switch][-SWITCHES_KEPT:]
        meta: dict[str, str | None] = {
            POLICY_KEY: choice.name,
            FILE_KEY: choice.to_json() if choice.from_file else None,
            GUARD_KEY: watch.to_json() if watch is not None else None,
            SWITCHES_KEY: json.dumps([asdict(s) for s in switches]),
        }
        if kind == "rollback":
            meta[ROLLBACKS_KEY] = str(self.rollbacks + 1)
        self.store.record(f"policy-{kind}", kind, f"{switch.from_policy} -> {switch.to_policy}: {reason}", meta)
        self._apply(policy)
        self.choice = choice
        self._policy_class = type(policy)
        self.watch = watch
        if self.metrics is not None:
            self.metrics.policy_switches.labels(kind).inc()
        self._set_gauges()
        log.info("policy %s -> %s (%s): %s", switch.from_policy, switch.to_policy, kind, reason)
        return switch

    # -- the guard -----------------------------------------------------------------------------

    def watch_round(self, now: float) -> Reading | None:
        """Read the guard if one watches and a reading is due; roll back if it is breached.
        Called by the control loop each round, without its lock held: the store is read outside
        the lock, which is taken only to see which guard watches and to record or act on its
        reading. Returns the reading taken (None: none was due, or a switch ended the guard
        while it was read)."""
        with self._lock:
            watch = self.watch
            if watch is None or now < self._next_read:
                return None
            self._next_read = now + GUARD_PERIOD
        reading = read(watch.spec, self._window_jobs(watch, now), watch.since, now)
        with self._lock:
            if self.watch is not watch:
                return None  # a policy set meanwhile: this guard no longer watches
            self.reading = reading
            self._set_gauges()
            if reading.breached:
                self._roll_back(watch, reading, now)
            return reading

    def _window_jobs(self, watch: Watch, now: float) -> list[Job]:
        """The jobs submitted since the deploy that may fall in the window: the unfinished ones
        (from memory) and those that ended since the window's start (one indexed read); a job
        ended before the window's start neither started nor ended in it."""
        start = max(watch.since, now - watch.spec.window)
        # Memory first: a job that ends between the two reads is then in both (its ended record
        # wins), where the other order would miss it in both.
        jobs = {job.id: job for job in self.store.active() if job.seq > watch.after_seq}
        jobs.update((job.id, job) for job in self.store.finished_since(start, after=watch.after_seq))
        return list(jobs.values())

    def _roll_back(self, watch: Watch, reading: Reading, now: float) -> None:
        spec = watch.spec
        reason = (f"guard {spec.text} breached: {spec.metric} was {reading.value:.4g} over the last "
                  f"{spec.window:g}s ({reading.samples} samples; bound {spec.bound:g})")
        try:
            policy = watch.previous.load()
        except InvalidArgument as exc:
            # The policy to go back to is gone (uninstalled since): fifo is always there.
            log.error("cannot switch back to %s (%s); switching to fifo", watch.previous.name, exc)
            fallback = PolicyChoice("fifo")
            self._switch(fallback, fallback.load(), "rollback", f"{reason}; {watch.previous.name} is gone", None, now)
            return
        self._switch(watch.previous, policy, "rollback", reason, None, now)

    def _set_gauges(self) -> None:
        if self.metrics is None:
            return
        for gauge in (self.metrics.guard_value, self.metrics.guard_bound, self.metrics.guard_samples):
            gauge.clear()
        watch = self.watch
        if watch is None:
            return
        metric = watch.spec.metric
        reading = self.reading
        self.metrics.guard_bound.labels(metric).set(watch.spec.bound)
        self.metrics.guard_value.labels(metric).set(reading.value if reading is not None else math.nan)
        self.metrics.guard_samples.labels(metric).set(reading.samples if reading is not None else 0)

    # -- reading -------------------------------------------------------------------------------

    @property
    def rollbacks(self) -> int:
        return int(self.store.meta(ROLLBACKS_KEY) or 0)

    def _switches(self) -> list[Switch]:
        text = self.store.meta(SWITCHES_KEY)
        return [Switch(**s) for s in json.loads(text)] if text else []

    def status(self) -> DeployStatus:
        with self._lock:
            return DeployStatus(self.choice, self._policy_class, self.watch, self.reading, tuple(self._switches()),
                                self.rollbacks)
