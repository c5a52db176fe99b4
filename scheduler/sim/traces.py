"""Workload traces: jobs with arrival times and (hidden from policies) true durations.

Names the simulator resolves (see :func:`load_trace`):

- ``alibaba-gpu-2023`` (``openb_pod_list_default.csv``), ``alibaba-gpu-2023:gpushare40``,
  ``alibaba-gpu-2023:multigpu20`` and the other pod lists of Alibaba's cluster-trace-gpu-v2023
  (Weng et al., USENIX ATC 2023), on the trace's own 1,213 GPU nodes;
- ``alibaba-genai-2026``: Stable-Diffusion requests of Alibaba's cluster-trace-v2026-GenAI as
  latency-class jobs (mapping in :func:`load_genai`);
- ``synthetic:<kind>?n=..&seed=..``: seeded generators, see :mod:`gpuos.scheduler.sim.synthetic`;
- a path to a pod-list or GenAI CSV, or to a gpuosd history (``gpuosctl trace export``; the
  format is :data:`HISTORY_FORMAT`, read by :func:`load_history`).

Trace files are read from ``$GPUOS_TRACES``, else ``<repo>/../shared/traces``; they are never
copied into the repository.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl

from gpuos.errors import InvalidArgument, NotFound
from gpuos.groups import GroupSpec
from gpuos.history import HISTORY_FORMAT, HISTORY_VERSION
from gpuos.jobs import LATENCY_CLASSES, Qos, Resources
from gpuos.scheduler.sim.cluster import GPU_TYPES, DaemonGpu, GpuType, NodeSpec, daemon_node, parse_gpus
from gpuos.units import MiB

REPO = Path(__file__).resolve().parents[2]
# A latency-class job meets its SLO when it completes within this many times its duration plus
# a grace period (the traces carry no SLO; see docs/scheduler.md).
SLO_FACTOR = 2.0
SLO_GRACE = 10.0
# How far a user's runtime estimate is off: log-normal with this sigma around the truth.
ESTIMATE_SIGMA = 0.5


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace. ``duration`` is the truth the simulator uses and policies never see."""

    id: str
    arrival: float
    duration: float
    request: Resources
    tenant: str = ""
    qos: str = "BE"
    priority: int = 1
    estimate: float = 0.0
    cpu_milli: int = 0
    host_memory: int = 0
    slo: float = 0.0
    # The job group it belongs to (one of its trace's ``groups`` for this tenant; "" for none).
    group: str = ""
    # Deduplication key ("" for none): a job whose (tenant, key) matches an earlier job that
    # is waiting, running or succeeded does not run and takes that job's outcome.
    dedupe_key: str = ""
    # Its outcome after ``duration`` (truth, like the duration): a job that fails runs all of
    # it, then fails. Only groups read it (a success may end its group).
    succeeds: bool = True


@dataclass(frozen=True)
class TraceGroup:
    """A job group of a trace: its owner and its spec (gpuos/groups.py)."""

    tenant: str
    spec: GroupSpec


@dataclass(frozen=True)
class Trace:
    name: str
    nodes: tuple[NodeSpec, ...]
    jobs: tuple[TraceJob, ...]
    source: str = ""
    groups: tuple[TraceGroup, ...] = ()


def trace_dir() -> Path:
    """Where the shared traces live: ``$GPUOS_TRACES`` or ``<repo>/../shared/traces``."""
    env = os.environ.get("GPUOS_TRACES")
    return Path(env) if env else (REPO.parent / "shared" / "traces")


def slo_for(qos: str, duration: float) -> float:
    return SLO_FACTOR * duration + SLO_GRACE if qos in LATENCY_CLASSES else 0.0


def noisy_estimate(rng: random.Random, duration: float) -> float:
    """A user's estimate of ``duration``: right on average in log space, often off by 1.6x."""
    return duration * math.exp(rng.gauss(0.0, ESTIMATE_SIGMA))


def estimate_rng(estimate_seed: int | None) -> random.Random | None:
    """The generator of a loader's estimate noise when ``estimate_seed`` is given, else None.

    Noise drawn from the loader's public seed can be replayed from a job's row number, which
    gives its true duration away; a secret seed makes the noise unguessable.
    """
    return None if estimate_seed is None else random.Random(estimate_seed)


def draw_estimate(rng: random.Random, secret: random.Random | None, duration: float) -> float:
    """The estimate of ``duration``. ``rng`` is always drawn from, so that a trace's job set,
    arrivals and durations stay the same whichever generator the estimate comes from."""
    public = noisy_estimate(rng, duration)
    return public if secret is None else noisy_estimate(secret, duration)


def load_trace(name: str | Path, seed: int = 0, estimate_seed: int | None = None) -> Trace:
    """The trace called ``name`` (a short name, ``synthetic:...``, or a CSV path).

    ``estimate_seed`` (None: the noise follows ``seed``) draws the users' estimates from a
    separate generator; the jobs, arrivals and durations are the same either way.
    """
    text = str(name)
    if text.startswith("synthetic:"):
        from gpuos.scheduler.sim.synthetic import generate

        kind, _, query = text[len("synthetic:") :].partition("?")
        params = dict(parse_qsl(query))
        return generate(kind, params, seed, estimate_seed=estimate_seed)
    base, _, variant = text.partition(":")
    if base == "alibaba-gpu-2023":
        folder = trace_dir() / "alibaba-gpu-2023"
        return load_alibaba_gpu(
            folder / f"openb_pod_list_{variant or 'default'}.csv", seed=seed, name=text, estimate_seed=estimate_seed
        )
    if base == "alibaba-genai-2026":
        return load_genai(trace_dir() / "alibaba-genai-2026" / "lora_request_trace.csv", seed=seed, name=text)
    path = Path(text)
    if not path.exists():
        raise NotFound(
            f"trace {text!r}: no such file, and not one of alibaba-gpu-2023[:variant], alibaba-genai-2026, "
            "synthetic:<kind>?n=..&seed=.."
        )
    with path.open() as f:
        header = f.readline()
    if header.lstrip().startswith("{"):
        return load_history(path, name=text)
    if "gmt_create" in header:
        return load_genai(path, seed=seed)
    if "num_gpu" in header:
        return load_alibaba_gpu(path, seed=seed, estimate_seed=estimate_seed)
    raise InvalidArgument("trace", f"{path}: neither an openb pod list nor a GenAI request trace")


def load_alibaba_nodes(path: Path) -> tuple[NodeSpec, ...]:
    """Nodes of ``openb_node_list_*.csv`` (CPU-only nodes keep no GPUs)."""
    nodes = []
    with path.open() as f:
        for row in csv.DictReader(f):
            count = int(row["gpu"] or 0)
            kind = GPU_TYPES.get(row["model"]) or GpuType(row["model"] or "none", 16 * 1024 * MiB)
            nodes.append(NodeSpec(row["sn"], (kind,) * count, int(row["cpu_milli"]), int(row["memory_mib"]) * MiB))
    return tuple(nodes)


def load_alibaba_gpu(
    path: Path, seed: int = 0, name: str = "", nodes_path: Path | None = None, estimate_seed: int | None = None
) -> Trace:
    """An openb pod list on the cluster of ``openb_node_list_gpu_node.csv`` beside it.

    arrival = creation_time; duration = deletion_time - scheduled_time, or deletion_time -
    creation_time for pods never scheduled. The multigpu lists carry only resource columns:
    their rows that share a name with the default list take its times, QoS and type
    constraint; the extra multi-GPU rows get an arrival drawn uniformly over the default
    list's span and the duration and QoS of a default pod with the same GPU count (seeded).
    The trace names no users, so each QoS class stands for a tenant.
    """
    if not path.exists():
        raise NotFound(f"trace file {path} not found; set GPUOS_TRACES or pass a path")
    rng = random.Random(seed)
    secret = estimate_rng(estimate_seed)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    nodes_path = nodes_path or path.parent / "openb_node_list_gpu_node.csv"
    if not nodes_path.exists():
        nodes_path = trace_dir() / "alibaba-gpu-2023" / "openb_node_list_gpu_node.csv"
    nodes = load_alibaba_nodes(nodes_path)
    if rows and "creation_time" not in rows[0]:
        rows = _fill_times(rows, path.parent / "openb_pod_list_default.csv", rng)
    jobs = []
    for row in rows:
        created = float(row["creation_time"])
        start = float(row["scheduled_time"]) if row.get("scheduled_time") else created
        duration = max(0.0, float(row["deletion_time"]) - start)
        count = int(row["num_gpu"])
        milli = int(row["gpu_milli"] or 0)
        types = tuple(t for t in (row.get("gpu_spec") or "").split("|") if t)
        if count == 1 and 0 < milli < 1000:
            request = Resources(gpus=1, gpu_milli=milli, gpu_types=types)
        else:
            request = Resources(gpus=count, gpu_types=types)
        qos = row.get("qos") or "BE"
        jobs.append(
            TraceJob(
                id=row["name"],
                arrival=created,
                duration=duration,
                request=request,
                tenant=qos,
                qos=qos,
                priority=Qos.rank_of(qos),
                estimate=draw_estimate(rng, secret, duration),
                cpu_milli=int(row["cpu_milli"]),
                host_memory=int(row["memory_mib"]) * MiB,
                slo=slo_for(qos, duration),
            )
        )
    jobs.sort(key=lambda j: (j.arrival, j.id))
    return Trace(
        name or f"alibaba-gpu-2023:{path.stem}",
        nodes,
        tuple(jobs),
        "Alibaba cluster-trace-gpu-v2023 (Weng et al., USENIX ATC 2023)",
    )


def _fill_times(rows: list[dict[str, str]], default_path: Path, rng: random.Random) -> list[dict[str, str]]:
    with default_path.open() as f:
        known = {r["name"]: r for r in csv.DictReader(f)}
    span = max(float(r["creation_time"]) for r in known.values())
    donors: dict[str, list[dict[str, str]]] = {}
    for r in known.values():
        donors.setdefault(r["num_gpu"], []).append(r)
    filled = []
    for row in rows:
        source = known.get(row["name"])
        if source is not None:
            filled.append({**source, **row})
            continue
        donor = rng.choice(donors.get(row["num_gpu"]) or list(known.values()))
        created = rng.uniform(0.0, span)
        start = float(donor["scheduled_time"] or donor["creation_time"])
        length = float(donor["deletion_time"]) - start
        filled.append(
            {**row, "qos": donor["qos"], "gpu_spec": "", "creation_time": str(created),
             "scheduled_time": str(created), "deletion_time": str(created + length)}
        )
    return filled


def load_genai(path: Path, seed: int = 0, name: str = "", compress: float = 24.0,
               gpus: str = "4x4xA10") -> Trace:
    """GenAI diffusion requests as latency-class jobs.

    arrival = (gmt_create - first) / ``compress`` (23 days become about 23 hours by default, so a
    small cluster sees a realistic load); duration = exec_time_seconds (at least 1 s); a request
    for 4 or more images holds a whole GPU, a smaller one half a GPU (MPS); tenant = groupId;
    the user's estimate is steps x images x the trace's median seconds per step-image (what a
    client knows before it runs). Requests without an exec time are dropped.
    """
    if not path.exists():
        raise NotFound(f"trace file {path} not found; set GPUOS_TRACES or pass a path")
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["exec_time_seconds"]]
    del seed  # the mapping is deterministic

    def work(r: dict[str, str]) -> float:
        return float(r["num_inference_steps"] or 30) * float(r["num_images_per_prompt"] or 1)

    per_unit = sorted(float(r["exec_time_seconds"]) / work(r) for r in rows if work(r) > 0)
    unit = per_unit[len(per_unit) // 2] if per_unit else 1.0
    first = datetime.fromisoformat(rows[0]["gmt_create"]) if rows else datetime(2024, 1, 1)
    jobs = []
    for i, r in enumerate(rows):
        arrival = (datetime.fromisoformat(r["gmt_create"]) - first).total_seconds() / compress
        duration = max(1.0, float(r["exec_time_seconds"]))
        images = float(r["num_images_per_prompt"] or 1)
        request = Resources(gpus=1) if images >= 4 else Resources(gpus=1, gpu_milli=500)
        jobs.append(
            TraceJob(
                id=f"req-{i:05d}",
                arrival=arrival,
                duration=duration,
                request=request,
                tenant=r["groupId"],
                qos="LS",
                priority=2,
                estimate=work(r) * unit,
                cpu_milli=0,
                slo=slo_for("LS", duration),
            )
        )
    jobs.sort(key=lambda j: (j.arrival, j.id))
    return Trace(name or "alibaba-genai-2026", parse_gpus(gpus), tuple(jobs),
                 "Alibaba cluster-trace-v2026-GenAI (GenTD26)")


# gpuosd's own history, as ``gpuosctl trace export`` writes it: JSON lines, UTF-8.
#
# Line 1, the header: {"format": "gpuos-history", "version": 1, "source": "...", "exported_at": T,
#   "since": T|null, "until": T|null, "tenant": "", "anonymized": bool, "never_ran": N,
#   "gpus": [{"model": "H100-80GB", "memory_bytes": B}, ...]   (the machine's GPUs, in index order)
#   "groups": [{"tenant": "...", "name": "...", "mode": "all|first-success|best-of:K",
#               "budget": GPU-seconds}, ...]}
# Then one line per finished job that ran, in submission order: {"id", "arrival": Unix seconds
#   (its submit), "duration": seconds it held its GPUs (queueing and pauses excluded; see
#   gpuos/history.py for preempted and shared runs), "wait": seconds to its first start,
#   "gpus", "gpu_milli", "memory_bytes", "mig_profile", "gpu_types": [...], "sharing" (its
#   request as gpuos.jobs.Resources has it), "qos": "LS"|"BE", "priority": 0 low|1 normal|2 high,
#   "tenant", "group", "dedupe_key", "estimate": the user's estimate in seconds (0: none),
#   "outcome": "succeeded"|"failed"|"cancelled", "reason", "preemptions"}.
# Times T are Unix seconds. Jobs' commands, names, environments and paths are never in it.
_HISTORY_JOB_FIELDS = ("id", "arrival", "duration", "gpus", "gpu_milli", "memory_bytes", "mig_profile", "gpu_types",
                       "sharing", "qos", "priority", "tenant", "group", "dedupe_key", "estimate", "outcome")


def history_header(path: Path) -> dict[str, object] | None:
    """The header of the gpuosd history at ``path``, or None when the file is not one."""
    try:
        with path.open() as f:
            first = f.readline()
        header = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get("format") == HISTORY_FORMAT else None


def load_history(path: Path, name: str = "") -> Trace:
    """A gpuosd history (the format above) as a trace on the machine it came from.

    arrival = submit time, moved so the first job arrives at 0; duration = run time; estimate =
    the user's own (no noise is drawn: it is what users told gpuosd); each job succeeds unless its
    outcome says otherwise; the SLO of a latency-class job follows :func:`slo_for`, as for the
    other traces. The machine is :func:`~gpuos.scheduler.sim.cluster.daemon_node` of the header's
    GPUs, which get the MIG profiles gpuos's catalog gives their model (the header names only
    model and memory). A line that is not a job of this format raises InvalidArgument("trace")
    naming the line.
    """
    from gpuos.groups import make_spec

    path = Path(path)
    if not path.exists():
        raise NotFound(f"trace file {path} not found")
    with path.open() as f:
        lines = f.read().splitlines()
    header = history_header(path)
    if header is None:
        raise InvalidArgument("trace", f"{path}: line 1 is not a {HISTORY_FORMAT} header")
    if header.get("version") != HISTORY_VERSION:
        raise InvalidArgument("trace", f"{path}: {HISTORY_FORMAT} version {header.get('version')!r}; this gpuos "
                                       f"reads version {HISTORY_VERSION}")
    try:
        listed = header["gpus"]
        if not isinstance(listed, list):
            raise TypeError("gpus is not a list")
        gpus = [DaemonGpu(i, str(g["model"]), int(g["memory_bytes"])) for i, g in enumerate(listed)]
        groups = tuple(TraceGroup(str(g["tenant"]), make_spec(str(g["name"]), str(g["mode"]), float(g["budget"])))
                       for g in header.get("groups") or ())  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
        raise InvalidArgument("trace", f"{path}: line 1: a bad gpus or groups entry ({exc})") from None
    if not gpus:
        raise InvalidArgument("trace", f"{path}: line 1 names no GPUs")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            missing = [k for k in _HISTORY_JOB_FIELDS if k not in row]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            request = Resources(gpus=int(row["gpus"]), gpu_milli=int(row["gpu_milli"]),
                                memory_bytes=int(row["memory_bytes"]), mig_profile=str(row["mig_profile"]),
                                gpu_types=tuple(str(t) for t in row["gpu_types"]), sharing=str(row["sharing"]))
            arrival, duration = float(row["arrival"]), float(row["duration"])
            if not (math.isfinite(arrival) and math.isfinite(duration) and duration >= 0):
                raise ValueError("arrival and duration must be finite, duration not negative")
            qos = str(row["qos"])
            rows.append((arrival, str(row["id"]), duration, request, qos, int(row["priority"]), str(row["tenant"]),
                         str(row["group"]), str(row["dedupe_key"]), float(row["estimate"]),
                         row["outcome"] == "succeeded"))
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument("trace", f"{path}: line {number} is not a job of a {HISTORY_FORMAT} file "
                                           f"({exc})") from None
    origin = min((r[0] for r in rows), default=0.0)
    jobs = tuple(sorted(
        (TraceJob(id=job_id, arrival=arrival - origin, duration=duration, request=request, tenant=tenant, qos=qos,
                  priority=priority, estimate=estimate, slo=slo_for(qos, duration), group=group, dedupe_key=key,
                  succeeds=succeeds)
         for arrival, job_id, duration, request, qos, priority, tenant, group, key, estimate, succeeds in rows),
        key=lambda j: (j.arrival, j.id)))
    source = str(header.get("source") or "gpuosd history")
    return Trace(name or str(path), (daemon_node(gpus),), jobs, source, groups)


def with_cluster(trace: Trace, gpus: str | None) -> Trace:
    """``trace`` on the cluster of a ``--gpus`` spec instead of its own (None: unchanged)."""
    if not gpus:
        return trace
    return Trace(trace.name, parse_gpus(gpus), trace.jobs, trace.source, trace.groups)


def window(trace: Trace, start: float = 0.0, jobs: int | None = None) -> Trace:
    """A slice of ``trace`` in arrival order: skip the first ``start`` fraction of its jobs
    (0 <= start < 1), keep the next ``jobs`` (None: all the rest), and shift arrivals so the
    first kept job arrives at 0. ``gpuosctl sim`` and ``gpuosctl replay`` cut traces alike."""
    if not 0.0 <= start < 1.0:
        raise InvalidArgument("start", f"{start} is outside [0, 1); e.g. 0.5 skips the first half of the jobs")
    if jobs is not None and jobs < 1:
        raise InvalidArgument("jobs", f"{jobs} is below 1")
    if start == 0.0 and jobs is None:
        return trace
    ordered = sorted(trace.jobs, key=lambda j: (j.arrival, j.id))
    first = int(start * len(ordered))
    kept = ordered[first:] if jobs is None else ordered[first:first + jobs]
    origin = kept[0].arrival if kept else 0.0
    shifted = tuple(dataclasses.replace(j, arrival=j.arrival - origin) for j in kept)
    name = f"{trace.name} (jobs {first + 1}-{first + len(kept)} of {len(ordered)})"
    return Trace(name, trace.nodes, shifted, trace.source, trace.groups)


def scale(trace: Trace, time_scale: float) -> Trace:
    """``trace`` run ``time_scale`` times faster: arrivals, durations, estimates, SLOs and group
    budgets (GPU-seconds) divided by it (a replay into a real daemon cannot wait out a trace's hours)."""
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise InvalidArgument("time_scale", f"{time_scale} is not a positive number")
    s = time_scale
    jobs = tuple(
        dataclasses.replace(j, arrival=j.arrival / s, duration=j.duration / s, estimate=j.estimate / s, slo=j.slo / s)
        for j in trace.jobs
    )
    groups = tuple(dataclasses.replace(g, spec=dataclasses.replace(g.spec, budget=g.spec.budget / s))
                   for g in trace.groups)
    return Trace(trace.name, trace.nodes, jobs, trace.source, groups)


def needs_gpu(request: Resources) -> bool:
    """Whether ``request`` holds any GPU (the Alibaba trace also lists CPU-only pods)."""
    return bool(request.gpus or request.gpu_milli or request.mig_profile)


def placeable(trace: Trace) -> tuple[Trace, tuple[TraceJob, ...]]:
    """``trace`` without the jobs gpuosd could never run on its cluster, and those jobs.

    Left out: jobs that ask for no GPU (gpuosd schedules GPUs only), and jobs that no node of
    the cluster could take even empty (a GPU type it lacks, more GPUs than a node has, more
    memory than a GPU has, a MIG profile none offers). A replay into gpuosd submits only the
    kept jobs, so a simulator run it is compared with must use the same kept trace.
    """
    from gpuos.scheduler.framework import options
    from gpuos.scheduler.sim.cluster import node_view
    from gpuos.scheduler.snapshot import JobView

    empty = [node_view(n) for n in trace.nodes]

    def fits(job: TraceJob) -> bool:
        view = JobView(job.id, job.request, cpu_milli=job.cpu_milli, host_memory=job.host_memory)
        return any(next(options(view, node), None) is not None for node in empty)

    kept: list[TraceJob] = []
    left: list[TraceJob] = []
    for job in trace.jobs:
        (kept if needs_gpu(job.request) and fits(job) else left).append(job)
    return Trace(trace.name, trace.nodes, tuple(kept), trace.source, trace.groups), tuple(left)
