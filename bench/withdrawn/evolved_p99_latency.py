"""Evolved policy evolved-p99-latency: optimises p99_latency (p99 JCT of the latency class (s)).

Found by gpuos.agents (gp engine), run gp2-p99-latency-s2: 24 generations x 32, seed 2.
Engine-made, seeded with hand-made rules (FIFO, SJF, SRTF, LAS, smallest GPU-seconds, best-fit and spread
placement, latency class first) and 2 genome(s) from earlier runs' results (--warm-start); selected by training score only.
Command: gpuosctl evolve --objective p99_latency --engine gp --iterations 24 --population 32 --seed 2 --jobs 1 --warm-start runs/v2/gp2-p99-latency-s1/report.json --warm-start runs/gp-p99-latency-s1/report.json --run-dir runs/v2/gp2-p99-latency-s2
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
Training score (geomean best-human/evolved): 0.979
Held-out traces, never seen in the search: evolved vs the best human policy on each
(p99_latency, lower is better; gain = best/evolved - 1):
  alibaba-gpu-2023|gpus=2x8xG2|start=0.6|jobs=300|load=1.2: 6.096e+04 vs srtf 6.096e+04 (FIFO 9.955e+04, random-fit 9.955e+04), gain +0.0%
  alibaba-gpu-2023:gpushare80|gpus=2x8xG2|start=0.4|jobs=300|load=1.2: 1.589e+04 vs drf 1.577e+04 (FIFO 1.578e+04, random-fit 1.59e+04), gain -0.7%
  alibaba-gpu-2023:multigpu50|gpus=2x8xG2|start=0.7|jobs=300|load=1.2: 9.279e+04 vs priority 9.279e+04 (FIFO 9.367e+04, random-fit 1.88e+05), gain +0.0%
  alibaba-genai-2026|gpus=2x4xA10|start=0.5|jobs=400|load=1.2: 427.8 vs spread 419.9 (FIFO 427.8, random-fit 421.4), gain -1.8%
  synthetic:bursty?n=300&seed=23|gpus=2x8xA100-80GB|load=1.2: 2.131e+04 vs priority 2.131e+04 (FIFO 3.95e+04, random-fit 4.024e+04), gain +0.0%
  synthetic:llm-decode?n=300&seed=23|gpus=1x8xH100-80GB|load=1.2: 1220 vs random-fit 1083 (FIFO 1220, random-fit 1083), gain -11.2%
Held-out verdict (geomean gains, + is better):
  vs the best human policy picked per trace (oracle): p99_latency -2.4% (geomean); other objectives vs that policy: mean_jct +2.9%, fragmentation +2.0%, makespan +0.1%
  vs the single best human policy on these traces, priority (itself -10.1% vs the oracle): p99_latency +8.5%; other objectives: mean_jct +11.9%, fragmentation -0.3%, makespan -1.1%
  trivial baselines vs the oracle: FIFO -18.9%, random-fit -26.5%
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpuos.scheduler import JobView, Policy, Snapshot, register
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
    provenance = "evolved by gpuos.agents (gp engine), run gp2-p99-latency-s2"
    verified_gain = "held-out p99_latency +8.5% vs priority (before issue 12's verifier; not verified)"
    first_fit = True
    period = 0.0

    def rank(self, job: JobView, now: float) -> float:
        """Lower runs first."""
        size = job.request.compute_milli / 1000
        service = job.attained(now)
        latency = 1.0 if job.qos in ("LS", "Guaranteed") else 0.0
        priority = float(job.priority)
        preempted = float(job.preemptions)
        return pdiv(plog(service), pdiv(size + plog(service), max(max(preempted, priority), latency))) - (1000000.0 * latency)

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (self.rank(j, snap.now), j.submitted_at, j.id))

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        mine = self.rank(job, snap.now)
        return victims_to_fit(
            job,
            snap,
            eligible=lambda r: self.rank(r, snap.now) > mine + 638279.775,
            preference=lambda r: -self.rank(r, snap.now),
        )
