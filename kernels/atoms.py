"""Launch a Triton grid as atoms: slices of its programs, each lasting about a target duration.

A kernel that takes a program-id offset (``pid = tl.program_id(0) + pid_offset``) computes the
same thing whether its grid runs in one launch or as consecutive slices of the grid's first
axis, provided its programs never read what another program of the same launch writes (the
built-in kernels' programs do not: no atomics, and their split-K partials are combined by a
later launch). :func:`launch` runs such a kernel as atoms sized to ``KernelContext.atom_seconds``
(``GPUOS_ATOM_US`` overrides it; 0 launches the whole grid at once), waits for each atom to
finish on a GPU and calls ``ctx.between_atoms()`` after it: a preemption check there means the
GPU is free within one atom.

Sizing (the pure functions :func:`probe_rows` and :func:`atom_rows`): each atom is timed (launch
to finish) and the next one gets as many first-axis rows as fit the target at the measured
seconds per row, so sizes follow the work; the first atom of a kernel and grid not seen before
is a probe of about one program per multiprocessor. The rate is kept per (kernel, grid, device),
so the next launch of the same shape starts at the right size. Off a GPU (the interpreter runs
programs one after another, far slower than the target) a launch is held to ``CPU_MAX_ATOMS``.

Kept free of torch and Triton at import time; torch is imported only to synchronise on a GPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import lru_cache
from time import perf_counter
from typing import Any

from gpuos.errors import InvalidArgument
from gpuos.kernels.context import DEFAULT_ATOM_SECONDS, KernelContext

__all__ = ["CPU_MAX_ATOMS", "DEFAULT_ATOM_SECONDS", "ENV_ATOM_US", "atom_rows", "launch", "probe_rows",
           "target_seconds"]

ENV_ATOM_US = "GPUOS_ATOM_US"
# Off a GPU each atom is at least one interpreted program slice (milliseconds); bounding their
# number keeps a CPU job's preemption points without a launch per row of a large grid.
CPU_MAX_ATOMS = 16
# Measured seconds per first-axis row, by (kernel, grid, device); cleared when full.
_RATES: dict[tuple[int, tuple[int, ...], str], float] = {}
_RATES_MAX = 256


def target_seconds(default: float = DEFAULT_ATOM_SECONDS, environ: Mapping[str, str] | None = None) -> float:
    """The atom duration to aim for: ``GPUOS_ATOM_US`` (whole microseconds, 0 = one launch) when
    set, else ``default``. A malformed value is an ``InvalidArgument`` naming the variable."""
    raw = (os.environ if environ is None else environ).get(ENV_ATOM_US, "").strip()
    if not raw:
        return default
    try:
        micros = int(raw)
    except ValueError:
        micros = -1
    if micros < 0:
        raise InvalidArgument(ENV_ATOM_US, f"want whole microseconds >= 0 (0: one launch per kernel), got {raw!r}")
    return micros * 1e-6


def probe_rows(rows: int, programs_per_row: int, min_programs: int) -> int:
    """Rows of a first atom whose rate is not known yet: the fewest that give ``min_programs``
    programs (about one per multiprocessor, so its time is not all launch overhead), within
    ``1 .. rows``."""
    if rows < 1 or programs_per_row < 1:
        raise ValueError(f"a grid needs rows >= 1 and programs per row >= 1, got {rows}, {programs_per_row}")
    return max(1, min(rows, math.ceil(max(min_programs, 1) / programs_per_row)))


def atom_rows(rows_left: int, seconds_per_row: float, target: float, atoms_left: int | None = None) -> int:
    """Rows of the next atom: as many as fit ``target`` seconds at ``seconds_per_row``, at least one
    and at most ``rows_left``; with ``atoms_left``, at least enough that that many atoms finish the
    grid. A rate of 0 (too quick to time) takes the rest in one atom."""
    if rows_left < 1:
        raise ValueError(f"no rows left to launch ({rows_left})")
    fit = rows_left if seconds_per_row <= 0 else int(min(float(rows_left), target / seconds_per_row))
    rows = max(1, min(rows_left, fit))
    if atoms_left is not None:
        rows = max(rows, math.ceil(rows_left / max(atoms_left, 1)))
    return rows


@lru_cache(maxsize=16)
def _multiprocessors(device: str) -> int:
    import torch

    return int(torch.cuda.get_device_properties(torch.device(device)).multi_processor_count)


def _synchronise(device: Any) -> None:
    # The current stream, not the device: in a shared executor other jobs' streams keep running.
    import torch

    torch.cuda.current_stream(device).synchronize()


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, ctx: KernelContext | None, **meta: Any) -> int:
    """Run ``kernel[grid](*args, **meta)`` as atoms over the grid's first axis; returns how many.

    ``kernel`` must take ``pid_offset`` (added to ``tl.program_id(0)``). Without a context, or with
    a target of 0, it is one launch as before: no synchronisation, no ``between_atoms``. Otherwise,
    on a GPU, work queued before the launch is waited for first (so it is not timed as the first
    atom) and each atom is waited for before ``ctx.between_atoms()``, which is called after every
    atom, the last one included.
    """
    target = 0.0 if ctx is None else target_seconds(ctx.atom_seconds)
    rows = int(grid[0])
    if ctx is None or target <= 0 or rows <= 0:
        kernel[grid](*args, pid_offset=0, **meta)
        return 1
    rest = tuple(int(g) for g in grid[1:])
    per_row = math.prod(rest)
    if per_row == 0:
        return 0
    device = str(ctx.device)
    key = (id(kernel), (rows, *rest), device)
    rate = _RATES.get(key)
    if ctx.on_gpu:
        _synchronise(ctx.device)
    start = atoms = 0
    while start < rows:
        left = rows - start
        if rate is None:
            count = probe_rows(left, per_row, _multiprocessors(device) if ctx.on_gpu else 1)
        else:
            count = atom_rows(left, rate, target, None if ctx.on_gpu else CPU_MAX_ATOMS - atoms)
        began = perf_counter()
        kernel[(count, *rest)](*args, pid_offset=start, **meta)
        if ctx.on_gpu:
            _synchronise(ctx.device)
        measured = (perf_counter() - began) / count
        # The last, truncated atom is mostly fixed overhead: it would understate the next launch's size.
        if rate is None or count < left:
            rate = measured
        start += count
        atoms += 1
        ctx.between_atoms()
    if len(_RATES) >= _RATES_MAX:
        _RATES.clear()
    _RATES[key] = rate if rate is not None else 0.0
    return atoms
