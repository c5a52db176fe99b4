"""Validity that covers intent: checks a candidate must pass whatever it scores.

Pure functions the evaluator calls on a candidate's runs (:class:`TraceRun`) and on its queue
order; each returns readable problems, an empty answer meaning valid:

- user priority is monotone: of two pending jobs identical but for ``priority``, the higher one
  never ranks behind the lower (:func:`priority_inversions` over :func:`priority_probes`);
- tenant fairness within a bound: the candidate's Jain index over tenants is at most
  ``JAIN_BOUND`` below the worst human policy's on the same trace (:func:`fairness_problem`);
- no starvation past a bound: no more GPU jobs left unstarted or unfinished than FIFO leaves,
  and no GPU job waits longer than :func:`starvation_bound` (:func:`starvation_problem`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from gpuos.agents.objectives import TraceRun
from gpuos.jobs import Priority, Resources
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.snapshot import MILLI, GpuView, JobView, NodeView, Snapshot
from gpuos.units import GiB

# A queue order as the check sees it: the pending jobs and the snapshot in, job ids out (first
# runs first). For an untrusted candidate the evaluator answers it across the process boundary.
Order = Callable[[Sequence[JobView], Snapshot], Sequence[str]]

PROBE_SEED = 12
# The two jobs of every probe; which of them carries the higher priority is swapped, so that an
# order decided by id alone (FIFO's last tie-break) is never taken for an inversion.
PAIR = ("probe-a", "probe-b")
PRIORITY_PAIRS = ((Priority.HIGH, Priority.NORMAL), (Priority.NORMAL, Priority.LOW), (Priority.HIGH, Priority.LOW))
# Jain's index may fall this far (absolute) below the worst human policy's before it is a problem:
# a 300-job window moves the index by about a hundredth between honest policies.
JAIN_BOUND = 0.05
# A GPU job may wait this many times the longest wait any human policy caused ...
STARVATION_FACTOR = 2.0
# ... or this share of FIFO's makespan, whichever is larger (a trace where every human policy
# starts every job at once must not make a one-minute wait starvation).
STARVATION_MAKESPAN_SHARE = 0.25

_MEMORY = 80 * GiB
_GPUS_PER_NODE = 8


@dataclass(frozen=True)
class PriorityProbe:
    """A snapshot whose pending jobs include the pair :data:`PAIR`, identical but for priority
    (``PAIR[0]`` holds ``high``, ``PAIR[1]`` ``low``); ``context`` says what else is going on."""

    context: str
    snapshot: Snapshot
    high: int
    low: int


def _node(name: str, busy: Sequence[str] = ()) -> NodeView:
    """A node of eight 80 GB GPUs, the first ``len(busy)`` held whole by the jobs ``busy``."""
    gpus = tuple(
        GpuView(i, "A100-80GB", _MEMORY, 0, milli_free=0, jobs=(busy[i],)) if i < len(busy)
        else GpuView(i, "A100-80GB", _MEMORY, _MEMORY)
        for i in range(_GPUS_PER_NODE)
    )
    return NodeView(name, gpus)


def _others(rng: random.Random, now: float, pending: int, running: int) -> tuple[list[JobView], list[JobView]]:
    """Unrelated jobs around the pair: ``pending`` queued ones and ``running`` ones on node-0."""
    queued = [
        JobView(
            f"other-{k}", Resources(gpus=rng.choice((1, 2))), tenant=rng.choice(("t1", "t2")),
            priority=rng.choice(list(Priority)), qos=rng.choice(("BE", "LS")),
            submitted_at=now - rng.uniform(0, 900), attained_service=rng.choice((0.0, rng.uniform(10, 2000))),
            estimated_seconds=rng.choice((0.0, rng.uniform(60, 7200))),
        )
        for k in range(pending)
    ]
    live = [
        JobView(
            f"running-{k}", Resources(gpus=1), tenant=rng.choice(("t0", "t1", "t2")), priority=rng.choice(list(Priority)),
            submitted_at=now - rng.uniform(900, 3600), started_at=now - rng.uniform(0, 900),
            attained_service=rng.uniform(0, 900), node="node-0", gpus=(k,), service_rate=1.0, service_since=now,
        )
        for k in range(running)
    ]
    return queued, live


def priority_probes() -> tuple[PriorityProbe, ...]:
    """A fixed, seeded set of small snapshots, each with two pending jobs identical but for
    priority, in contexts that policies read: no service yet, service from an earlier run
    (preempted), user estimates, the latency class, multi-GPU and fractional requests, other
    jobs pending and running. Every context is probed with each of :data:`PRIORITY_PAIRS`."""
    rng = random.Random(f"priority-probes/{PROBE_SEED}")
    contexts: list[tuple[str, dict[str, object], int, int]] = [  # (words, pair fields, others pending, running)
        ("a quiet cluster, no service yet", {}, 0, 0),
        ("both ran before and were preempted once", {"attained_service": 600.0, "preemptions": 1}, 0, 0),
        ("both with a user estimate of an hour", {"estimated_seconds": 3600.0}, 0, 0),
        ("both latency-sensitive (LS)", {"qos": "LS"}, 0, 0),
        ("both latency-sensitive, with service from an earlier run",
         {"qos": "LS", "attained_service": 1800.0, "preemptions": 2}, 0, 0),
        ("both asking for two GPUs", {"request": Resources(gpus=2)}, 0, 0),
        ("both asking for half a GPU", {"request": Resources(gpus=1, gpu_milli=MILLI // 2)}, 0, 0),
        ("others pending and running", {}, 3, 4),
        ("others pending and running, both with service and an estimate",
         {"attained_service": 120.0, "estimated_seconds": 900.0}, 4, 6),
    ]
    probes = []
    for words, fields, pending, running in contexts:
        for high, low in PRIORITY_PAIRS:
            now = round(rng.uniform(3600, 7200), 3)
            submitted = round(now - rng.uniform(30, 600), 3)
            queued, live = _others(rng, now, pending, running)
            base = JobView(PAIR[0], Resources(gpus=1), tenant="t0", submitted_at=submitted)
            base = replace(base, **fields)  # type: ignore[arg-type]
            pair = [replace(base, priority=int(high)), replace(base, id=PAIR[1], priority=int(low))]
            nodes = (_node("node-0", [j.id for j in live]), _node("node-1"))
            snap = Snapshot(now, nodes, tuple(pair + queued), tuple(live))
            probes.append(PriorityProbe(words, snap, int(high), int(low)))
    return tuple(probes)


def _variants(probe: PriorityProbe) -> list[tuple[str, Snapshot]]:
    """The probe with each id assignment (which of the pair holds the higher priority) and each
    input position of the pair: (id of the higher-priority job, snapshot)."""
    first, second, *rest = probe.snapshot.pending
    out = []
    for high_id in PAIR:
        a = replace(first, priority=probe.high if first.id == high_id else probe.low)
        b = replace(second, priority=probe.high if second.id == high_id else probe.low)
        for pending in ((a, b, *rest), (b, a, *rest)):
            out.append((high_id, replace(probe.snapshot, pending=pending)))
    return out


def priority_inversions(order: Order, probes: Sequence[PriorityProbe] | None = None) -> list[str]:
    """A readable problem for each probe in which ``order`` puts the higher-priority job behind
    the lower one in every id assignment and input position (so a tie broken by id or position
    alone is no inversion). A job left out of the answer counts as last."""
    problems = []
    for probe in probes if probes is not None else priority_probes():
        behind = True
        for high_id, snap in _variants(probe):
            ranked = list(order(snap.pending, snap))
            low_id = PAIR[1] if high_id == PAIR[0] else PAIR[0]
            position = {job_id: at for at, job_id in enumerate(ranked)}
            if position.get(high_id, len(ranked)) <= position.get(low_id, len(ranked)):
                behind = False
                break
        if behind:
            problems.append(
                f"priority inversion ({probe.context}): a {Priority(probe.high).name} job ranks behind an "
                f"otherwise equal {Priority(probe.low).name} one"
            )
    return problems


def policy_order(policy: Policy) -> Order:
    """``policy``'s queue order as ids (for a trusted policy in this process)."""
    return lambda pending, snap: [j.id for j in policy.order(pending, snap)]


def fairness_problem(run: TraceRun, baseline_runs: Mapping[str, TraceRun], bound: float = JAIN_BOUND,
                     trace: str = "") -> str | None:
    """A problem when ``run``'s Jain index over tenants is more than ``bound`` below that of the
    least fair of ``baseline_runs`` (the human policies on the same trace), else None."""
    if not baseline_runs:
        return None
    worst, policy = min((r.jain, p) for p, r in baseline_runs.items())
    if run.jain >= worst - bound:
        return None
    where = f" on {trace}" if trace else ""
    return (f"tenant unfairness{where}: Jain index {run.jain:.3f}, more than {bound:g} below the least fair "
            f"human policy's ({policy}, {worst:.3f})")


def starvation_bound(baseline_runs: Mapping[str, TraceRun], fifo: TraceRun) -> float:
    """The longest wait a GPU job may have: ``STARVATION_FACTOR`` x the longest wait any of
    ``baseline_runs`` caused, or ``STARVATION_MAKESPAN_SHARE`` of FIFO's makespan if larger."""
    longest = max((r.gpu_max_wait for r in baseline_runs.values()), default=0.0)
    return max(STARVATION_FACTOR * longest, STARVATION_MAKESPAN_SHARE * fifo.metrics["makespan"])


def starvation_problem(run: TraceRun, fifo: TraceRun, bound: float, trace: str = "") -> str | None:
    """A problem when ``run`` leaves more GPU jobs unstarted, or more jobs unfinished, than FIFO
    on the same trace, or a GPU job waited longer than ``bound``; else None."""
    where = f" on {trace}" if trace else ""
    found = []
    if run.gpu_never_started > fifo.gpu_never_started or run.finished < fifo.finished:
        found.append(
            f"starvation{where}: {run.gpu_never_started} GPU jobs never started and {run.jobs - run.finished} "
            f"never finished (FIFO: {fifo.gpu_never_started} and {fifo.jobs - fifo.finished})"
        )
    if run.gpu_max_wait > bound:
        found.append(f"starvation{where}: a GPU job waited {run.gpu_max_wait:.0f} s, bound {bound:.0f} s")
    return "; ".join(found) or None
