"""Human-readable byte quantities: ``8GiB`` in, ``8.0 GiB`` out."""

from __future__ import annotations

import re

from gpuos.errors import InvalidArgument

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")

GiB = 1024**3
MiB = 1024**2


def parse_bytes(text: str, field: str = "memory") -> int:
    """Parse ``8GiB``, ``512MiB``, ``10G`` or a plain byte count into bytes."""
    match = _QUANTITY.match(text)
    if not match:
        raise InvalidArgument(field, f"{text!r} is not a size; write it like 8GiB, 512MiB or 10GB")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise InvalidArgument(field, f"unknown unit {unit!r} in {text!r}; use B, KiB, MiB, GiB, TiB (or KB, MB, GB)")
    return int(float(number) * factor)


def format_bytes(n: int) -> str:
    """Format bytes with a binary unit, compact enough for a table cell."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0}
# Days and weeks only where a caller asks for them (how far back an export's window reaches):
# where the durations are latencies (an SLO's p99, a guard's bound) a "2d" is a slip, not a
# value, and is refused as an unknown unit.
_DAY_UNITS = {**_DURATION_UNITS, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")


def parse_duration(text: str, field: str = "duration", *, days: bool = False) -> float:
    """Parse ``20ms``, ``1.5s``, ``250us``, ``2m`` or a plain number of seconds into seconds;
    with ``days``, also ``7d`` and ``1w``. InvalidArgument(``field``) otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidArgument(field, f"{text!r} is not a duration; write it like 20ms, 1.5s or 250us")
    number, unit = match.groups()
    factor = (_DAY_UNITS if days else _DURATION_UNITS).get(unit.lower())
    if factor is None:
        units = "us, ms, s, m, h, d or w" if days else "us, ms, s, m or h"
        raise InvalidArgument(field, f"unknown unit {unit!r} in {text!r}; use {units}")
    seconds = float(number) * factor
    if seconds == float("inf"):
        raise InvalidArgument(field, f"{text!r} is too long to be a duration")
    return seconds
