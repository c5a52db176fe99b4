"""Speculate fairly: one member of every job group before the second member of any, within budget.

An agent speculates: it submits several variants of one piece of work as a group and keeps the
first (or best) that succeeds (gpuos/groups.py). Under FIFO one agent's burst of eight variants
takes every free GPU while the next agent's group waits behind it, although a first try of each
group is worth more than a fifth try of one: with per-member success probability p, the k-th
member of a group only matters when the k-1 before it all failed, (1 - p)^(k-1) of the time.
So the queue is ordered by how many members of the job's group already hold GPUs or succeeded
(counting the members placed ahead of it in this order), then by arrival.

A member whose group cannot pay for it does not start: the budget left, less what the members
ahead of it in this round's order would take, must cover its estimate x the GPUs it holds (a
member without an estimate must find at least ``NEARLY_SPENT`` of the budget left). Starting it
would only spend GPU-seconds that the group's budget then stops half-way.

A job without a group counts as a group of one; it is never held back.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import GroupKey, JobView, Snapshot

# A member with no estimate starts only while this share of its group's budget is left.
NEARLY_SPENT = 0.05


def need(job: JobView) -> float:
    """GPU-seconds ``job`` would spend by its user's estimate (0 when it has none)."""
    return job.estimated_seconds * job.request.compute_milli / 1000


@register
class SpeculateFairly(Policy):
    name = "speculate"
    description = "one member of every job group before a second of any; none its group's budget cannot pay for"
    provenance = "hand-written for agentic speculation (issue 13; arXiv 2509.00997)"

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        if not snap.groups:
            return super().order(pending, snap)
        tried: dict[GroupKey, int] = {}  # members of each group running, succeeded or ahead in the order
        committed: dict[GroupKey, float] = {}  # GPU-seconds the members ahead in the order would take
        ranked: list[tuple[int, JobView]] = []
        for job in super().order(pending, snap):
            group = snap.group_of(job)
            if group is None:
                ranked.append((0, job))
                continue
            key = (group.tenant, group.name)
            left = group.budget_left - committed.get(key, 0.0)
            if group.budget > 0 and left < (need(job) or NEARLY_SPENT * group.budget):
                continue
            rank = tried.get(key, group.running + group.succeeded)
            tried[key] = rank + 1
            committed[key] = committed.get(key, 0.0) + need(job)
            ranked.append((rank, job))
        ranked.sort(key=lambda entry: entry[0])  # stable: the base order within a rank
        return [job for _, job in ranked]
