"""Random-fit placement: any option that fits, chosen at random (a baseline of the FGD paper).

Every feasible option (a node and its GPUs) is equally likely. The choice is a hash of the job,
so it is random across jobs yet a pure function of the snapshot: the same job in the same state
lands on the same place, run after run. The framework counts the options by node state
(``picks``), so a large cluster costs a count per distinct state, not a hash per node.
"""

from __future__ import annotations

import zlib

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import JobView, Snapshot


@register
class RandomFit(Policy):
    name = "random-fit"
    description = "a uniformly random option that fits (deterministic hash)"
    first_fit = False
    scores_node_state_only = True
    picks = True

    def pick(self, job: JobView, count: int, snap: Snapshot) -> int:
        return zlib.crc32(job.id.encode()) % count
