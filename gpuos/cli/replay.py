"""``gpuosctl replay``: a trace window replayed into a running gpuosd, measured as ``sim`` measures.

Each job of the window is submitted at its arrival time divided by ``--time-scale`` as a real
process (:mod:`gpuos.cli.replay_work`) that runs for its duration divided by the same scale and
checkpoints when preempted. When all have ended, their observed first start, end and
preemptions, multiplied back by the scale, go through the simulator's metrics
(:func:`gpuos.scheduler.sim.metrics.summarise`), so the table and JSON read like ``gpuosctl sim``'s
for the same window, on the same cluster, without the jobs that cluster could never run
(:func:`gpuos.scheduler.sim.traces.placeable`).

A trace with job groups or dedupe keys replays them too: each member is submitted with its
group's mode and budget (GPU-seconds, divided by the scale like every time) and its dedupe key,
and its process fails at the end of its work when the trace says the member fails. gpuosd
answers a dedupe hit with the original job (same id, ``duplicate``): the replay records the
submit as a duplicate of that job, which ends when it ends and with its outcome, having spent
nothing. A member submitted to a group that has ended is refused (FAILED_PRECONDITION): it is
recorded as stopped by its group, never having run, as the simulator records it. Jobs with
neither replay exactly as before.

:func:`replay` is the Python API (the differential test drives it); times in its
:class:`Replayed` are wall seconds since the replay began.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuos.cli import output
from gpuos.cli.args import fail, positive_float, seed
from gpuos.cli.sim import SIM_MODULES, add_window_arguments, result_dict
from gpuos.v1 import jobs_pb2

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gpuos.client import Client
    from gpuos.groups import Group, GroupSpec
    from gpuos.scheduler.sim.cluster import NodeSpec
    from gpuos.scheduler.sim.engine import Outcome, Timeline
    from gpuos.scheduler.sim.metrics import SimResult
    from gpuos.scheduler.sim.traces import Trace, TraceJob
    from gpuos.scheduler.snapshot import GroupKey, NodeView
    from gpuos.v1 import devices_pb2

# How often the replay looks for new events while it waits: the resolution of its measurements.
POLL_SECONDS = 0.02
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._@:+=-]")


def add_replay_parser(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="replay a trace into the running gpuosd and measure it as sim does",
        description="Submit the jobs of TRACE (the window --start/--jobs) to gpuosd at their arrival times "
                    "divided by --time-scale, as processes that run their durations divided by it; wait for "
                    "them; print the same table (or -o json) as `gpuosctl sim` does, in trace seconds. Runs on "
                    "gpuosd's GPUs; jobs they could never run are left out (and counted on stderr).",
    )
    p.add_argument("--trace", required=True, help="trace name or CSV path (as for sim)")
    p.add_argument("--gpus", default=None,
                   help="the cluster you expect, in sim's spec (e.g. 2xH100-80GB); must be gpuosd's GPUs")
    add_window_arguments(p)
    p.add_argument("--time-scale", type=positive_float, default=1.0, metavar="S",
                   help="run S times faster than the trace (arrivals, durations and estimates divided by S)")
    p.add_argument("--seed", type=seed, default=0, help="the trace's seed (estimates, filled-in rows)")


@dataclass(frozen=True)
class ReplayedJob:
    """What gpuosd did with one trace job. Times are wall seconds since the replay began."""

    job: TraceJob  # as in the trace, unscaled
    job_id: str
    submitted: float
    first_start: float | None
    # When it ended, whatever its end: see ``state``.
    finish: float | None
    state: str  # SUCCEEDED, FAILED or CANCELLED
    # Its first placement: GPU indices and partition ("exclusive", "mps", "timeslice",
    # "mig:<profile>"); () and "" if it never ran, or if it was requeued and placed again
    # before the replay could read where it first ran.
    devices: tuple[int, ...]
    partition: str
    preemptions: int
    # GPU-seconds of service it had (wall seconds; 0 for a duplicate or a refused member).
    attained: float = 0.0
    # Why its group stopped it (sibling-succeeded, group-budget, cancelled-by-user; "" if it
    # did not): a member refused because its group had ended has its group's reason.
    reason: str = ""
    # The trace job id of the job gpuosd returned for its dedupe key ("" if none): this submit
    # added no job; ``job_id``, ``state`` and ``finish`` are that job's.
    duplicate_of: str = ""


@dataclass(frozen=True)
class Replayed:
    trace: Trace  # the replayed jobs, unscaled
    time_scale: float
    policy: str
    jobs: tuple[ReplayedJob, ...]
    timeline: Timeline  # wall seconds since the replay began
    wall_seconds: float
    # The trace's groups as gpuosd recorded them when the replay ended (times in wall seconds
    # since it began, GPU-seconds in wall seconds); a group all of whose members were
    # duplicates was never made and is absent.
    groups: Mapping[GroupKey, Group] = dataclasses.field(default_factory=dict)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a replay; ``cancelled`` jobs it had submitted were cancelled."""

    def __init__(self, cancelled: int) -> None:
        super().__init__(cancelled)
        self.cancelled = cancelled


@dataclass
class _Seen:
    """One submitted job as the replay has seen it so far."""

    job: TraceJob
    job_id: str
    submitted: float
    state: int = 0
    starts: int = 0
    first_start: float | None = None
    finish: float | None = None
    requeues: int = 0
    placement: tuple[tuple[int, ...], str] | None = None
    looked: bool = False
    # Ended only once its terminal event is seen (``state`` then is that event's).
    ended: bool = False


@dataclass(frozen=True)
class _Copy:
    """A submit that gpuosd answered with an earlier job (its dedupe key), or refused because
    the job's group had ended (``job_id`` "")."""

    job: TraceJob
    job_id: str
    submitted: float


def daemon_cluster(devices: list[devices_pb2.Device]) -> NodeSpec:
    """gpuosd's GPUs, as its device listing reports them (MIG profiles included), as one simulated
    node (:func:`gpuos.scheduler.sim.cluster.daemon_node`)."""
    from gpuos.mig import profiles_reported
    from gpuos.scheduler.sim.cluster import DaemonGpu, daemon_node

    return daemon_node(DaemonGpu(d.index, d.model, d.memory_total, profiles_reported(d.mig_profiles))
                       for d in devices)


def spec_of(node: NodeSpec) -> str:
    """``node`` in the ``--gpus`` grammar, e.g. ``2xH100-80GB`` (groups in index order)."""
    groups: list[list[Any]] = []
    for gpu in node.gpus:
        if groups and groups[-1][1] == gpu.name:
            groups[-1][0] += 1
        else:
            groups.append([1, gpu.name])
    return ",".join(f"{n}x{name}" for n, name in groups)


def check_gpus(spec: str, node: NodeSpec) -> None:
    """Raise InvalidArgument("gpus") unless ``spec`` names the models and counts of ``node``."""
    from gpuos.errors import InvalidArgument
    from gpuos.scheduler.sim.cluster import gpu_type, parse_gpus

    def canonical(name: str) -> str:
        try:
            return gpu_type(name).name.upper()
        except InvalidArgument:
            return name.upper()

    nodes = parse_gpus(spec)
    have = spec_of(node)
    if len(nodes) != 1:
        raise InvalidArgument("gpus", f"{spec!r} is {len(nodes)} nodes; gpuosd is one machine with {have}")
    want = Counter(canonical(g.name) for g in nodes[0].gpus)
    if want != Counter(canonical(g.name) for g in node.gpus):
        raise InvalidArgument("gpus", f"{spec!r} is not gpuosd's GPUs, {have}; replay runs on the daemon's GPUs")


def submit_args(job: TraceJob) -> dict[str, Any]:
    """``Client.submit`` keywords for ``job`` (already scaled): its resources, priority, tenant,
    QoS in the API's two classes, estimate."""
    from gpuos.jobs import LATENCY_CLASSES, Priority

    r = job.request
    share: dict[str, Any] = {}
    if r.mig_profile:
        share["mig_profile"] = r.mig_profile
    elif r.gpu_milli:
        share["gpu_fraction"] = r.gpu_milli / 1000
    else:
        share["gpus"] = r.gpus
    name = _NAME_CHARS.sub("-", job.id)[:128]
    return {
        **share,
        "name": name if name[:1].isalnum() else f"j{name}"[:128],
        "memory": r.memory_bytes or None,
        "gpu_types": r.gpu_types,
        "sharing": r.sharing,
        "priority": Priority(min(max(job.priority, Priority.LOW), Priority.HIGH)).name.lower(),
        "tenant": job.tenant,
        "qos": "LS" if job.qos in LATENCY_CLASSES else "BE",
        "estimated_seconds": job.estimate,
    }


def group_args(job: TraceJob, specs: Mapping[GroupKey, GroupSpec]) -> dict[str, Any]:
    """``Client.submit`` keywords for ``job``'s group and dedupe key (``job`` and ``specs``
    already scaled). Every member names its group's mode and budget: whichever arrives first
    makes the group. A group the trace does not describe is made as ``all`` without a budget,
    the simulator's reading of it too (no rule ends it)."""
    args: dict[str, Any] = {"dedupe_key": job.dedupe_key} if job.dedupe_key else {}
    if job.group:
        args["group"] = job.group
        spec = specs.get((job.tenant, job.group))
        if spec is not None:
            args.update(group_mode=spec.mode_text, group_budget=spec.budget)
    return args


def worker_command(duration: float, checkpoint: Path, succeeds: bool = True) -> list[str]:
    from gpuos.cli.replay_work import FAIL

    return [sys.executable, "-m", "gpuos.cli.replay_work", repr(duration), str(checkpoint),
            *(() if succeeds else (FAIL,))]


def replay(client: Client, trace: Trace, time_scale: float = 1.0, poll: float = POLL_SECONDS) -> Replayed:
    """Submit every job of ``trace`` to gpuosd at its arrival / ``time_scale`` as a process that
    works for duration / ``time_scale``, and wait until all have ended.

    ``trace`` should already be :func:`~gpuos.scheduler.sim.traces.placeable` on gpuosd's
    cluster: a job gpuosd can never place keeps the replay waiting. On any exception (Ctrl-C
    raises :class:`Interrupted`) every job it submitted that had not ended is cancelled.
    """
    from gpuos.client import current_env
    from gpuos.scheduler.sim.traces import scale

    scaled = scale(trace, time_scale)
    specs = {(g.tenant, g.spec.name): g.spec for g in scaled.groups}
    order = sorted(range(len(scaled.jobs)), key=lambda i: (scaled.jobs[i].arrival, scaled.jobs[i].id))
    workdir = Path(tempfile.mkdtemp(prefix="gpuos-replay-"))
    env = current_env()
    seen: dict[str, _Seen] = {}
    copies: list[_Copy] = []
    timeline = _Sampler(trace)
    began = time.time()
    since = -1
    try:
        submitted = 0
        while True:
            now = time.time() - began
            while submitted < len(order) and scaled.jobs[order[submitted]].arrival <= now:
                i = order[submitted]
                job = scaled.jobs[i]
                command = worker_command(job.duration, workdir / f"{i:06d}.json", job.succeeds)
                submitted += 1
                if job.group or job.dedupe_key:
                    made, duplicate = _submit_member(client, command, env, str(workdir), job, specs)
                    if made is None or duplicate:
                        copies.append(_Copy(trace.jobs[i], made.id if made is not None else "", time.time() - began))
                        continue
                else:
                    made = client.submit(command, env=env, cwd=str(workdir), **submit_args(job))
                seen[made.id] = _Seen(trace.jobs[i], made.id, time.time() - began)
                if since < 0:
                    # Events are numbered across all jobs; ours begin with the first one's submission.
                    since = min(e.seq for e in client.events(job_id=made.id)) - 1
            if since >= 0:
                since, changed = _read_events(client, since, seen, began)
                _look_up_placements(client, seen)
                if changed is not None:
                    timeline.sample(changed, client.devices().devices, seen.values())
            if submitted == len(order) and all(s.ended for s in seen.values()):
                break
            due = scaled.jobs[order[submitted]].arrival - (time.time() - began) if submitted < len(order) else poll
            time.sleep(max(0.0, min(poll, due)))
    except BaseException as exc:
        cancelled = _cancel(client, seen.values())
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(cancelled) from None
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.time() - began
    policy = next((p.name for p in client.policies() if p.active), "?")
    ended = {s.job_id: client.get(s.job_id) for s in seen.values()}
    jobs = [
        ReplayedJob(
            job=s.job, job_id=s.job_id, submitted=s.submitted, first_start=s.first_start, finish=s.finish,
            state=jobs_pb2.JobState.Name(s.state), devices=s.placement[0] if s.placement else (),
            partition=s.placement[1] if s.placement else "", preemptions=s.requeues,
            attained=ended[s.job_id].attained_service, reason=_group_reason(ended[s.job_id].reason),
        )
        for s in seen.values()
    ]
    groups = _groups(client, trace, began)
    jobs += [_copied(client, c, seen, ended, groups, began) for c in copies]
    jobs.sort(key=lambda r: r.submitted)
    return Replayed(trace, time_scale, policy, tuple(jobs), timeline.timeline, wall, groups)


def _submit_member(client: Client, command: list[str], env: Mapping[str, str], cwd: str, job: TraceJob,
                   specs: Mapping[GroupKey, GroupSpec]) -> tuple[jobs_pb2.Job | None, bool]:
    """Submit a job with a group or dedupe key: (the job gpuosd returned, whether it is a
    duplicate's), or (None, False) if its group had ended and refused it."""
    import grpc

    from gpuos.client import ApiError

    try:
        reply = client.submit_reply(command, env=env, cwd=cwd, **submit_args(job), **group_args(job, specs))
    except ApiError as exc:
        if job.group and exc.code == grpc.StatusCode.FAILED_PRECONDITION:
            return None, False
        raise
    return reply.job, reply.duplicate


def _group_reason(reason: str) -> str:
    """``reason`` if a group gave it (a job's reason may also be exit-nonzero, preempted, ...)."""
    from gpuos.groups import GROUP_BUDGET, GROUP_CANCELLED, SIBLING_SUCCEEDED

    return reason if reason in (SIBLING_SUCCEEDED, GROUP_BUDGET, GROUP_CANCELLED) else ""


def _groups(client: Client, trace: Trace, began: float) -> dict[GroupKey, Group]:
    """The trace's groups as gpuosd has them now, in wall seconds since ``began``."""
    from gpuos.client import ApiError
    from gpuos.groups import Group, make_spec

    found: dict[GroupKey, Group] = {}
    for tenant, name in sorted({(j.tenant, j.group) for j in trace.jobs if j.group}):
        try:
            g = client.group(name, tenant=tenant)
        except ApiError:
            continue  # never made: every member it had was a duplicate
        found[(tenant, name)] = Group(
            tenant, make_spec(name, g.mode, g.budget_gpu_seconds), g.created_at.ToNanoseconds() / 1e9 - began,
            succeeded=g.succeeded, spent=g.spent_gpu_seconds, ended_reason=g.reason if g.state == "ended" else "",
            ended_at=g.ended_at.ToNanoseconds() / 1e9 - began if g.HasField("ended_at") else None,
        )
    return found


def _copied(client: Client, copy: _Copy, seen: Mapping[str, _Seen], ended: Mapping[str, jobs_pb2.Job],
            groups: Mapping[GroupKey, Group], began: float) -> ReplayedJob:
    """A duplicate, as the simulator records one: it ends when the job it got ends (at once if
    that had ended), with that job's state and group reason, having spent nothing; a refused
    member ends at its submit, stopped for its group's reason."""
    if not copy.job_id:
        group = groups.get((copy.job.tenant, copy.job.group))
        return ReplayedJob(copy.job, "", copy.submitted, None, copy.submitted, "CANCELLED", (), "", 0,
                           reason=group.ended_reason if group is not None else "")
    original = seen.get(copy.job_id)
    if original is not None:
        finish = None if original.finish is None else max(copy.submitted, original.finish)
        state, of = jobs_pb2.JobState.Name(original.state), original.job.id
        reason = _group_reason(ended[copy.job_id].reason)
    else:  # a job from before the replay: known only as it stands now
        job = client.get(copy.job_id)
        finish = (max(copy.submitted, job.finished_at.ToNanoseconds() / 1e9 - began)
                  if job.HasField("finished_at") else None)
        state, of, reason = jobs_pb2.JobState.Name(job.state), job.name or job.id, _group_reason(job.reason)
    return ReplayedJob(copy.job, copy.job_id, copy.submitted, None, finish, state, (), "", 0, reason=reason,
                       duplicate_of=of)


def _read_events(client: Client, since: int, seen: dict[str, _Seen], began: float) -> tuple[int, float | None]:
    """Fold the events after ``since`` into ``seen``; the last sequence number read, and the
    time of the latest event about one of our jobs (None if there was none)."""
    from gpuos.client import TERMINAL

    latest = None
    for event in client.events(since=since):
        since = event.seq
        s = seen.get(event.job_id)
        if s is None:
            continue
        at = event.time.ToNanoseconds() / 1e9 - began
        latest = at
        if event.state:
            s.state = event.state
        if event.kind == "started":
            s.starts += 1
            if s.first_start is None:
                s.first_start = at
        elif event.kind == "requeued":
            s.requeues += 1
        if event.state in TERMINAL:
            s.ended, s.finish = True, at
    return since, latest


def _look_up_placements(client: Client, seen: dict[str, _Seen]) -> None:
    """Read where each newly started job was placed. gpuosd keeps only a job's latest placement,
    so it counts as the first only if the job had started once, and not been requeued, by the
    time the events were read after it started; otherwise it stays unknown."""
    for s in seen.values():
        if s.starts and not s.looked:
            s.looked = True
            if s.starts == 1 and not s.requeues:
                job: jobs_pb2.Job = client.get(s.job_id)
                if job.HasField("placement") and job.placement.devices:
                    s.placement = (tuple(job.placement.devices), job.placement.partition)


def _cancel(client: Client, seen: Any) -> int:
    from gpuos.client import ApiError

    cancelled = 0
    for s in seen:
        if s.ended:
            continue
        try:
            client.cancel(s.job_id)
            cancelled += 1
        except ApiError:
            pass  # ended meanwhile, or the daemon is gone: nothing more to undo
    return cancelled


class _Sampler:
    """The cluster's allocation and fragmentation after each batch of events, measured as the
    simulator measures its own (share of healthy GPU capacity; FGD's fragmentation against the
    trace's request mix), from gpuosd's device list."""

    def __init__(self, trace: Trace) -> None:
        from gpuos.scheduler.fragmentation import Fragmentation, workload
        from gpuos.scheduler.sim.engine import Timeline

        self.timeline = Timeline()
        self.frag = Fragmentation(workload((j.request, j.cpu_milli) for j in trace.jobs))

    def sample(self, at: float, devices: Any, seen: Any) -> None:
        from gpuos.scheduler.snapshot import MILLI

        node = _node_of(devices)
        healthy = sum(g.healthy for g in node.gpus)
        allocated = sum(
            MILLI if g.jobs and g.sharing in ("", "timeslice", "executor") else (MILLI - g.milli_free if g.healthy else 0)
            for g in node.gpus
        )
        capacity = max(1, healthy) * MILLI
        running = sum(1 for s in seen if s.starts and not s.ended and s.state in _PLACED)
        queued = sum(1 for s in seen if not s.ended) - running
        t = self.timeline
        t.times.append(at)
        t.allocated.append(allocated / capacity)
        t.fragmented.append(self.frag.node(node) / capacity)
        t.queued.append(queued)
        t.running.append(running)


_PLACED = frozenset((jobs_pb2.RUNNING, jobs_pb2.PAUSED))


def _node_of(devices: Any) -> NodeView:
    """gpuosd's devices as the scheduler's view of one node, from their allocations."""
    from gpuos.jobs import Partition
    from gpuos.scheduler.snapshot import MILLI, GpuView, NodeView

    gpus = []
    for d in sorted(devices, key=lambda d: d.index):
        kinds = {Partition.parse(a.partition).kind.sharing for a in d.allocations if a.partition}
        used = sum(a.compute_milli for a in d.allocations)
        memory = sum(a.memory_limit for a in d.allocations)
        gpus.append(GpuView(
            d.index, d.model, d.memory_total, max(0, d.memory_total - memory), max(0, MILLI - used), d.healthy,
            d.uuid, jobs=tuple(a.job_id for a in d.allocations), sharing=next(iter(kinds), ""),
        ))
    return NodeView("gpuosd", tuple(gpus))


def outcome(replayed: Replayed) -> Outcome:
    """The replay as the simulator's Outcome, in trace seconds (wall seconds x the time scale).

    A job counts as finished only if it ended as the simulator would have ended it: it
    succeeded, it failed where its trace says it fails (or it is a duplicate of a job that
    failed), or its group stopped it. Records carry the GPU-seconds each had, its group reason
    and the job it duplicated, and the Outcome the groups, so :func:`~gpuos.scheduler.sim.metrics.agentic_stats`
    reads a replay as it reads a simulation. gpuosd reports neither its rounds nor GPU failures
    to a client, so both are 0.
    """
    from gpuos.scheduler.sim.engine import JobRecord, Outcome, Timeline

    s = replayed.time_scale

    def meant(r: ReplayedJob) -> bool:
        return r.state == "SUCCEEDED" or bool(r.reason) or (
            r.state == "FAILED" and (not r.job.succeeds or bool(r.duplicate_of)))

    records = [
        JobRecord(
            r.job, 0.0 if r.state == "SUCCEEDED" else r.job.duration,
            first_start=None if r.first_start is None else r.first_start * s,
            finish=r.finish * s if r.finish is not None and meant(r) else None,
            preemptions=r.preemptions, attained=r.attained * s, succeeded=r.state == "SUCCEEDED",
            reason=r.reason, duplicate_of=r.duplicate_of,
        )
        for r in replayed.jobs
    ]
    t = replayed.timeline
    timeline = Timeline([x * s for x in t.times], list(t.allocated), list(t.fragmented), list(t.queued),
                        list(t.running))
    groups = {
        key: dataclasses.replace(
            g, spec=dataclasses.replace(g.spec, budget=g.spec.budget * s), created_at=g.created_at * s,
            spent=g.spent * s, ended_at=None if g.ended_at is None else g.ended_at * s,
        )
        for key, g in replayed.groups.items()
    }
    return Outcome(records, timeline, 0, 0, sum(len(n.gpus) for n in replayed.trace.nodes), groups=groups)


def result(replayed: Replayed, seed: int = 0) -> SimResult:
    """The replay's figures, as ``gpuosctl sim`` reports a run."""
    from gpuos.scheduler.sim.cluster import describe
    from gpuos.scheduler.sim.metrics import summarise

    return summarise(outcome(replayed), replayed.trace.name, replayed.policy, describe(replayed.trace.nodes),
                     seed, replayed.wall_seconds)


def run_replay(args: argparse.Namespace, client: Client) -> int:
    from gpuos import extras
    from gpuos.errors import GpuosError, InvalidArgument

    try:
        extras.require("replay's metrics", "sim", SIM_MODULES)
    except extras.MissingExtra as exc:
        print(f"gpuosctl replay: {exc}", file=sys.stderr)
        return 1
    from gpuos.scheduler.sim.traces import Trace, load_trace, placeable, window

    node = daemon_cluster(list(client.devices().devices))
    if args.gpus:
        try:
            check_gpus(args.gpus, node)
        except InvalidArgument as exc:
            return fail(f"--gpus: {exc.problem}")
    try:
        loaded = window(load_trace(args.trace, seed=args.seed), args.start, args.jobs)
    except (GpuosError, ValueError, OSError) as exc:
        print(f"gpuosctl replay: {exc}", file=sys.stderr)
        return 1
    trace, left_out = placeable(Trace(loaded.name, (node,), loaded.jobs, loaded.source))
    if left_out:
        print(f"gpuosctl replay: left out {len(left_out)} of {len(loaded.jobs)} jobs that gpuosd's GPUs "
              f"({spec_of(node)}) could never run (no GPU asked, or more than they have)", file=sys.stderr)
    if not trace.jobs:
        print("gpuosctl replay: no job of the window can run here; nothing to replay", file=sys.stderr)
        return 1
    try:
        replayed = replay(client, trace, args.time_scale)
    except Interrupted as exc:
        print(f"gpuosctl replay: interrupted; cancelled the {exc.cancelled} jobs it had submitted "
              "that had not ended", file=sys.stderr)
        return 130
    summary = result(replayed, args.seed)
    if args.output == "json":
        print(output.dumps([result_dict(summary)]))
    else:
        print(summary.table())
    return 0
