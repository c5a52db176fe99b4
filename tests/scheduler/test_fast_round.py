"""A round over a long queue takes the model's queue order and stops once nothing left can fit,
and decides exactly as the plain round that sorts the queue and visits every job.

The model keeps the waiting jobs sorted by (submitted_at, id) and counted by shape
(scheduler/state.py QueueOrder); the snapshot carries both (``pending_by_age``,
``pending_shapes``). A snapshot without them (built by hand, or read from the wire) is
scheduled the plain way, which is what the fast round is checked against.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuos.jobs import TIMESLICE, Resources
from gpuos.scheduler import GpuView, JobView, NodeView, Place, Policy, Share, Snapshot, get_policy, schedule
from gpuos.scheduler.registry import available
from gpuos.scheduler.sim.cluster import gpu_type
from gpuos.scheduler.snapshot import shape_of
from gpuos.scheduler.state import ClusterState, StateError
from gpuos.units import GiB

H100 = gpu_type("H100-80GB")
# A few shapes, so that a queue repeats them as a flood of submits or a trace does.
SHAPES = (
    Resources(gpus=1),
    Resources(gpus=2),
    Resources(gpus=4),
    Resources(gpus=1, gpu_milli=500),
    Resources(gpus=1, gpu_milli=250, memory_bytes=8 * GiB),
    Resources(gpus=1, gpu_milli=300, sharing=TIMESLICE),
    Resources(gpus=1, mig_profile="3g.40gb"),
    Resources(gpus=0),
)


class Strict(Policy):
    name = "strict"
    strict_order = True


class Turns(Policy):
    """Chooses time-slice turns for every fraction it may choose for (jobs never ruled out by shape)."""

    name = "turns"

    def share(self, job: JobView, gpu: GpuView, snap: Snapshot) -> Share:
        return Share.TIMESLICE


class Picky(Policy):
    """Keeps tenant t0 off GPU 0: of two alike jobs, one may find room that the other may not take."""

    name = "picky"

    def fits(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> bool:
        return job.tenant != "t0" or all(g.index != 0 for g in gpus)


class YoungestFirst(Policy):
    """Preempts the youngest running job for any job that does not fit."""

    name = "youngest-first"

    def victims(self, job: JobView, snap: Snapshot) -> list[str]:
        return [max(snap.running, key=lambda j: (j.started_at or 0.0, j.id)).id] if snap.running else []


def policies() -> list[Policy]:
    return [*(get_policy(name) for name in sorted(available())), Strict(), Turns(), Picky(), YoungestFirst()]


POLICIES = policies()


def plainly(policy: Policy) -> Policy:
    """``policy`` as a round must treat one that may preempt: every job visited, none passed over
    (its victims() answers as before, but the framework cannot know that it never preempts)."""

    class Plain(type(policy)):  # type: ignore[misc]
        def victims(self, job: JobView, snap: Snapshot):  # type: ignore[no-untyped-def]
            return super().victims(job, snap)

    twin = copy.copy(policy)
    twin.__class__ = Plain
    return twin


def waiting(i: int, shape: int, at: float, priority: int, cpu: int, prefix: str = "j") -> JobView:
    return JobView(f"{prefix}{i:04d}", SHAPES[shape], tenant=f"t{i % 3}", priority=priority, submitted_at=at,
                   estimated_seconds=float(10 * (i % 7)), cpu_milli=cpu)


jobs = st.lists(
    st.tuples(st.integers(0, len(SHAPES) - 1), st.sampled_from([0.0, 1.0, 2.0, 5.0]), st.integers(0, 3),
              st.sampled_from([0, 0, 4000])),
    max_size=40,
)


def model(nodes: int, gpus: int, cpus: int, running: list[tuple[int, float, int, int]],
          queue: list[tuple[int, float, int, int]]) -> ClusterState:
    """A cluster partly (or wholly) taken by ``running``, with ``queue`` waiting."""
    state = ClusterState([
        NodeView(f"n{k}", tuple(GpuView(i, H100.name, H100.memory, H100.memory, mig_profiles=H100.mig_profiles)
                                for i in range(gpus)), cpu_milli_free=cpus)
        for k in range(nodes)
    ])
    for i, (shape, at, priority, cpu) in enumerate(running):
        state.submit(waiting(i, shape, at - 10.0, priority, cpu, prefix="r"))
    for decision in schedule(state.snapshot(0.0), get_policy("fifo")):
        if isinstance(decision, Place):
            state.place(decision, 0.0)
    for i, (shape, at, priority, cpu) in enumerate(queue):
        state.submit(waiting(i, shape, at, priority, cpu))
    return state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=st.integers(1, 3), gpus=st.sampled_from([1, 2, 4, 8]), cpus=st.sampled_from([8000, 1 << 40]),
       running=jobs, queue=jobs)
def test_every_policy_decides_alike_with_and_without_the_models_queue_order(
    nodes: int, gpus: int, cpus: int, running: list[tuple[int, float, int, int]],
    queue: list[tuple[int, float, int, int]],
) -> None:
    fast = model(nodes, gpus, cpus, running, queue).snapshot(3.0)
    assert fast.pending_by_age is not None and fast.pending_shapes is not None
    unsorted = replace(fast, pending_by_age=None, pending_shapes=None)
    plain = replace(unsorted, index=None)
    for policy in POLICIES:
        decided = schedule(fast, policy)
        assert decided == schedule(unsorted, policy), policy.name
        assert decided == schedule(plain, plainly(policy)), policy.name


class CountingTuple(tuple):  # type: ignore[type-arg]
    """A tuple that counts the items a round takes from it."""

    taken = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for item in super().__iter__():
            self.taken += 1
            yield item


def test_a_round_over_a_queue_that_cannot_fit_anywhere_looks_at_one_job() -> None:
    state = model(1, 2, 1 << 40, [(0, 0.0, 0, 0), (0, 0.0, 0, 0)], [(0, float(i), 0, 0) for i in range(1000)])
    snap = state.snapshot(1.0)
    assert snap.pending_by_age is not None
    counted = CountingTuple(snap.pending_by_age)
    fast = replace(snap, pending_by_age=counted)
    fifo = get_policy("fifo")
    assert schedule(fast, fifo) == [] == schedule(replace(snap, pending_by_age=None), plainly(fifo))
    assert counted.taken == 1


def test_a_round_stops_only_once_every_shape_still_waiting_is_ruled_out() -> None:
    # Two whole GPUs, one held: the 2-GPU jobs are ruled out at once, a 1-GPU job behind them still runs.
    state = model(1, 2, 1 << 40, [(0, 0.0, 0, 0)], [(1, float(i), 0, 0) for i in range(50)] + [(0, 99.0, 0, 0)])
    decided = schedule(state.snapshot(1.0), get_policy("fifo"))
    assert [(d.job_id, d.gpus) for d in decided if isinstance(d, Place)] == [("j0050", (1,))]


def test_the_default_order_is_the_models_order_and_the_sort_alike() -> None:
    state = model(1, 1, 1 << 40, [], [(i % 3, float(5 - i % 4), 0, 0) for i in range(30)])
    snap = state.snapshot(0.0)
    policy = Policy()
    expected = sorted(snap.pending, key=lambda j: (j.submitted_at, j.id))
    assert list(snap.pending_by_age or ()) == expected
    assert policy.order(snap.pending, snap) == expected
    part = snap.pending[:10]  # not the queue itself: sorted as before
    assert policy.order(part, snap) == sorted(part, key=lambda j: (j.submitted_at, j.id))


ops = st.lists(st.tuples(st.sampled_from(["submit", "change", "withdraw", "place", "requeue", "finish"]),
                         st.integers(0, 30), st.integers(0, len(SHAPES) - 1), st.sampled_from([0.0, 1.0, 2.0])),
               max_size=60)


@settings(max_examples=80, deadline=None)
@given(ops=ops)
def test_the_models_queue_order_and_counts_follow_every_change_and_old_snapshots_keep_theirs(
    ops: list[tuple[str, int, int, float]],
) -> None:
    state = model(1, 4, 1 << 40, [], [])
    kept: list[tuple[Snapshot, tuple[JobView, ...], list[JobView], dict[object, int]]] = []
    for step, (op, i, shape, at) in enumerate(ops):
        job_id = f"j{i:04d}"
        if op == "submit" and job_id not in state.pending and job_id not in state.running:
            state.submit(waiting(i, shape, at, 1, 0))
        elif op == "change" and job_id in state.pending:
            state.submit(replace(state.pending[job_id], priority=step, submitted_at=at))
        elif op == "withdraw":
            state.withdraw(job_id)
        elif op == "place" and job_id in state.pending:
            one = replace(state.snapshot(float(step)), pending=(state.pending[job_id],), pending_by_age=None,
                          pending_shapes=None)
            for decision in schedule(one, get_policy("fifo")):
                if isinstance(decision, Place):
                    state.place(decision, float(step))
        elif op in ("requeue", "finish") and job_id in state.running:
            (state.requeue if op == "requeue" else state.finish)(job_id, float(step))
        snap = state.snapshot(float(step))
        assert snap.pending == tuple(state.pending.values())
        assert snap.pending_by_age == tuple(sorted(snap.pending, key=lambda j: (j.submitted_at, j.id)))
        assert dict(snap.pending_shapes or {}) == Counter(shape_of(j) for j in snap.pending)
        kept.append((snap, snap.pending, list(snap.pending_by_age), dict(snap.pending_shapes or {})))
    for snap, pending, by_age, shapes in kept:
        assert snap.pending == pending
        assert list(snap.pending_by_age or ()) == by_age
        assert dict(snap.pending_shapes or {}) == shapes


def test_a_placement_the_model_refuses_leaves_the_queue_order_as_it_was() -> None:
    state = model(1, 1, 1 << 40, [(0, 0.0, 0, 0)], [(0, 1.0, 0, 0)])
    before = state.snapshot(1.0)
    with pytest.raises(StateError):
        state.place(Place("j0000", "n0", (0,), 1000, H100.memory), 1.0)
    after = state.snapshot(1.0)
    assert after.pending_by_age == before.pending_by_age and after.pending_shapes == before.pending_shapes
