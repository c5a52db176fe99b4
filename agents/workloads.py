"""Small, seeded workloads for policy search: windows of real traces and synthetic seeds.

A full trace takes minutes to simulate; a search needs a candidate's whole evaluation in seconds.
A workload spec names a trace and how to cut it down:

    alibaba-gpu-2023:gpushare40|gpus=2x8xG2|start=0.3|jobs=300|load=1.2

``start`` (fraction of the trace's jobs, by arrival) and ``jobs`` pick a window of consecutive
arrivals, moved to start at 0; ``gpus`` replaces the cluster; ``load`` rescales arrival times so
that the offered GPU demand (sum of GPUs x duration over cluster GPUs x span) is that fraction of
the cluster. The cut is deterministic; ``seed`` goes to the trace loader (user estimates).

``TRAINING`` is what the search sees; ``HELD_OUT`` is never shown to it, and results count only
there. The two share no job *by content* (:func:`content_key`: the resource and time fields of a
job as the original trace has them, not its id), across all pod lists of the Alibaba trace: the
lists resample one pool of pods, so windows of two lists can hold the same pods under other ids.

How the windows were chosen (:func:`plan` is this rule as code; a test checks that ``TRAINING``
and ``HELD_OUT`` are its output). No result of any policy went into it.

- Four families: the Alibaba GPU pod lists (all of :data:`ALIBABA_LISTS`), the GenAI trace, and
  the synthetic ``bursty`` and ``llm-decode`` generators. Every window holds 300 jobs, runs at
  offered load 1.2, and each family alternates between a homogeneous and a heterogeneous
  cluster (:data:`CLUSTERS`; window i of a family takes cluster i mod 2 in training, i+1 mod 2
  held out).
- Trace windows start at one of ten evenly spaced slots, ``start = (k + 0.5) / 10``. Even slots
  are for training, odd slots for held-out windows, so that training and held-out windows of
  lists that share pods lie at different times of the original trace.
- Alibaba list i (in :data:`ALIBABA_LISTS` order) trains on slot ``2 * (i mod 5)`` and is held
  out on slot ``2 * ((i + 2) mod 5) + 1``; a held-out window that shares any content key with a
  training window moves to the next odd slot (cyclically) until it shares none, and is left
  out if no odd slot is clean. GenAI trains on slots 2 and 6 and is held out on slots 1, 3, 5,
  7 and 9, with the same check.
- Synthetic families train on seeds 11 and 12 and are held out on seeds 21 to 25.

One's own history (an export of ``gpuosctl trace export``) is split by another written rule, in
time: :func:`history_plan`, the comment above ``HISTORY_TRAINING_SHARE`` says how.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache

from gpuos.agents.masking import Secret, mask
from gpuos.errors import InvalidArgument
from gpuos.scheduler.sim import Trace, TraceJob, load_trace, parse_gpus

TRAINING: tuple[str, ...] = (
    "alibaba-gpu-2023|gpus=2x8xG2|start=0.05|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare20|gpus=1x8xG2,1x4xT4,1x4xV100M32|start=0.25|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare40|gpus=2x8xG2|start=0.45|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare60|gpus=1x8xG2,1x4xT4,1x4xV100M32|start=0.65|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare80|gpus=2x8xG2|start=0.85|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare100|gpus=1x8xG2,1x4xT4,1x4xV100M32|start=0.05|jobs=300|load=1.2",
    "alibaba-gpu-2023:multigpu20|gpus=2x8xG2|start=0.25|jobs=300|load=1.2",
    "alibaba-gpu-2023:multigpu50|gpus=1x8xG2,1x4xT4,1x4xV100M32|start=0.45|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=2x4xA10|start=0.25|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=1x4xA10,1x4xT4|start=0.65|jobs=300|load=1.2",
    "synthetic:bursty?n=300&seed=11|gpus=2x8xA100-80GB|load=1.2",
    "synthetic:bursty?n=300&seed=12|gpus=1x8xA100-80GB,1x8xA100-40GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=11|gpus=2x8xH100-80GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=12|gpus=1x8xH100-80GB,1x8xA100-80GB|load=1.2",
)
HELD_OUT: tuple[str, ...] = (
    "alibaba-gpu-2023|gpus=1x8xG2,1x4xT4,1x4xV100M32|start=0.55|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare20|gpus=2x8xG2|start=0.75|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare40|gpus=1x8xG2,1x4xT4,1x4xV100M32|start=0.95|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare60|gpus=2x8xG2|start=0.15|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare80|gpus=1x8xG2,1x4xT4,1x4xV100M32|start=0.35|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare100|gpus=2x8xG2|start=0.55|jobs=300|load=1.2",
    "alibaba-gpu-2023:multigpu20|gpus=1x8xG2,1x4xT4,1x4xV100M32|start=0.75|jobs=300|load=1.2",
    "alibaba-gpu-2023:multigpu50|gpus=2x8xG2|start=0.95|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=1x4xA10,1x4xT4|start=0.15|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=2x4xA10|start=0.35|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=1x4xA10,1x4xT4|start=0.55|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=2x4xA10|start=0.75|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=1x4xA10,1x4xT4|start=0.95|jobs=300|load=1.2",
    "synthetic:bursty?n=300&seed=21|gpus=1x8xA100-80GB,1x8xA100-40GB|load=1.2",
    "synthetic:bursty?n=300&seed=22|gpus=2x8xA100-80GB|load=1.2",
    "synthetic:bursty?n=300&seed=23|gpus=1x8xA100-80GB,1x8xA100-40GB|load=1.2",
    "synthetic:bursty?n=300&seed=24|gpus=2x8xA100-80GB|load=1.2",
    "synthetic:bursty?n=300&seed=25|gpus=1x8xA100-80GB,1x8xA100-40GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=21|gpus=1x8xH100-80GB,1x8xA100-80GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=22|gpus=2x8xH100-80GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=23|gpus=1x8xH100-80GB,1x8xA100-80GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=24|gpus=2x8xH100-80GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=25|gpus=1x8xH100-80GB,1x8xA100-80GB|load=1.2",
)
# Stage 1: one tiny synthetic scenario (no trace files), so a broken candidate fails in well under a second.
STAGE1: tuple[str, ...] = ("synthetic:bursty?n=60&seed=5|gpus=1x8xA100-80GB|load=1.5",)


@dataclass(frozen=True)
class WorkloadSpec:
    trace: str
    gpus: str = ""
    start: float = 0.0
    jobs: int = 0
    load: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> WorkloadSpec:
        trace, *options = text.split("|")
        fields: dict[str, object] = {}
        for option in options:
            key, sep, value = option.partition("=")
            try:
                if key == "gpus":
                    fields[key] = value
                elif key in ("start", "load"):
                    fields[key] = float(value)
                elif key in ("jobs", "seed"):
                    fields[key] = int(value)
                else:
                    raise ValueError(f"unknown option {key!r} (known: gpus, start, jobs, load, seed)")
                if not sep:
                    raise ValueError(f"option {key!r} needs a value")
            except ValueError as exc:
                raise InvalidArgument("trace", f"{text}: {exc}") from None
        return cls(trace, **fields)  # type: ignore[arg-type]


def content_key(job: TraceJob) -> str:
    """A hash of what ``job`` is, not what it is called: its request, CPU, host memory,
    duration and arrival. Pass the job as the trace has it, before a window moves or rescales
    its arrival; the same pod in two pod lists has the same key."""
    r = job.request
    fields = (
        r.gpus,
        r.gpu_milli,
        r.memory_bytes,
        r.mig_profile,
        r.gpu_types,
        r.sharing,
        job.cpu_milli,
        job.host_memory,
        job.duration,
        job.arrival,
    )
    return hashlib.sha256(repr(fields).encode()).hexdigest()[:16]


def content_keys(text: str) -> frozenset[str]:
    """The :func:`content_key` of every job a workload spec takes (independent of any secret)."""
    spec = WorkloadSpec.parse(text)
    return frozenset(content_key(j) for j in _cut(text, spec, _full_trace(spec.trace, spec.seed, None)))


@lru_cache(maxsize=16)
def _full_trace(name: str, seed: int, estimate_seed: int | None) -> Trace:
    return load_trace(name, seed=seed, estimate_seed=estimate_seed)


def _cut(text: str, spec: WorkloadSpec, trace: Trace) -> list[TraceJob]:
    """The jobs of ``trace`` in the spec's window, as the trace has them."""
    jobs = sorted(trace.jobs, key=lambda j: (j.arrival, j.id))
    first = int(spec.start * len(jobs))
    jobs = jobs[first : first + spec.jobs] if spec.jobs else jobs[first:]
    if not jobs:
        raise InvalidArgument("trace", f"{text}: the window holds no jobs")
    return jobs


def load_workload(text: str, secret: Secret | None = None) -> Trace:
    """The trace a workload spec describes, named by the spec itself.

    With a ``secret``, the users' estimates are drawn from a seed derived from it and the spec,
    and job ids are masked (:func:`gpuos.agents.masking.mask`): the jobs, arrivals and
    durations are those of the plain load, so baselines judged on it score as on the plain one.
    """
    spec = WorkloadSpec.parse(text)
    estimate_seed = None if secret is None else secret.seed(f"estimates\0{text}")
    trace = _full_trace(spec.trace, spec.seed, estimate_seed)
    nodes = parse_gpus(spec.gpus) if spec.gpus else trace.nodes
    jobs = _cut(text, spec, trace)
    origin = jobs[0].arrival
    scale = 1.0
    if spec.load > 0:
        capacity = sum(len(n.gpus) for n in nodes) or 1
        span = max(jobs[-1].arrival - origin, 1.0)
        demand = sum(j.duration * j.request.compute_milli / 1000 for j in jobs)
        scale = demand / (capacity * span) / spec.load
    moved = tuple(replace(j, arrival=(j.arrival - origin) * scale) for j in jobs)
    loaded = Trace(text, nodes, moved, trace.source)
    return loaded if secret is None else mask(loaded, secret)


# The pod lists of the Alibaba GPU trace in the shared trace folder (its gpuspec and cpu lists are
# not published there).
ALIBABA_LISTS: tuple[str, ...] = (
    "alibaba-gpu-2023",
    "alibaba-gpu-2023:gpushare20",
    "alibaba-gpu-2023:gpushare40",
    "alibaba-gpu-2023:gpushare60",
    "alibaba-gpu-2023:gpushare80",
    "alibaba-gpu-2023:gpushare100",
    "alibaba-gpu-2023:multigpu20",
    "alibaba-gpu-2023:multigpu50",
)
# (homogeneous, heterogeneous) cluster of each family, 16 GPUs but GenAI's 8. The heterogeneous
# ones mix models the family's jobs all fit on (llm-decode's 1g.10gb MIG slices need 80 GB parts).
CLUSTERS: dict[str, tuple[str, str]] = {
    "alibaba-gpu-2023": ("2x8xG2", "1x8xG2,1x4xT4,1x4xV100M32"),
    "alibaba-genai-2026": ("2x4xA10", "1x4xA10,1x4xT4"),
    "synthetic:bursty": ("2x8xA100-80GB", "1x8xA100-80GB,1x8xA100-40GB"),
    "synthetic:llm-decode": ("2x8xH100-80GB", "1x8xH100-80GB,1x8xA100-80GB"),
}
WINDOW_JOBS = 300
WINDOW_LOAD = 1.2
SLOTS = 10
TRAINING_SEEDS = (11, 12)
HELD_OUT_SEEDS = (21, 22, 23, 24, 25)
GENAI_TRAINING_SLOTS = (2, 6)


def family(text: str) -> str:
    """The trace family of a workload spec: a key of :data:`CLUSTERS`."""
    trace = WorkloadSpec.parse(text).trace
    return trace.split("?")[0] if trace.startswith("synthetic:") else trace.split(":")[0]


def plan() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training, held-out) windows by the rule in the module docstring. Needs the full traces."""

    def window(trace: str, slot: int, cluster: str) -> str:
        return (
            f"{trace}|gpus={cluster}|start={(slot + 0.5) / SLOTS:g}|jobs={WINDOW_JOBS}|load={WINDOW_LOAD:g}"
        )

    def synthetic(kind: str, seeds: Iterable[int], shift: int) -> list[str]:
        clusters = CLUSTERS[f"synthetic:{kind}"]
        return [
            f"synthetic:{kind}?n={WINDOW_JOBS}&seed={s}|gpus={clusters[(i + shift) % 2]}|load={WINDOW_LOAD:g}"
            for i, s in enumerate(seeds)
        ]

    alibaba, genai = CLUSTERS["alibaba-gpu-2023"], CLUSTERS["alibaba-genai-2026"]
    training = [window(t, 2 * (i % 5), alibaba[i % 2]) for i, t in enumerate(ALIBABA_LISTS)]
    training += [window("alibaba-genai-2026", k, genai[i % 2]) for i, k in enumerate(GENAI_TRAINING_SLOTS)]
    training += synthetic("bursty", TRAINING_SEEDS, 0) + synthetic("llm-decode", TRAINING_SEEDS, 0)
    seen = frozenset().union(*(content_keys(t) for t in training))
    odd = list(range(1, SLOTS, 2))

    def clean(trace: str, first: int, cluster: str) -> str | None:
        for step in range(len(odd)):
            spec = window(trace, odd[(first + step) % len(odd)], cluster)
            if not content_keys(spec) & seen:
                return spec
        return None

    held = [clean(t, (i + 2) % 5, alibaba[(i + 1) % 2]) for i, t in enumerate(ALIBABA_LISTS)]
    held += [clean("alibaba-genai-2026", i, genai[(i + 1) % 2]) for i in range(len(odd))]
    held_out = [h for h in held if h is not None]
    held_out += synthetic("bursty", HELD_OUT_SEEDS, 1) + synthetic("llm-decode", HELD_OUT_SEEDS, 1)
    return tuple(training), tuple(held_out)


USER_WINDOWS = 5


def windows_of(text: str) -> list[str]:
    """The workload specs ``--trace TEXT`` stands for: ``training`` / ``held-out`` (the built-in
    sets), a spec with options (``trace|...``) or a ``synthetic:`` generator as it is, and any
    other trace (a short name or a CSV path of one's own) cut by the rule the built-in windows
    follow: ``USER_WINDOWS`` windows of up to ``WINDOW_JOBS`` consecutive arrivals at evenly
    spaced starts, on the trace's own cluster, at offered load ``WINDOW_LOAD``."""
    if text in ("training", "held-out"):
        return list(TRAINING if text == "training" else HELD_OUT)
    if "|" in text or text.startswith("synthetic:"):
        WorkloadSpec.parse(text)
        return [text]
    jobs = len(load_trace(text).jobs)
    size = max(1, min(WINDOW_JOBS, jobs // USER_WINDOWS))
    return [f"{text}|start={(k + 0.5) / USER_WINDOWS - size / jobs / 2:.4f}|jobs={size}|load={WINDOW_LOAD:g}"
            for k in range(USER_WINDOWS)]


# The time-ordered split of one's own history (``gpuosctl evolve --trace EXPORT``, an export of
# ``gpuosctl trace export``). The public traces' rule spreads windows over slots and families;
# a cluster's own history has one family and a direction in time, and a policy fitted to it is
# used on what comes next, so it is judged on what came after everything it was fitted on:
#
# - the jobs in arrival order (ties by id, as every window cuts them); the oldest
#   ``HISTORY_TRAINING_SHARE`` of them (rounded down, then moved later past any job arriving at
#   the same instant as the last one) are the training part, the rest the held-out part;
# - ``HISTORY_HELD_OUT_WINDOWS`` held-out windows of ``size`` consecutive jobs, size = the
#   held-out part's jobs // that count, at most ``WINDOW_JOBS``, at least
#   ``HISTORY_MIN_WINDOW_JOBS`` (fewer jobs: too little history, refused); the first starts at the
#   split, the last ends at the newest job, the others evenly between, none overlapping;
# - up to ``HISTORY_TRAINING_WINDOWS`` training windows of the same size, spread the same way
#   over the training part, the last ending at the split: no window straddles it, every training
#   window's jobs arrive before every held-out window's;
# - arrival times as recorded (no ``load`` rescaling: the point is the cluster's own load) on
#   the cluster the history came from.
HISTORY_TRAINING_SHARE = 0.6
HISTORY_HELD_OUT_WINDOWS = 5
HISTORY_TRAINING_WINDOWS = 5
HISTORY_MIN_WINDOW_JOBS = 20


@dataclass(frozen=True)
class HistoryPlan:
    """The training and held-out windows of one history (the rule above)."""

    path: str
    jobs: int
    # Index (arrival order) of the first held-out job.
    split: int
    window_jobs: int
    training: tuple[str, ...]
    held_out: tuple[str, ...]


def history_min_jobs() -> int:
    """The fewest jobs a history needs for the rule above."""
    held = HISTORY_HELD_OUT_WINDOWS * HISTORY_MIN_WINDOW_JOBS
    n = held
    while n - int(n * HISTORY_TRAINING_SHARE) < held or int(n * HISTORY_TRAINING_SHARE) < HISTORY_MIN_WINDOW_JOBS:
        n += 1
    return n


def _spread(first: int, last: int, size: int, count: int) -> list[int]:
    """Starts of ``count`` windows of ``size`` jobs in [first, last), first at ``first``, the last
    ending at ``last``, evenly between (non-overlapping when count x size fits)."""
    if count == 1:
        return [last - size]
    room = last - first - size
    return [first + round(i * room / (count - 1)) for i in range(count)]


def history_plan(path: str) -> HistoryPlan:
    """The time-ordered windows of the history at ``path`` (the rule above); InvalidArgument
    ("trace") naming the numbers when it holds too few jobs."""
    trace = load_trace(path)
    jobs = sorted(trace.jobs, key=lambda j: (j.arrival, j.id))
    n = len(jobs)
    split = int(n * HISTORY_TRAINING_SHARE)
    while 0 < split < n and jobs[split].arrival == jobs[split - 1].arrival:
        split += 1
    size = min(WINDOW_JOBS, (n - split) // HISTORY_HELD_OUT_WINDOWS)
    if size < HISTORY_MIN_WINDOW_JOBS or split < size:
        raise InvalidArgument(
            "trace", f"{path} holds {n} finished jobs, {n - split} after the split; the time-ordered split needs "
                     f"at least {history_min_jobs()} jobs, {HISTORY_HELD_OUT_WINDOWS * HISTORY_MIN_WINDOW_JOBS} after it "
                     f"(the newest {1 - HISTORY_TRAINING_SHARE:.0%} cut into {HISTORY_HELD_OUT_WINDOWS} held-out "
                     f"windows of at least {HISTORY_MIN_WINDOW_JOBS} jobs, and a training part before them)")
    count = min(HISTORY_TRAINING_WINDOWS, split // size)

    def spec(start: int) -> str:
        # (k + 0.5) / n: the window cut (int(start x n)) lands on job k whatever the rounding.
        return f"{path}|start={(start + 0.5) / n:.12g}|jobs={size}"

    training = tuple(spec(k) for k in _spread(0, split, size, count))
    held_out = tuple(spec(k) for k in _spread(split, n, size, HISTORY_HELD_OUT_WINDOWS))
    return HistoryPlan(path, n, split, size, training, held_out)
