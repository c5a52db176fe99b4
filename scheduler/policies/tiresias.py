"""Tiresias discretised two-dimensional LAS (Gu et al., "Tiresias: A GPU Cluster Manager for
Distributed Deep Learning", NSDI 2019), as its reference simulator does it
(SymbioticLab/Tiresias, ``simulator/run_sim.py``, schedule ``dlas-gpu-8``).

2D-LAS ranks jobs by attained service in GPU-seconds (GPUs x time run). Discretised: jobs sit
in three queues split at 3250 and 7200 GPU-seconds (the reference's ``num_queue`` and
``queue_limit``); a job moves down a queue once its service since it last entered the top queue
passes the next threshold. Queues are served in order and, within a queue, in the order jobs
entered it; a waiting job takes the GPUs of running jobs of lower queues, the last-ranked first.

Starvation avoidance (the reference's ``solve_starvation``): a job counts the time it has waited
since it last entered the top queue, from its first run on; once that reaches ``promote_knob``
times the time it has run since then, it is promoted to the top queue and both counters restart
at zero. A job keeps no counter: the policy replays them from the job's run history
(``JobView.stints``), so it stays a pure function of the snapshot.

Where it departs from the reference, on purpose: the reference computes the instant of the next
demotion or promotion; here rounds come every ``period`` seconds, so a queue change takes effect
up to a minute late. The reference re-allocates all GPUs each round in rank order, so a waiting
job also displaces a running one of its own queue that entered it later (one backfilled past
it, say); its simulator charges nothing for that, while here every preemption costs a restart
(``Costs.preemption_cost``, 30 s by default), which on short jobs (the GenAI trace's) cost
Tiresias half its mean JCT: so preemption here is across queues only, as the paper describes it.
The reference counts GPUs only; here the framework places each job, so a job ranked ahead that
fits nowhere does not stop others behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.preemption import victims_to_fit
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import JobView, Snapshot


@dataclass(frozen=True, slots=True)
class Standing:
    """Where the reference's counters stand for a job at some instant."""

    queue: int
    entered: float  # when it entered its queue (the order within a queue)
    executed: float  # GPU-seconds since it last entered the top queue (or arrived)


@register
class Tiresias(Policy):
    name = "tiresias"
    description = "discretised 2D-LAS on attained GPU-seconds, with promotion against starvation"
    provenance = "Tiresias, NSDI'19 (reference: SymbioticLab/Tiresias, dlas-gpu)"
    thresholds: tuple[float, ...] = (3250.0, 7200.0)
    promote_knob = 8.0
    # Demotions and promotions happen as time passes, so rounds must too.
    period = 60.0

    def standing(self, job: JobView, now: float) -> Standing:
        """Replay the reference's counters over the job's history up to ``now``."""
        gpus = job.request.compute_milli / 1000 or 1.0
        runs = [(s.start, s.stop, s.service) for s in job.stints]
        if job.started_at is not None and (not job.stints or job.started_at >= job.stints[-1].stop):
            runs.append((job.started_at, now, job.attained(now) - sum(s.service for s in job.stints)))
        queue, entered, executed = 0, job.submitted_at, 0.0
        waited = 0.0  # since it last entered the top queue, counted from its first run on
        clock = job.submitted_at
        for start, stop, service in [*runs, (now, now, 0.0)]:
            if executed > 0:
                due = self.promote_knob * executed / gpus - waited
                if queue > 0 and start - clock >= due:
                    queue, entered, executed, waited = 0, clock + max(due, 0.0), 0.0, 0.0
                else:
                    waited += start - clock
            rate = service / (stop - start) if stop > start else 0.0
            for level, threshold in enumerate(self.thresholds):
                if level >= queue and executed < threshold <= executed + service:
                    queue, entered = level + 1, start + (threshold - executed) / rate
            executed += service
            clock = stop
        return Standing(queue, entered, executed)

    def queue(self, job: JobView, now: float) -> int:
        """The job's queue (0 is served first)."""
        return self.standing(job, now).queue

    def rank(self, job: JobView, snap: Snapshot) -> tuple[float, ...]:
        """Lower runs first: the queue, then when the job entered it."""
        s = self.standing(job, snap.now)
        return (s.queue, s.entered, job.submitted_at)

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (*self.rank(j, snap), j.id))

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        mine = self.standing(job, snap.now).queue
        if mine == len(self.thresholds):
            return ()
        standings = {r.id: self.standing(r, snap.now) for r in snap.running}
        return victims_to_fit(
            job, snap,
            eligible=lambda r: standings[r.id].queue > mine,
            # The job ranked last loses first, as the reference's allocation pass leaves it out.
            preference=lambda r: (-standings[r.id].queue, -standings[r.id].entered),
        )
