"""A capacity index over a snapshot's nodes, so a round need not scan full nodes.

For each node it keeps a few upper bounds on what the node could still host (idle GPUs, the
largest free MPS share, free time-slice seats, free MIG compute slices, free CPU) in max
segment trees, and answers "the next node at or after position i whose bound is at least x" in
O(log n). The bounds are necessary conditions of :func:`gpuos.scheduler.framework.options`, so
skipping nodes below them never changes a decision; the framework still checks each candidate
in full. The simulator updates the index in place as nodes change (O(log n) per node) and
re-points it at each new snapshot's node tuple; a snapshot whose tuple is not the one the index
describes (an older, recorded one) is scheduled with the plain scan.

It also groups the nodes by state (:func:`node_state`), for policies that score a node's state
alone: a round then scores one node per group. On a large, mostly idle cluster there are a few
dozen groups where there are a thousand nodes.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterator, Sequence

from gpuos.jobs import Resources
from gpuos.scheduler.snapshot import MAX_TIMESLICE_JOBS, MILLI, JobView, NodeView

MIG_COMPUTE_SLICES = 7

# Which bound a request is filtered by.
WHOLE, SHARE, TIMESLICE, MIG, CPU = range(5)


def bounds(node: NodeView) -> tuple[int, int, int, int, int]:
    """(idle GPUs, largest free MPS share, most free time-slice seats, most free MIG slices, free CPU)."""
    # Runs for every node change in the simulator: plain comparisons, not max(), on purpose.
    idle = share = seats = mig = 0
    for gpu in node.gpus:
        if not gpu.healthy:
            continue
        jobs = gpu.jobs
        sharing = gpu.sharing
        is_idle = not jobs and gpu.milli_free == MILLI and gpu.memory_free == gpu.memory_total
        if is_idle:
            idle += 1
        if (is_idle or sharing == "mps") and gpu.milli_free > share:
            share = gpu.milli_free
        if (is_idle or sharing == "timeslice") and MAX_TIMESLICE_JOBS - len(jobs) > seats:
            seats = MAX_TIMESLICE_JOBS - len(jobs)
        if gpu.mig_profiles and (is_idle or sharing == "mig") and MIG_COMPUTE_SLICES - gpu.mig_slices_used > mig:
            mig = MIG_COMPUTE_SLICES - gpu.mig_slices_used
    return idle, share, seats, mig, min(node.cpu_milli_free, 1 << 62)


NodeState = tuple[object, ...]


def node_state(node: NodeView) -> NodeState:
    """What two nodes must share to host any job alike: everything but names, uuids and which
    jobs they run (only how many). Nodes in one state offer the same options, and a policy that
    reads only state scores them alike (see ``Policy.scores_node_state_only``)."""
    return (
        node.cpu_milli_free,
        node.host_memory_free,
        tuple(
            (g.index, g.model, g.memory_total, g.memory_free, g.milli_free, g.healthy, g.mig_profiles,
             g.mig_slices_used, len(g.jobs), g.sharing, g.mig_instances, g.oversubscription)
            for g in node.gpus
        ),
    )


def group_states(nodes: Sequence[NodeView]) -> tuple[dict[int, list[int]], list[int]]:
    """Positions of ``nodes`` by state (a small int per distinct state; each list ascending), and
    each position's state. Ints, not the states themselves, so a round hashes no state tuple."""
    ids: dict[NodeState, int] = {}
    of = [ids.setdefault(node_state(n), len(ids)) for n in nodes]
    members: dict[int, list[int]] = {}
    for i, state in enumerate(of):
        members.setdefault(state, []).append(i)
    return members, of


def need(job: JobView) -> tuple[int, int]:
    """(bound, least value) a node must have for ``job`` to possibly fit there."""
    request: Resources = job.request
    if request.mig_profile:
        return MIG, 1
    if request.timeslice:
        return TIMESLICE, 1
    if request.executor:
        # No bound counts executor seats; the CPU bound still holds (the framework checks the rest).
        return CPU, job.cpu_milli
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
        # Nodes grouped by state (see node_state), so that a round can score one node per state
        # without keying every node again. Built on first use and then kept up to date for the
        # nodes that changed since, so policies that never ask (first fit) pay nothing.
        self._states: list[int] = []
        self._members: dict[int, list[int]] = {}
        # The state behind each group's int, and back, while some node is in that state.
        self._ids: dict[NodeState, int] = {}
        self._keys: dict[int, NodeState] = {}
        self._next = 0
        self._stale: set[int] = set()

    def update(self, position: int, node: NodeView) -> None:
        """Node ``position`` changed to ``node`` (the caller re-points ``nodes`` afterwards)."""
        if self._states:
            self._stale.add(position)
        for key, value in enumerate(bounds(node)):
            tree = self._trees[key]
            i = self._size + position
            if tree[i] == value:
                continue
            tree[i] = value
            i >>= 1
            while i:
                left, right = tree[2 * i], tree[2 * i + 1]
                best = left if left >= right else right
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

    def groups(self) -> tuple[dict[int, list[int]], list[int]]:
        """As :func:`group_states` for ``nodes``: positions by state, and each position's state."""
        if not self._states:
            self._members, self._states = group_states(self.nodes)
            self._keys = {state: node_state(self.nodes[group[0]]) for state, group in self._members.items()}
            self._ids = {key: state for state, key in self._keys.items()}
            self._next = len(self._keys)
        for position in sorted(self._stale):
            key = node_state(self.nodes[position])
            state = self._ids.get(key)
            old = self._states[position]
            if state == old:
                continue
            group = self._members[old]
            group.remove(position)
            if not group:
                # Forget states no node is in, or a long run would keep every state it ever saw.
                del self._members[old]
                del self._ids[self._keys.pop(old)]
            if state is None:
                state = self._ids[key] = self._next
                self._keys[state] = key
                self._next += 1
            insort(self._members.setdefault(state, []), position)
            self._states[position] = state
        self._stale.clear()
        return self._members, self._states

    def bound(self, key: int, position: int) -> int:
        """Bound ``key`` of the node at ``position``."""
        return self._trees[key][self._size + position]

    def candidates(self, job: JobView) -> Iterator[int]:
        """Positions of nodes that may host ``job``, in node order."""
        key, least = need(job)
        position = self.first(key, least, 0)
        while position < self.n:
            yield position
            position = self.first(key, least, position + 1)
