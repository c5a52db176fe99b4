"""Evolved policy evolved-mean-jct: optimises mean_jct (mean JCT over all jobs (s)).

Found by gpuos.agents (gp engine), run gp-mean-jct-s2: 20 generations x 32, seed 2; engine-made, seeded with hand-made rules (FIFO, SJF, SRTF, LAS,
best-fit) as starting points.
Command: gpuosctl evolve --objective mean_jct --engine gp --iterations 20 --population 32 --seed 2 --jobs 2 --run-dir /work/runs/gp-mean-jct-s2
Training traces (the only ones the search saw):
  alibaba-gpu-2023:gpushare40|gpus=2x8xG2|start=0.2|jobs=300|load=1.2
  alibaba-gpu-2023:multigpu20|gpus=2x8xG2|start=0.5|jobs=300|load=1.2
  synthetic:bursty?n=300&seed=11|gpus=2x8xA100-80GB|load=1.2
  synthetic:llm-decode?n=300&seed=11|gpus=1x8xH100-80GB|load=1.2
Training score (geomean best-human/evolved): 0.986
Held-out traces, never seen in the search: evolved vs the best human policy on each
(mean_jct, lower is better; gain = best/evolved - 1):
  alibaba-gpu-2023|gpus=2x8xG2|start=0.6|jobs=300|load=1.2: 1.41e+04 vs tiresias 1.41e+04 (FIFO 2.624e+04, random-fit 2.624e+04), gain -0.0%
  alibaba-gpu-2023:gpushare80|gpus=2x8xG2|start=0.4|jobs=300|load=1.2: 3698 vs srtf 3482 (FIFO 3667, random-fit 3646), gain -5.9%
  alibaba-gpu-2023:multigpu50|gpus=2x8xG2|start=0.7|jobs=300|load=1.2: 6344 vs srtf 6131 (FIFO 7617, random-fit 1.041e+04), gain -3.4%
  alibaba-genai-2026|gpus=2x4xA10|start=0.5|jobs=400|load=1.2: 143.9 vs drf 134.3 (FIFO 137.2, random-fit 135.7), gain -6.6%
  synthetic:bursty?n=300&seed=23|gpus=2x8xA100-80GB|load=1.2: 5179 vs srtf 3403 (FIFO 6165, random-fit 6224), gain -34.3%
  synthetic:llm-decode?n=300&seed=23|gpus=1x8xH100-80GB|load=1.2: 224.4 vs random-fit 222.2 (FIFO 226.6, random-fit 222.2), gain -1.0%
Held-out geomean gain: -9.4%; other objectives vs that human policy (geomean ratio, >1 better): p99_latency 0.820, fragmentation 0.992, makespan 0.993
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler import GpuView, JobView, NodeView, Policy, Snapshot, register
from gpuos.scheduler.preemption import victims_to_fit


@register
class EvolvedMeanJct(Policy):
    name = "evolved-mean-jct"
    description = "evolved by gpuos.agents.gp; see the header"
    first_fit = False
    period = 0.0

    def rank(self, job: JobView, now: float) -> float:
        """Lower runs first."""
        size = job.request.compute_milli / 1000
        service = job.attained(now)
        estimate = job.estimated_seconds
        remaining = max(0.0, estimate - service / max(size, 0.001))
        latency = 1.0 if job.qos in ("LS", "Guaranteed") else 0.0
        return min(max(size, estimate), (remaining * latency)) + (service * max(8.5, 7.2))

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (self.rank(j, snap.now), j.submitted_at, j.id))

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        size = job.request.compute_milli / 1000
        take = (job.request.gpu_milli or 1000) / 1000
        gpu_left = min((g.milli_free / 1000 - take for g in gpus), default=0.0)
        return -min(gpu_left, min(size, size))

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        mine = self.rank(job, snap.now)
        return victims_to_fit(
            job,
            snap,
            eligible=lambda r: self.rank(r, snap.now) > mine + 540.18,
            preference=lambda r: -self.rank(r, snap.now),
        )
