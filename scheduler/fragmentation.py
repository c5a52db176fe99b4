"""GPU fragmentation as Weng et al. define it (FGD, USENIX ATC 2023, section 4).

The fragmentation of node n for a task m, F_n(m), is the node's unallocated GPU capacity that m
could not use:

- if m cannot run on n at all (too little CPU, a GPU type it excludes, not enough free GPU),
  every unallocated GPU share on n is a fragment;
- otherwise the fragments are the GPUs whose free share is below min(m's GPU request, 1 GPU):
  a partly used GPU is useless to a whole-GPU task, a 0.3-GPU remainder to a 0.5-GPU task.

Against a target workload M (task classes m with popularity p_m), F_n(M) = sum_m p_m F_n(m):
the expected unusable capacity of n. The cluster's fragmentation is the sum over nodes. Both the
FGD policy (which places a task where F grows least) and the simulator's metric use this module.

Units: milli-GPU (1000 = one GPU). Only GPUs shared by MPS shares (or idle) count as having a
usable free share; MIG and time-sliced GPUs are outside the paper's model and count as used.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from gpuos.jobs import Resources
from gpuos.scheduler.snapshot import MILLI, NodeView


@dataclass(frozen=True, slots=True)
class TaskClass:
    """One kind of task in the target workload: its GPU request, typical CPU, and popularity."""

    gpus: int
    milli: int  # for one shared GPU (gpus == 1); 0 for whole GPUs or none
    cpu_milli: int
    gpu_types: tuple[str, ...]
    weight: float

    @property
    def gpu_demand(self) -> int:
        """Milli-GPU the task takes in total."""
        return self.milli if self.milli else self.gpus * MILLI


def workload(requests: Iterable[tuple[Resources, int]]) -> tuple[TaskClass, ...]:
    """Task classes from (request, cpu_milli) samples, weighted by frequency.

    Classes are keyed by GPU request and type constraint (the paper's task "types"); a class's
    CPU demand is the median of its members', so the CPU check stays cheap.
    """
    cpus: dict[tuple[int, int, tuple[str, ...]], list[int]] = {}
    for request, cpu in requests:
        if request.mig_profile or request.timeslice or request.executor:
            continue
        key = (request.gpus if not request.gpu_milli else 1, request.gpu_milli, tuple(sorted(request.gpu_types)))
        cpus.setdefault(key, []).append(cpu)
    total = sum(len(v) for v in cpus.values())
    classes = []
    for (gpus, milli, types), values in sorted(cpus.items()):
        values.sort()
        classes.append(TaskClass(gpus, milli, values[len(values) // 2], types, len(values) / total))
    return tuple(classes)


def usable_free(node: NodeView) -> tuple[int, ...]:
    """Free milli-GPU of each healthy GPU that can still take a share, ascending (zeros left out)."""
    return tuple(sorted(g.milli_free for g in node.gpus if g.healthy and g.milli_free > 0 and g.sharing in ("", "mps")))


class Fragmentation:
    """F_n(M) for a fixed workload M, memoised on (GPU model, free shares) since many nodes repeat."""

    def __init__(self, classes: Sequence[TaskClass]) -> None:
        self.classes = tuple(classes)
        self._memo: dict[tuple[str, tuple[int, ...]], tuple[list[int], list[float], float]] = {}

    def node(self, node: NodeView) -> float:
        """Expected milli-GPU of ``node`` that a task drawn from the workload could not use."""
        model = node.gpus[0].model if node.gpus else ""
        return self.of(model, usable_free(node), node.cpu_milli_free)

    def of(self, model: str, frees: tuple[int, ...], cpu_free: int) -> float:
        """F for a node of ``model`` whose GPUs have ``frees`` (ascending) and ``cpu_free`` CPU."""
        if not frees:
            return 0.0
        key = (model, frees)
        entry = self._memo.get(key)
        if entry is None:
            entry = self._memo[key] = self._prepare(model, frees)
        cpus, saved, unusable_all = entry
        # Classes that fit by GPU and by CPU "save" the capacity they could use from F.
        return unusable_all - saved[bisect_right(cpus, cpu_free)]

    def _prepare(self, model: str, frees: tuple[int, ...]) -> tuple[list[int], list[float], float]:
        total = sum(frees)
        prefix = [0, *accumulate(frees)]
        whole = Counter(frees)[MILLI]
        fitting: list[tuple[int, float]] = []
        unusable_all = 0.0
        for c in self.classes:
            unusable_all += c.weight * total
            if c.gpu_types and model not in c.gpu_types:
                continue
            if c.gpus == 0 and not c.milli:
                fits, below = True, 0
            elif c.milli:
                fits = frees[-1] >= c.milli
                below = prefix[bisect_left(frees, c.milli)]
            else:
                fits = whole >= c.gpus
                below = prefix[bisect_left(frees, MILLI)]
            if fits:
                fitting.append((c.cpu_milli, c.weight * (total - below)))
        fitting.sort()
        cpus = [cpu for cpu, _ in fitting]
        # saved[k]: capacity saved by the k fitting classes of smallest CPU demand.
        saved = [0.0, *accumulate(value for _, value in fitting)]
        return cpus, saved, unusable_all

    def cluster(self, nodes: Iterable[NodeView]) -> float:
        """Sum of F_n(M) over ``nodes``, in milli-GPU."""
        return sum(self.node(n) for n in nodes)
