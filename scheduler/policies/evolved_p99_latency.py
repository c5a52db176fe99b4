"""Evolved policy evolved-p99-latency: optimises p99_latency (p99 JCT of the latency class (s)).

Found by gpuos.agents (gp engine), run gp-p99-latency-s1: 16 generations x 24, seed 1; engine-made, seeded with hand-made rules (FIFO, SJF, SRTF, LAS,
best-fit) as starting points.
Command: gpuosctl evolve --objective p99_latency --engine gp --iterations 16 --population 24 --seed 1 --jobs 2 --run-dir /work/runs/gp-p99-latency-s1
Training traces (the only ones the search saw):
  alibaba-gpu-2023:gpushare40|gpus=2x8xG2|start=0.2|jobs=300|load=1.2
  alibaba-gpu-2023:multigpu20|gpus=2x8xG2|start=0.5|jobs=300|load=1.2
  synthetic:bursty?n=300&seed=11|gpus=2x8xA100-80GB|load=1.2
  synthetic:llm-decode?n=300&seed=11|gpus=1x8xH100-80GB|load=1.2
Training score (geomean best-human/evolved): 0.806
Held-out traces, never seen in the search: evolved vs the best human policy on each
(p99_latency, lower is better; gain = best/evolved - 1):
  alibaba-gpu-2023|gpus=2x8xG2|start=0.6|jobs=300|load=1.2: 6.096e+04 vs srtf 6.096e+04 (FIFO 9.955e+04, random-fit 9.955e+04), gain +0.0%
  alibaba-gpu-2023:gpushare80|gpus=2x8xG2|start=0.4|jobs=300|load=1.2: 1.592e+04 vs drf 1.577e+04 (FIFO 1.578e+04, random-fit 1.59e+04), gain -1.0%
  alibaba-gpu-2023:multigpu50|gpus=2x8xG2|start=0.7|jobs=300|load=1.2: 9.279e+04 vs priority 9.279e+04 (FIFO 9.367e+04, random-fit 1.88e+05), gain +0.0%
  alibaba-genai-2026|gpus=2x4xA10|start=0.5|jobs=400|load=1.2: 875.3 vs spread 419.9 (FIFO 427.8, random-fit 421.4), gain -52.0%
  synthetic:bursty?n=300&seed=23|gpus=2x8xA100-80GB|load=1.2: 1.617e+04 vs priority 2.131e+04 (FIFO 3.95e+04, random-fit 4.024e+04), gain +31.8%
  synthetic:llm-decode?n=300&seed=23|gpus=1x8xH100-80GB|load=1.2: 1220 vs random-fit 1083 (FIFO 1220, random-fit 1083), gain -11.2%
Held-out geomean gain: -9.3%; other objectives vs that human policy (geomean ratio, >1 better): mean_jct 0.954, fragmentation 0.988, makespan 0.967
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpuos.scheduler import GpuView, JobView, NodeView, Policy, Snapshot, register
from gpuos.scheduler.preemption import victims_to_fit


def pdiv(a: float, b: float) -> float:
    """Protected division: a / b, or a when b is about 0."""
    return a / b if abs(b) > 1e-9 else a


def plog(a: float) -> float:
    return math.log1p(abs(a))


@register
class EvolvedP99Latency(Policy):
    name = "evolved-p99-latency"
    description = "evolved by gpuos.agents.gp; see the header"
    first_fit = False
    period = 60.0

    def rank(self, job: JobView, now: float) -> float:
        """Lower runs first."""
        size = job.request.compute_milli / 1000
        age = now - job.submitted_at
        priority = float(job.priority)
        preempted = float(job.preemptions)
        return pdiv(
            (plog(size) + (preempted - age)),
            ((pdiv(max(4.6, 9.52), (priority * age)) - preempted) + min(preempted, priority)),
        )

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (self.rank(j, snap.now), j.submitted_at, j.id))

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        node_gpus = float(len(node.gpus))
        return node_gpus

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        mine = self.rank(job, snap.now)
        return victims_to_fit(
            job,
            snap,
            eligible=lambda r: self.rank(r, snap.now) > mine + 1068.47,
            preference=lambda r: -self.rank(r, snap.now),
        )
