"""A deploy guard: a live metric, a bound, a sliding window, and when it counts as breached; the deploy records.

``gpuosctl policy set NAME --guard METRIC<=BOUND --window W`` deploys a policy under a guard;
:mod:`gpuos.daemon.deploy` switches back to the policy active before when the guard is breached.
The metrics, over the latency class's GPU jobs (QoS LS or Guaranteed, holding GPU compute; CPU-only
jobs and reservations left out) submitted after the switch, so jobs queued under the previous
policy never count against the new one:

- ``p99_queue_delay_ls`` (seconds, guarded with ``<=``): the 99th percentile (linear
  interpolation, as numpy's default) of the queueing delays of the jobs that started within the
  window (delay = latest start - submit; a preempted job's includes its earlier runs) together
  with the jobs still waiting at the window's end (delay so far = now - submit). Waiting jobs
  count so that a policy that starves the class shows it instead of hiding it;
- ``slo_attainment`` (a fraction, guarded with ``>=``): the share of the jobs that ended within
  the window that met the simulator's SLO rule (:func:`gpuos.scheduler.sim.traces.slo_for`), with
  the job's last run (end - latest start) as its duration. Only ended jobs count: a job's SLO
  needs its duration.

**Breached over the window**: at an evaluation (every ``GUARD_PERIOD`` seconds), the window is
the last ``window`` seconds, cut at the switch (so a fresh deploy's first window is shorter); it
is judged only once it holds at least ``min_samples`` samples (default 5), and it is breached when
the metric over it is on the wrong side of the bound (``>`` for ``<=``, ``<`` for ``>=``). One
breached evaluation rolls back: the window itself is the smoothing, and a window with too few
samples is never judged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from gpuos.errors import InvalidArgument
from gpuos.extras import require
from gpuos.jobs import Job, JobKind, JobState
from gpuos.policy_choice import PolicyChoice
from gpuos.scheduler.policy import Policy
from gpuos.text import quote
from gpuos.units import parse_duration

P99_QUEUE_DELAY_LS = "p99_queue_delay_ls"
SLO_ATTAINMENT = "slo_attainment"
# The direction each metric is guarded in: a delay is held under a bound, an attainment over one.
METRIC_OPS = {P99_QUEUE_DELAY_LS: "<=", SLO_ATTAINMENT: ">="}
DEFAULT_MIN_SAMPLES = 5
# Seconds between evaluations: each reads the window's jobs from the store.
GUARD_PERIOD = 1.0
_GUARD = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(<=|>=|<|>|=)\s*(\S.*?)\s*$")


@dataclass(frozen=True)
class GuardSpec:
    """A metric held on one side of a bound over a sliding window."""

    metric: str
    op: str
    bound: float
    window: float
    min_samples: int = DEFAULT_MIN_SAMPLES

    @property
    def text(self) -> str:
        bound = f"{self.bound:g}s" if self.metric == P99_QUEUE_DELAY_LS else f"{self.bound:g}"
        return f"{self.metric}{self.op}{bound}"

    def breached_by(self, value: float) -> bool:
        return value > self.bound if self.op == "<=" else value < self.bound


def parse_guard(text: str, window: str, min_samples: int = 0) -> GuardSpec:
    """``METRIC<=BOUND`` (or ``>=``) and a window duration; InvalidArgument naming "guard",
    "window" or "min_samples" for an unknown metric, the wrong direction for the metric, a bad
    bound or a bad window."""
    match = _GUARD.match(text)
    if not match:
        raise InvalidArgument("guard", f"{quote(text)} is not METRIC<=BOUND or METRIC>=BOUND "
                                       f"(metrics: {_metrics()})")
    metric, op, bound_text = match.groups()
    if metric not in METRIC_OPS:
        raise InvalidArgument("guard", f"unknown metric {quote(metric)}; guard one of {_metrics()}")
    if op != METRIC_OPS[metric]:
        raise InvalidArgument("guard", f"{metric} is guarded with {METRIC_OPS[metric]} "
                                       f"(write {metric}{METRIC_OPS[metric]}BOUND), not {op}")
    if metric == P99_QUEUE_DELAY_LS:
        try:
            bound = parse_duration(bound_text, "guard")
        except InvalidArgument as exc:
            raise InvalidArgument("guard", f"the bound of {metric}: {exc.problem}") from None
    else:
        bound = _fraction(bound_text)
    if not window.strip():
        raise InvalidArgument("window", "a guard needs a window, e.g. --window 5m")
    seconds = parse_duration(window, "window")
    if not 0 < seconds < math.inf:
        raise InvalidArgument("window", f"{quote(window)} is not a positive duration")
    if min_samples < 0:
        raise InvalidArgument("min_samples", f"{min_samples} is negative")
    return GuardSpec(metric, op, bound, seconds, min_samples or DEFAULT_MIN_SAMPLES)


def require_readable(spec: GuardSpec) -> None:
    """MissingExtra unless gpuosd can read ``spec``'s metric here: the SLO rule is the
    simulator's (slo_for), which lives beside its numpy-backed metrics."""
    if spec.metric == SLO_ATTAINMENT:
        require("an slo_attainment guard", "sim", ("numpy",))


def _fraction(text: str) -> float:
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text) / (100.0 if percent else 1.0)
    except ValueError:
        raise InvalidArgument("guard", f"the bound of {SLO_ATTAINMENT} is a fraction like 0.95 or 95%, "
                                       f"not {quote(text)}") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument("guard", f"the bound of {SLO_ATTAINMENT} is a fraction from 0 to 1, not {quote(text)}")
    return value


def _metrics() -> str:
    return ", ".join(f"{m}{op}BOUND" for m, op in METRIC_OPS.items())


@dataclass(frozen=True)
class Reading:
    """The guard's metric over one window."""

    value: float
    samples: int
    at: float
    judged: bool
    breached: bool


def _latency_gpu_job(job: Job) -> bool:
    request = job.spec.resources
    holds_gpu = request.gpus > 0 or request.gpu_milli > 0 or bool(request.mig_profile)
    return job.spec.kind is not JobKind.EXTERNAL and job.spec.qos.latency_sensitive and holds_gpu


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` by linear interpolation (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def samples(metric: str, jobs: Iterable[Job], start: float, now: float) -> list[float]:
    """The window [start, now]'s samples of ``metric`` from ``jobs`` (those submitted since the
    switch): delays in seconds, or 1.0 / 0.0 for an SLO met / missed."""
    out: list[float] = []
    for job in jobs:
        if not _latency_gpu_job(job):
            continue
        if metric == P99_QUEUE_DELAY_LS:
            if job.state == JobState.PENDING:
                out.append(max(0.0, now - job.created_at))
            elif job.started_at is not None and start <= job.started_at <= now:
                out.append(max(0.0, job.started_at - job.created_at))
        elif job.finished_at is not None and start <= job.finished_at <= now and job.started_at is not None:
            out.append(1.0 if job.finished_at - job.created_at <= _slo(job) else 0.0)
    return out


def _slo(job: Job) -> float:
    from gpuos.scheduler.sim.traces import slo_for

    assert job.finished_at is not None and job.started_at is not None
    return slo_for(job.spec.qos.value, job.finished_at - job.started_at)


def read(spec: GuardSpec, jobs: Iterable[Job], since: float, now: float) -> Reading:
    """``spec``'s metric over the window ending ``now``, cut at the switch at ``since``."""
    values = samples(spec.metric, jobs, max(since, now - spec.window), now)
    if not values:
        return Reading(math.nan, 0, now, judged=False, breached=False)
    if spec.metric == P99_QUEUE_DELAY_LS:
        value = percentile(values, 99.0)
    else:
        value = sum(values) / len(values)
    judged = len(values) >= spec.min_samples
    return Reading(value, len(values), now, judged=judged, breached=judged and spec.breached_by(value))


def spec_to_json(spec: GuardSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> GuardSpec:
    data = json.loads(text)
    return GuardSpec(str(data["metric"]), str(data["op"]), float(data["bound"]), float(data["window"]),
                     int(data["min_samples"]))


@dataclass(frozen=True)
class Switch:
    """One change of the active policy: kind "set", "guarded-set" or "rollback", and why."""

    time: float
    from_policy: str
    to_policy: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Watch:
    """A guard watching the policy deployed at ``since``; ``previous`` is what a breach restores.
    ``after_seq``: the store's last job when it was deployed (later jobs are the guard's)."""

    spec: GuardSpec
    previous: PolicyChoice
    deployed: str
    since: float
    after_seq: int

    def to_json(self) -> str:
        return json.dumps({"spec": spec_to_json(self.spec), "previous": self.previous.to_json(),
                           "deployed": self.deployed, "since": self.since, "after_seq": self.after_seq})

    @classmethod
    def from_json(cls, text: str) -> Watch:
        data = json.loads(text)
        return cls(spec_from_json(data["spec"]), PolicyChoice.from_json(data["previous"]), str(data["deployed"]),
                   float(data["since"]), int(data["after_seq"]))


@dataclass(frozen=True)
class DeployStatus:
    """The active policy, the guard watching it (if any) with its latest reading, the recent switches.
    ``policy``: the active policy's class, whose attributes say what it is (description, provenance)
    without loading a policy file again."""

    choice: PolicyChoice
    policy: type[Policy]
    watch: Watch | None
    reading: Reading | None
    switches: tuple[Switch, ...]
    rollbacks: int
