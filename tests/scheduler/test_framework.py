"""The framework: the indexed fast path decides exactly as the plain scan, and replays."""

from __future__ import annotations

import random
from dataclasses import replace

from gpuos.jobs import Resources
from gpuos.scheduler import Place, Preempt, Snapshot, available, get_policy, schedule
from gpuos.scheduler.framework import replay_decisions
from gpuos.scheduler.index import NodeIndex
from gpuos.scheduler.policies.tiresias import Tiresias
from gpuos.scheduler.sim import load_trace, run_simulation
from gpuos.scheduler.sim.engine import Simulator

from .helpers import job, node, place, snap


def _random_snapshot(rng: random.Random) -> Snapshot:
    nodes = []
    running = []
    for n in range(12):
        current = node(f"n{n}", rng.choice((1, 2, 4, 8)), model=rng.choice(("G2", "T4")))
        for k in range(rng.randrange(6)):
            j = job(f"r{n}-{k}", milli=rng.choice((0, 200, 500, 700)), gpus=1)
            try:
                current, view = place(current, j)
            except StopIteration:
                continue
            running.append(view)
        nodes.append(current)
    pending = [
        job(f"p{i}", gpus=rng.choice((0, 1, 2, 4)), milli=rng.choice((0, 0, 300, 600)), submitted_at=i,
            cpu_milli=rng.choice((0, 1000)), tenant=rng.choice("AB"), estimated_seconds=rng.random() * 100)
        for i in range(20)
    ]
    pending = [replace(p, request=Resources(gpus=1, gpu_milli=p.request.gpu_milli)) if p.request.gpu_milli else p
               for p in pending]
    return snap(nodes, pending, running, now=10.0)


def test_indexed_rounds_decide_exactly_as_the_plain_scan() -> None:
    rng = random.Random(7)
    for _ in range(30):
        plain = _random_snapshot(rng)
        indexed = replace(plain, index=NodeIndex(plain.nodes))
        indexed.index.nodes = indexed.nodes  # type: ignore[union-attr]
        for name in available():
            assert schedule(plain, get_policy(name)) == schedule(indexed, get_policy(name)), name


def test_an_index_for_other_nodes_is_ignored() -> None:
    s = snap([node("a", 1)], [job("j")])
    stale = NodeIndex([node("a", 0)])  # says nothing fits, but describes another tuple
    assert schedule(replace(s, index=stale), get_policy("fifo")) == schedule(s, get_policy("fifo"))


def test_a_policy_can_neither_reach_the_index_nor_edit_the_groups() -> None:
    """What a policy is handed is read-only: an evolved policy that edits the model's index or a
    group's view would change the round's rules in its own favour."""
    from gpuos.groups import Group, make_spec
    from gpuos.scheduler.state import ClusterState

    state = ClusterState([node("n", 2)])
    state.set_group(Group("t", make_spec("g", "first-success", 100), 0.0))
    state.submit(job("a", tenant="t", group="g"))
    seen: list[tuple[object, bool]] = []

    class Meddler(Tiresias):
        def order(self, jobs, snap):  # type: ignore[no-untyped-def]
            try:
                snap.groups.clear()  # type: ignore[attr-defined]
                edited = True
            except AttributeError:
                edited = False
            seen.append((snap.index, edited))
            return super().order(jobs, snap)

    taken = state.snapshot(0.0)
    assert taken.index is not None  # the model's snapshot carries its index; the policy's does not
    schedule(taken, Meddler())
    assert seen == [(None, False)] and ("t", "g") in taken.groups


def test_no_policy_can_place_on_a_full_gpu() -> None:
    full, _ = place(node("a", 1), job("x"))
    for name in available():
        decisions = schedule(snap([full], [job("y"), job("z", milli=100)]), get_policy(name))
        assert not any(isinstance(d, Place) for d in decisions), name


def test_replaying_recorded_snapshots_gives_the_recorded_decisions(data_dir) -> None:
    trace = load_trace(data_dir / "alibaba-gpu-2023" / "openb_pod_list_default.csv")
    recorded: list[tuple[Snapshot, list]] = []
    policy = get_policy("best-fit")

    class Recording(type(policy)):  # type: ignore[misc]
        def order(self, pending, s):  # noqa: ANN001, ANN202
            recorded.append((s, []))
            return super().order(pending, s)

    sim = Simulator(trace, Recording())
    import gpuos.scheduler.sim.engine as engine

    real = engine.schedule

    def spy(s, p):  # noqa: ANN001, ANN202
        out = real(s, p)
        recorded[-1] = (s, out)
        return out

    engine.schedule = spy  # type: ignore[assignment]
    try:
        sim.run()
    finally:
        engine.schedule = real  # type: ignore[assignment]
    assert len(recorded) > 100
    snaps = [s for s, _ in recorded]
    # Replay without the index (recorded tuples are stale for it) through the public function.
    assert replay_decisions(snaps, get_policy("best-fit")) == [d for _, d in recorded]


def test_simulation_is_deterministic_for_a_seed(data_dir) -> None:
    path = data_dir / "alibaba-gpu-2023" / "openb_pod_list_default.csv"
    a = run_simulation(path, "tiresias", seed=3)
    b = run_simulation(path, "tiresias", seed=3)
    assert [(r.first_start, r.finish) for r in a.outcome.records] == [(r.first_start, r.finish) for r in b.outcome.records]


def test_jobs_behind_a_preempting_job_do_not_take_the_node_it_is_freeing() -> None:
    # "big" needs the whole node; "old" (demoted) must make way. The free GPU that "small" could
    # use is part of what "big" is waiting for: taking it would leave big preempting forever.
    policy = Tiresias()
    n, old = place(node("a", 2), job("old", service_rate=1.0))
    t = policy.thresholds[0] + 10
    big = job("big", gpus=2, submitted_at=t - 5)
    small = job("small", submitted_at=t - 1, attained_service=policy.thresholds[0] + 1)
    decisions = schedule(snap([n], [big, small], [old], now=t), policy)
    assert decisions == [Preempt("old")]


def test_jobs_behind_a_preempting_job_still_use_other_nodes() -> None:
    policy = Tiresias()
    a, old = place(node("a", 2), job("old", service_rate=1.0))
    t = policy.thresholds[0] + 10
    big = job("big", gpus=2, submitted_at=t - 5)
    small = job("small", submitted_at=t - 1, attained_service=policy.thresholds[0] + 1)
    decisions = schedule(snap([a, node("b", 1)], [big, small], [old], now=t), policy)
    assert Preempt("old") in decisions
    assert [d.node for d in decisions if isinstance(d, Place)] == ["b"]
