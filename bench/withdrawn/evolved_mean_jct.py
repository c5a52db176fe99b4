"""Evolved policy evolved-mean-jct: optimises mean_jct (mean JCT over all jobs (s)).

Found by gpuos.agents (gp engine), run gp2-mean-jct-s1: 14 generations x 32, seed 1.
Engine-made, seeded with hand-made rules (FIFO, SJF, SRTF, LAS, smallest GPU-seconds, best-fit and spread
placement, latency class first); selected by training score only.
Command: gpuosctl evolve --objective mean_jct --engine gp --iterations 14 --population 32 --seed 1 --jobs 1 --run-dir runs/v2/gp2-mean-jct-s1
Training traces (the only ones the search saw):
  alibaba-gpu-2023:gpushare40|gpus=2x8xG2|start=0.2|jobs=300|load=1.2
  alibaba-gpu-2023:multigpu20|gpus=2x8xG2|start=0.5|jobs=300|load=1.2
  synthetic:bursty?n=300&seed=11|gpus=2x8xA100-80GB|load=1.2
  synthetic:llm-decode?n=300&seed=11|gpus=1x8xH100-80GB|load=1.2
  alibaba-gpu-2023|gpus=2x8xG2|start=0.3|jobs=300|load=1.2
  alibaba-gpu-2023:gpushare80|gpus=2x8xG2|start=0.8|jobs=300|load=1.2
  alibaba-gpu-2023:multigpu50|gpus=2x8xG2|start=0.15|jobs=300|load=1.2
  alibaba-genai-2026|gpus=2x4xA10|start=0.2|jobs=400|load=1.2
  alibaba-genai-2026|gpus=2x4xA10|start=0.8|jobs=400|load=1.2
  synthetic:bursty?n=300&seed=12|gpus=2x8xA100-80GB|load=1.2
  synthetic:llm-decode?n=300&seed=12|gpus=1x8xH100-80GB|load=1.2
Training score (geomean best-human/evolved): 0.959
Held-out traces, never seen in the search: evolved vs the best human policy on each
(mean_jct, lower is better; gain = best/evolved - 1):
  alibaba-gpu-2023|gpus=2x8xG2|start=0.6|jobs=300|load=1.2: 1.41e+04 vs tiresias 1.425e+04 (FIFO 2.624e+04, random-fit 2.624e+04), gain +1.0%
  alibaba-gpu-2023:gpushare80|gpus=2x8xG2|start=0.4|jobs=300|load=1.2: 3696 vs srtf 3482 (FIFO 3667, random-fit 3646), gain -5.8%
  alibaba-gpu-2023:multigpu50|gpus=2x8xG2|start=0.7|jobs=300|load=1.2: 6416 vs srtf 6131 (FIFO 7617, random-fit 1.041e+04), gain -4.4%
  alibaba-genai-2026|gpus=2x4xA10|start=0.5|jobs=400|load=1.2: 137.2 vs drf 134.3 (FIFO 137.2, random-fit 135.7), gain -2.1%
  synthetic:bursty?n=300&seed=23|gpus=2x8xA100-80GB|load=1.2: 4845 vs srtf 3403 (FIFO 6165, random-fit 6224), gain -29.8%
  synthetic:llm-decode?n=300&seed=23|gpus=1x8xH100-80GB|load=1.2: 229.2 vs random-fit 222.2 (FIFO 226.6, random-fit 222.2), gain -3.1%
Held-out verdict (geomean gains, + is better):
  vs the best human policy picked per trace (oracle): mean_jct -8.0% (geomean); other objectives vs that policy: p99_latency -3.0%, fragmentation +5.7%, makespan +0.6%
  vs the single best human policy on these traces, srtf (itself -6.7% vs the oracle): mean_jct -1.5%; other objectives: p99_latency +11.9%, fragmentation +5.2%, makespan +3.0%
  trivial baselines vs the oracle: FIFO -22.3%, random-fit -25.9%
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler import GpuView, JobView, NodeView, Policy, Snapshot, register
from gpuos.scheduler.preemption import victims_to_fit


@register
class EvolvedMeanJct(Policy):
    name = "evolved-mean-jct"
    description = "evolved by gpuos.agents.gp; see the header"
    provenance = "evolved by gpuos.agents (gp engine), run gp2-mean-jct-s1"
    verified_gain = "held-out mean_jct -1.5% vs srtf (before issue 12's verifier; not verified)"
    first_fit = False
    # Reads only whether the GPUs are in use: a node-state score (added when it was checked in).
    scores_node_state_only = True
    period = 0.0

    def rank(self, job: JobView, now: float) -> float:
        """Lower runs first."""
        service = job.attained(now)
        return service

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (self.rank(j, snap.now), j.submitted_at, j.id))

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        shared = 1.0 if any(g.jobs for g in gpus) else 0.0
        return shared

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        mine = self.rank(job, snap.now)
        return victims_to_fit(
            job,
            snap,
            eligible=lambda r: self.rank(r, snap.now) > mine + 600.0,
            preference=lambda r: -self.rank(r, snap.now),
        )
