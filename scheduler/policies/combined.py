"""Queue order x placement: each order policy with each placement policy, as one policy.

The FGD paper compares placements under one queue order, and Tiresias orders under one
placement; a baseline that is hard to beat takes the best of both. :func:`combine` builds a
policy whose order, preemption and quanta come from ``order`` and whose filter and scores come
from ``placement`` (a subclass of both, order first, so neither needs copying): SRTF, strict
priority and Tiresias, each with best-fit and with FGD.
"""

from __future__ import annotations

from gpuos.scheduler.policies.bestfit import BestFit
from gpuos.scheduler.policies.fgd import Fgd
from gpuos.scheduler.policies.priority import StrictPriority
from gpuos.scheduler.policies.srtf import ShortestRemainingTimeFirst
from gpuos.scheduler.policies.tiresias import Tiresias
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register


def combine(order: type[Policy], placement: type[Policy]) -> type[Policy]:
    """A registered policy named ``<order>+<placement>`` (e.g. ``srtf+bestfit``)."""
    name = f"{order.name}+{placement.name.replace('-', '')}"
    cls = type(f"{order.__name__}With{placement.__name__}", (order, placement), {
        "__module__": __name__,
        "name": name,
        "description": f"{order.name}'s queue order and preemption, {placement.name}'s placement",
        "provenance": f"{order.provenance}; placement: {placement.provenance}",
    })
    globals()[cls.__name__] = cls  # importable by its name, like any policy class
    return register(cls)


COMBINED: tuple[type[Policy], ...] = tuple(
    combine(order, placement)
    for order in (ShortestRemainingTimeFirst, StrictPriority, Tiresias)
    for placement in (BestFit, Fgd)
)
