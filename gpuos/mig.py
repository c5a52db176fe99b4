"""MIG, the types and the rules: GPU-instance profiles, the instances that exist, and where a new
one may go.

A ground-floor module (it imports nothing of gpuos): the device backends report profiles and
instances in these types, and the scheduler and the simulator check layouts with these rules.

NVIDIA places each GPU-instance profile only at certain start slots of the GPU's eight memory
slices, spanning as many slices as the profile's memory (a 7g instance spans all eight). Two
instances may not overlap, and no more instances of a profile may exist than its maximum count.
These pure functions apply those rules, so the scheduler and the simulator refuse exactly the
layouts NVIDIA would refuse; the device backend then creates the instance at the chosen slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

COMPUTE_SLICES = 7


@dataclass(frozen=True)
class MigProfile:
    """A GPU-instance profile as NVIDIA names it (``3g.40gb``).

    ``slices`` is the number of compute slices (the ``g`` count), ``memory_slices`` the number of
    memory slices of the eight, ``placements`` the start slots NVIDIA allows for it.
    """

    name: str
    slices: int
    memory_bytes: int
    memory_slices: int
    max_count: int
    placements: tuple[int, ...]


@dataclass(frozen=True)
class Instance:
    """A GPU instance that exists: its profile and the first memory slice it occupies."""

    profile: str
    start: int


def _span(profile: MigProfile, start: int) -> range:
    return range(start, start + profile.memory_slices)


def find_slot(profiles: Sequence[MigProfile], instances: Iterable[Instance], wanted: str) -> int | None:
    """The first start slot where an instance of ``wanted`` fits beside ``instances``, else None."""
    profile = next((p for p in profiles if p.name == wanted), None)
    if profile is None:
        return None
    existing = list(instances)
    return next((start for start in profile.placements if fits_at(profiles, existing, wanted, start)), None)


def fits_at(profiles: Sequence[MigProfile], instances: Iterable[Instance], wanted: str, start: int) -> bool:
    """Whether an instance of ``wanted`` may start at memory slice ``start`` beside ``instances``
    (a recorded placement being re-applied must land where it was, not at the first free slot)."""
    by_name = {p.name: p for p in profiles}
    profile = by_name.get(wanted)
    if profile is None or start not in profile.placements:
        return False
    existing = list(instances)
    if sum(1 for i in existing if i.profile == wanted) >= profile.max_count:
        return False
    used_compute = sum(by_name[i.profile].slices for i in existing if i.profile in by_name)
    if used_compute + profile.slices > COMPUTE_SLICES:
        return False
    taken = {s for i in existing if i.profile in by_name for s in _span(by_name[i.profile], i.start)}
    return not taken.intersection(_span(profile, start))


def layout_fits(profiles: Sequence[MigProfile], wanted: Sequence[str]) -> bool:
    """Whether NVIDIA would accept instances of all of ``wanted`` on one GPU, placed in this order
    or any other (placement is first-fit per order, so every order is tried for small layouts)."""
    from itertools import permutations

    names = list(wanted)
    orders = permutations(names) if len(names) <= 7 else [tuple(sorted(names, key=lambda n: -_size(profiles, n)))]
    for order in orders:
        placed: list[Instance] = []
        for name in order:
            slot = find_slot(profiles, placed, name)
            if slot is None:
                break
            placed.append(Instance(name, slot))
        else:
            return True
    return False


def _size(profiles: Sequence[MigProfile], name: str) -> int:
    return next((p.memory_slices for p in profiles if p.name == name), 0)


def profiles_reported(reported: Iterable[Any]) -> tuple[MigProfile, ...]:
    """The profiles a device listing reports (``gpuos.v1.MigProfileInfo`` messages), with their
    slot rules: what the device plugin and the DRA driver plan MIG slices by."""
    return tuple(MigProfile(p.name, p.slices, p.memory_bytes, p.memory_slices, p.max_count, tuple(p.placements))
                 for p in reported)
