"""Tiresias with the Gittins index (Tiresias-G; Gu et al., NSDI 2019), as its reference simulator
does it (SymbioticLab/Tiresias, ``simulator/run_sim.py``, schedule ``dlas-gpu-gittins``).

The queues, demotion and promotion are Tiresias's (:mod:`.tiresias`); within a queue, jobs run in
order of their Gittins index, highest first, then by arrival. A job's index, for the service
``a`` it has attained since it last entered the top queue and a quantum ``delta`` of service, is

    P(it finishes within delta more | it ran a) / E[service it uses of the next delta | it ran a],

over a distribution of job sizes in GPU-seconds: the reference learns it from a past trace; here
it is the users' estimates (estimate x GPUs) of the jobs in the snapshot, a history the daemon has.
A job past every size in the distribution gets index 0 (runs last in its queue). Where fewer than
``min_samples`` jobs carry an estimate, the index says nothing and the order is Tiresias's.

Departure from the reference: its expected service sums the sizes themselves rather than what
remains of them past ``a``; here it is what remains, as the index is defined.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from gpuos.scheduler.policies.tiresias import Tiresias
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import JobView, Snapshot


class SizeDistribution:
    """Sorted job sizes (GPU-seconds) with prefix sums, so each index costs two bisections."""

    def __init__(self, sizes: list[float]) -> None:
        self.sizes = sorted(sizes)
        self.sums = [0.0, *accumulate(self.sizes)]

    def gittins(self, attained: float, delta: float) -> float:
        n = len(self.sizes)
        alive = bisect_right(self.sizes, attained)
        if alive == n:
            return 0.0
        done = bisect_right(self.sizes, attained + delta)
        finish = (done - alive) / (n - alive)
        used = self.sums[done] - self.sums[alive] - attained * (done - alive) + delta * (n - done)
        return finish / (used / (n - alive))


@register
class TiresiasGittins(Tiresias):
    name = "tiresias-gittins"
    description = "Tiresias queues; Gittins index of attained service within a queue"
    provenance = "Tiresias-G, NSDI'19 (reference: SymbioticLab/Tiresias, dlas-gpu-gittins)"
    # The reference's ``gittins_delta``: the first queue threshold.
    delta = 3250.0
    min_samples = 8

    def __init__(self) -> None:
        # One distribution per snapshot (the policy keeps nothing across rounds).
        self._cached: tuple[Snapshot | None, SizeDistribution | None] = (None, None)

    def distribution(self, snap: Snapshot) -> SizeDistribution | None:
        cached_snap, cached = self._cached
        if cached_snap is snap:
            return cached
        sizes = [j.estimated_seconds * (j.request.compute_milli / 1000 or 1.0)
                 for j in (*snap.pending, *snap.running) if j.estimated_seconds > 0]
        dist = SizeDistribution(sizes) if len(sizes) >= self.min_samples else None
        self._cached = (snap, dist)
        return dist

    def rank(self, job: JobView, snap: Snapshot) -> tuple[float, ...]:
        s = self.standing(job, snap.now)
        dist = self.distribution(snap)
        if dist is None:
            return (s.queue, s.entered, job.submitted_at)
        return (s.queue, -dist.gittins(s.executed, self.delta), job.submitted_at)
