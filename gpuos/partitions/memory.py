"""Memory sharing: attribute each GPU process's memory to its job and find jobs over their limit.

A job's processes share its process group (the job's first process leads it), so a process on
the GPU belongs to the job whose group it is in. Both backends report per-process memory the
same way (NVML's running-process list, the simulator's own accounting).

A kernel executor (``--share executor``) is a process of gpuosd's, in a session of its own, that
holds the memory of all its jobs: its memory is no one job's, so it is left out here, and each
job's share inside it is capped by the executor itself (gpuos/partitions/executor.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from gpuos.devices.backend import DeviceStatus


@dataclass(frozen=True)
class Overrun:
    job_id: str
    gpu: int
    used: int
    limit: int


def process_group(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return 0


def usage_by_group(
    statuses: Iterable[DeviceStatus], group_of: Callable[[int], int] = process_group,
    exclude: Collection[int] = (),
) -> dict[tuple[int, int], int]:
    """Bytes used per (process group, GPU index), leaving out the processes ``exclude`` names
    (the kernel executors)."""
    used: dict[tuple[int, int], int] = {}
    for status in statuses:
        for proc in status.processes:
            if proc.pid in exclude:
                continue
            key = (group_of(proc.pid), status.index)
            used[key] = used.get(key, 0) + proc.memory_used
    return used


def overruns(
    limits: Mapping[str, tuple[int, tuple[int, ...], int]],
    used: Mapping[tuple[int, int], int],
) -> list[Overrun]:
    """Jobs using more than their limit on any of their GPUs.

    ``limits`` maps job id to (process group, GPU indices, limit in bytes per GPU).
    """
    found = []
    for job_id, (group, gpus, limit) in limits.items():
        if group <= 0 or limit <= 0:
            continue
        for gpu in gpus:
            bytes_used = used.get((group, gpu), 0)
            if bytes_used > limit:
                found.append(Overrun(job_id, gpu, bytes_used, limit))
                break
    return found
