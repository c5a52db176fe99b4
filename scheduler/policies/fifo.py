"""FIFO with first-fit placement: jobs start in arrival order on the first GPU that has room.

Later jobs may start ahead of a blocked head when they fit (the usual greedy FIFO of
cluster schedulers); the head is never preempted.
"""

from __future__ import annotations

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register


@register
class Fifo(Policy):
    name = "fifo"
    description = "arrival order, first GPU with room"
