"""Small, seeded workloads for policy search: windows of real traces and synthetic seeds.

A full trace takes minutes to simulate; a search needs a candidate's whole evaluation in seconds.
A workload spec names a trace and how to cut it down:

    alibaba-gpu-2023:gpushare40|gpus=2x8xG2|start=0.3|jobs=300|load=1.2

``start`` (fraction of the trace's jobs, by arrival) and ``jobs`` pick a window of consecutive
arrivals, moved to start at 0; ``gpus`` replaces the cluster; ``load`` rescales arrival times so
that the offered GPU demand (sum of GPUs x duration over cluster GPUs x span) is that fraction of
the cluster. The cut is deterministic; ``seed`` goes to the trace loader (user estimates).

``TRAINING`` is what the search sees; ``HELD_OUT`` is never shown to it, and results count only
there. They share no job: each held-out kind (a pod list of the Alibaba GPU trace, the GenAI trace, a
synthetic generator) also appears in training, but through other windows or other seeds
(:func:`job_keys` names the jobs a spec takes; a test checks the two sets are disjoint).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpuos.errors import InvalidArgument
from gpuos.scheduler.sim import Trace, load_trace, parse_gpus

TRAINING: tuple[str, ...] = (
    "alibaba-gpu-2023:gpushare40|gpus=2x8xG2|start=0.2|jobs=300|load=1.2",
    "alibaba-gpu-2023:multigpu20|gpus=2x8xG2|start=0.5|jobs=300|load=1.2",
    "synthetic:bursty?n=300&seed=11|gpus=2x8xA100-80GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=11|gpus=1x8xH100-80GB|load=1.2",
    # One window of each held-out kind (other windows, other seeds), so that no held-out workload is
    # unlike everything the search saw (the first shipped policies lost 52% on GenAI without one).
    "alibaba-gpu-2023|gpus=2x8xG2|start=0.3|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare80|gpus=2x8xG2|start=0.8|jobs=300|load=1.2",
    "alibaba-gpu-2023:multigpu50|gpus=2x8xG2|start=0.15|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=2x4xA10|start=0.2|jobs=400|load=1.2",
    "alibaba-genai-2026|gpus=2x4xA10|start=0.8|jobs=400|load=1.2",
    "synthetic:bursty?n=300&seed=12|gpus=2x8xA100-80GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=12|gpus=1x8xH100-80GB|load=1.2",
)
HELD_OUT: tuple[str, ...] = (
    "alibaba-gpu-2023|gpus=2x8xG2|start=0.6|jobs=300|load=1.2",
    "alibaba-gpu-2023:gpushare80|gpus=2x8xG2|start=0.4|jobs=300|load=1.2",
    "alibaba-gpu-2023:multigpu50|gpus=2x8xG2|start=0.7|jobs=300|load=1.2",
    "alibaba-genai-2026|gpus=2x4xA10|start=0.5|jobs=400|load=1.2",
    "synthetic:bursty?n=300&seed=23|gpus=2x8xA100-80GB|load=1.2",
    "synthetic:llm-decode?n=300&seed=23|gpus=1x8xH100-80GB|load=1.2",
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


def job_keys(text: str) -> set[tuple[str, str]]:
    """The jobs a spec takes, keyed by source and job id; pod lists of one trace (``name:variant``)
    share job ids, so they count as one source, while a synthetic generator's seed is its own."""
    trace = WorkloadSpec.parse(text).trace
    source = trace if trace.startswith("synthetic:") else trace.split(":")[0]
    return {(source, j.id) for j in load_workload(text).jobs}


def load_workload(text: str) -> Trace:
    """The trace a workload spec describes, named by the spec itself."""
    spec = WorkloadSpec.parse(text)
    trace = load_trace(spec.trace, seed=spec.seed)
    nodes = parse_gpus(spec.gpus) if spec.gpus else trace.nodes
    jobs = sorted(trace.jobs, key=lambda j: (j.arrival, j.id))
    first = int(spec.start * len(jobs))
    jobs = jobs[first : first + spec.jobs] if spec.jobs else jobs[first:]
    if not jobs:
        raise InvalidArgument("trace", f"{text}: the window holds no jobs")
    origin = jobs[0].arrival
    scale = 1.0
    if spec.load > 0:
        capacity = sum(len(n.gpus) for n in nodes) or 1
        span = max(jobs[-1].arrival - origin, 1.0)
        demand = sum(j.duration * j.request.compute_milli / 1000 for j in jobs)
        scale = demand / (capacity * span) / spec.load
    moved = tuple(replace(j, arrival=(j.arrival - origin) * scale) for j in jobs)
    return Trace(text, nodes, moved, trace.source)
