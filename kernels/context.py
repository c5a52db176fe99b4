"""What the kernel worker hands a kernel job's runner: where to run, how to report a step, and
where its kernels may be preempted (between atoms, see ``gpuos.kernels.atoms``).

Kept free of torch at import time, like the specs: the worker builds it once torch is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The target duration of one atom (a slice of a kernel's grid, ``gpuos.kernels.atoms``): LithOS's
# 250-500 us, the low end, so that a job waiting for the GPU waits at most about this long.
DEFAULT_ATOM_SECONDS = 250e-6


def _no_preemption_point() -> None:
    """The default ``between_atoms``: a runner started outside a worker never yields."""


@dataclass
class KernelContext:
    """The runner's view of its worker.

    ``device`` is a ``torch.device`` (``cuda`` on a GPU, ``cpu`` otherwise, where the Triton
    kernels run under ``TRITON_INTERPRET=1``); ``on_gpu`` says which. ``report(step, latency_s)``
    must be called after each step's kernels have finished (the runner synchronises first): it
    is the kernel boundary at which the worker yields its time-slice turn when asked to.

    ``between_atoms()`` is called by the kernels after each atom (a slice of a launch's grid that
    lasts about ``atom_seconds``; never inside one), with the atom's work finished on a GPU: it is
    where whoever runs the kernel may preempt it (the isolated worker pauses there when asked, the
    executor waits at its priority gate). ``GPUOS_ATOM_US`` in the environment overrides
    ``atom_seconds``.
    """

    device: Any
    on_gpu: bool
    report: Callable[[int, float], None]
    seed: int = 0
    between_atoms: Callable[[], None] = _no_preemption_point
    atom_seconds: float = DEFAULT_ATOM_SECONDS


class Pacer:
    """Steps of a latency service: one every ``interval_ms`` (a kernel's ``interval_ms`` param),
    like requests arriving at a fixed rate; a step that overruns starts the next at once. An
    interval of 0 never waits (steps back to back)."""

    def __init__(self, interval_ms: float) -> None:
        self.interval = float(interval_ms) / 1e3
        self._due = time.perf_counter()

    def wait(self) -> None:
        """Block until the next step is due (call before each step)."""
        if self.interval <= 0:
            return
        time.sleep(max(0.0, self._due - time.perf_counter()))
        self._due = max(self._due + self.interval, time.perf_counter())
