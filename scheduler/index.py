"""A capacity index over a snapshot's nodes, so a round need not scan full nodes.

For each node it keeps a few upper bounds on what the node could still host (idle GPUs, the
largest free MPS share, free time-slice seats, free MIG compute slices, free CPU) in max
segment trees, and answers "the next node at or after position i whose bound is at least x" in
O(log n). The bounds are necessary conditions of :func:`gpuos.scheduler.framework.options`, so
skipping nodes below them never changes a decision; the framework still checks each candidate
in full. The simulator updates the index in place as nodes change (O(log n) per node) and
re-points it at each new snapshot's node tuple; a snapshot whose tuple is not the one the index
describes (an older, recorded one) is scheduled with the plain scan.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gpuos.jobs import Resources
from gpuos.scheduler.snapshot import MAX_TIMESLICE_JOBS, MILLI, JobView, NodeView

MIG_COMPUTE_SLICES = 7

# Which bound a request is filtered by.
WHOLE, SHARE, TIMESLICE, MIG, CPU = range(5)


def bounds(node: NodeView) -> tuple[int, int, int, int, int]:
    """(idle GPUs, largest free MPS share, most free time-slice seats, most free MIG slices, free CPU)."""
    idle = share = seats = mig = 0
    for gpu in node.gpus:
        if not gpu.healthy:
            continue
        is_idle = gpu.milli_free == MILLI and gpu.memory_free == gpu.memory_total and not gpu.jobs
        if is_idle:
            idle += 1
        if is_idle or gpu.sharing == "mps":
            share = max(share, gpu.milli_free)
        if is_idle or gpu.sharing == "timeslice":
            seats = max(seats, MAX_TIMESLICE_JOBS - len(gpu.jobs))
        if gpu.mig_profiles and (is_idle or gpu.sharing == "mig"):
            mig = max(mig, MIG_COMPUTE_SLICES - gpu.mig_slices_used)
    return idle, share, seats, mig, min(node.cpu_milli_free, 1 << 62)


def need(job: JobView) -> tuple[int, int]:
    """(bound, least value) a node must have for ``job`` to possibly fit there."""
    request: Resources = job.request
    if request.mig_profile:
        return MIG, 1
    if request.timeslice:
        return TIMESLICE, 1
    if request.gpu_milli:
        return SHARE, request.gpu_milli
    if request.gpus:
        return WHOLE, request.gpus
    return CPU, job.cpu_milli


class NodeIndex:
    """Max segment trees over the nodes' bounds; mutable, owned by whoever builds snapshots."""

    def __init__(self, nodes: Sequence[NodeView]) -> None:
        self.n = len(nodes)
        size = 1
        while size < max(1, self.n):
            size *= 2
        self._size = size
        self._trees = [[-1] * (2 * size) for _ in range(5)]
        for i, node in enumerate(nodes):
            for key, value in enumerate(bounds(node)):
                self._trees[key][size + i] = value
        for tree in self._trees:
            for i in range(size - 1, 0, -1):
                tree[i] = max(tree[2 * i], tree[2 * i + 1])
        # The node tuple this index describes; the framework trusts it only for that tuple.
        self.nodes: tuple[NodeView, ...] = tuple(nodes)

    def update(self, position: int, node: NodeView) -> None:
        """Node ``position`` changed to ``node`` (the caller re-points ``nodes`` afterwards)."""
        for key, value in enumerate(bounds(node)):
            tree = self._trees[key]
            i = self._size + position
            if tree[i] == value:
                continue
            tree[i] = value
            i >>= 1
            while i:
                best = max(tree[2 * i], tree[2 * i + 1])
                if tree[i] == best:
                    break
                tree[i] = best
                i >>= 1

    def first(self, key: int, least: int, start: int) -> int:
        """The lowest position >= ``start`` whose bound ``key`` is >= ``least``; ``n`` if none."""
        tree = self._trees[key]
        if start >= self.n or tree[1] < least:
            return self.n
        i = start + self._size
        if tree[i] < least:
            while True:
                # Climb while i is a right child, then step to the right sibling's subtree.
                while i & 1:
                    i >>= 1
                    if i <= 1:
                        return self.n
                i += 1
                if tree[i] >= least:
                    break
            while i < self._size:
                i = 2 * i if tree[2 * i] >= least else 2 * i + 1
        position = i - self._size
        return position if position < self.n else self.n

    def candidates(self, job: JobView) -> Iterator[int]:
        """Positions of nodes that may host ``job``, in node order."""
        key, least = need(job)
        position = self.first(key, least, 0)
        while position < self.n:
            yield position
            position = self.first(key, least, position + 1)
