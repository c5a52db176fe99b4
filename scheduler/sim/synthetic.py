"""Seeded synthetic workloads. Labelled synthetic everywhere they appear: no real system made them.

Kinds (``synthetic:<kind>?n=<jobs>&seed=<s>&load=<offered load>``):

- ``llm-decode``: LLM decode sessions on H100s: Poisson arrivals, log-normal session lengths
  (median 2 min), each holding a MIG slice (1g.10gb / 2g.20gb), an MPS share or a time-slice
  turn; 60% latency-class. 8 tenants.
- ``bursty``: training-style jobs (1/2/4/8 whole GPUs or a 0.25-0.5 share) arriving in bursts
  (a two-state Markov-modulated Poisson process, 10x rate in a burst); log-normal durations
  (median 10 min, heavy tail); 30% latency-class. 8 tenants.
- ``large``: 100,000 jobs by default, the same mix as ``bursty`` but Poisson, for speed runs.

``load`` (default 0.8) sets the arrival rate so that offered GPU demand is that fraction of the
cluster's GPUs. Each kind has a default cluster; ``--gpus`` overrides it.
"""

from __future__ import annotations

import math
import random

from gpuos.errors import InvalidArgument
from gpuos.jobs import TIMESLICE, Resources
from gpuos.scheduler.sim.cluster import parse_gpus
from gpuos.scheduler.sim.traces import Trace, TraceJob, draw_estimate, estimate_rng, slo_for

_CLUSTERS = {"llm-decode": "4x8xH100-80GB", "bursty": "8x8xA100-80GB", "large": "64x8xA100-80GB"}
_DEFAULT_N = {"llm-decode": 1000, "bursty": 2000, "large": 100_000}


def _llm_request(rng: random.Random) -> tuple[Resources, float]:
    """(request, GPUs' worth of compute it uses) for one decode session."""
    u = rng.random()
    if u < 0.4:
        return Resources(gpus=1, mig_profile="1g.10gb"), 1 / 7
    if u < 0.6:
        return Resources(gpus=1, mig_profile="2g.20gb"), 2 / 7
    if u < 0.85:
        milli = rng.choice((250, 500))
        return Resources(gpus=1, gpu_milli=milli), milli / 1000
    return Resources(gpus=1, gpu_milli=500, sharing=TIMESLICE), 1 / 4


def _training_request(rng: random.Random) -> tuple[Resources, float]:
    u = rng.random()
    if u < 0.3:
        milli = rng.choice((250, 500))
        return Resources(gpus=1, gpu_milli=milli), milli / 1000
    gpus = rng.choices((1, 2, 4, 8), weights=(50, 20, 15, 15))[0]
    return Resources(gpus=gpus), float(gpus)


def generate(kind: str, params: dict[str, str], seed: int = 0, estimate_seed: int | None = None) -> Trace:
    """A synthetic trace of ``kind``; ``params`` may set n, seed and load. ``estimate_seed``: see
    :func:`~gpuos.scheduler.sim.traces.load_trace`."""
    if kind not in _CLUSTERS:
        raise InvalidArgument("trace", f"unknown synthetic kind {kind!r}; known: {', '.join(_CLUSTERS)}")
    try:
        n = int(params.get("n", _DEFAULT_N[kind]))
        seed = int(params.get("seed", seed))
        load = float(params.get("load", 0.8))
    except ValueError as exc:
        raise InvalidArgument("trace", f"synthetic:{kind}: {exc}") from None
    nodes = parse_gpus(_CLUSTERS[kind])
    capacity = sum(len(node.gpus) for node in nodes)
    rng = random.Random(f"{kind}/{seed}")
    secret = estimate_rng(estimate_seed)
    if kind == "llm-decode":
        median, sigma, ls_share, make = 120.0, 1.0, 0.6, _llm_request
    else:
        median, sigma, ls_share, make = 600.0, 1.5, 0.3, _training_request
    # Mean GPU demand of a job, to set the arrival rate for the requested load.
    probe = random.Random(seed)
    mean_gpus = sum(make(probe)[1] for _ in range(2000)) / 2000
    mean_duration = median * math.exp(sigma * sigma / 2)
    rate = load * capacity / (mean_gpus * mean_duration)
    arrivals = _bursty_arrivals(rng, rate, n) if kind == "bursty" else _poisson_arrivals(rng, rate, n)
    jobs = []
    for i, arrival in enumerate(arrivals):
        request, _ = make(rng)
        duration = max(1.0, rng.lognormvariate(math.log(median), sigma))
        qos = "LS" if rng.random() < ls_share else "BE"
        jobs.append(
            TraceJob(
                id=f"{kind}-{i:06d}",
                arrival=arrival,
                duration=duration,
                request=request,
                tenant=f"tenant-{rng.randrange(8)}",
                qos=qos,
                priority=2 if qos == "LS" else 0,
                estimate=draw_estimate(rng, secret, duration),
                slo=slo_for(qos, duration),
            )
        )
    return Trace(f"synthetic:{kind}?n={n}&seed={seed}", nodes, tuple(jobs), "synthetic (seeded generator, not a real trace)")


def _poisson_arrivals(rng: random.Random, rate: float, n: int) -> list[float]:
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def _bursty_arrivals(rng: random.Random, rate: float, n: int) -> list[float]:
    """Two-state MMPP: bursts at 10x the calm rate, a tenth of the time in bursts, same mean rate."""
    calm = rate / (0.9 + 0.1 * 10)
    t, bursting = 0.0, False
    out: list[float] = []
    switch_at = rng.expovariate(1 / 3600)
    while len(out) < n:
        t += rng.expovariate(calm * (10 if bursting else 1))
        if t >= switch_at:
            bursting = not bursting
            t = switch_at
            switch_at += rng.expovariate(1 / (400 if bursting else 3600))
            continue
        out.append(t)
    return out
