"""Random-fit placement: any option that fits, chosen at random (a baseline of the FGD paper).

The choice is a hash of (job, node, GPUs), so it is random across jobs yet a pure function of
the snapshot: the same job in the same state lands on the same place, run after run.
"""

from __future__ import annotations

import zlib

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import GpuView, JobView, NodeView, Snapshot


@register
class RandomFit(Policy):
    name = "random-fit"
    description = "a uniformly random option that fits (deterministic hash)"
    first_fit = False

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        key = f"{job.id}|{node.name}|{','.join(str(g.index) for g in gpus)}"
        return float(zlib.crc32(key.encode()))
