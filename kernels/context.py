"""What the kernel worker hands a kernel job's runner: where to run, and how to report a step.

Kept free of torch at import time, like the specs: the worker builds it once torch is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class KernelContext:
    """The runner's view of its worker.

    ``device`` is a ``torch.device`` (``cuda`` on a GPU, ``cpu`` otherwise, where the Triton
    kernels run under ``TRITON_INTERPRET=1``); ``on_gpu`` says which. ``report(step, latency_s)``
    must be called after each step's kernels have finished (the runner synchronises first): it
    is the kernel boundary at which the worker yields its time-slice turn when asked to.
    """

    device: Any
    on_gpu: bool
    report: Callable[[int, float], None]
    seed: int = 0
