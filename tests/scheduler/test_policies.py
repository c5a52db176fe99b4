"""Each policy's defining behaviour on a hand-made scenario."""

from __future__ import annotations

from gpuos.jobs import Resources
from gpuos.scheduler import Place, Preempt, get_policy, schedule
from gpuos.scheduler.fragmentation import Fragmentation, TaskClass
from gpuos.scheduler.policies.drf import capacity, dominant, usage
from gpuos.scheduler.policies.fgd import Fgd
from gpuos.scheduler.policies.tiresias import Tiresias

from .helpers import job, node, place, snap


def placed(decisions: list) -> dict[str, Place]:
    return {d.job_id: d for d in decisions if isinstance(d, Place)}


def test_sjf_orders_by_user_estimate_not_arrival() -> None:
    jobs = [job("long", estimated_seconds=900, submitted_at=0), job("short", estimated_seconds=10, submitted_at=5),
            job("unknown", submitted_at=1)]
    order = [j.id for j in get_policy("sjf").order(jobs, snap([], jobs))]
    assert order == ["short", "long", "unknown"]


def test_sjf_starts_the_shortest_estimate_when_one_gpu_is_free() -> None:
    jobs = [job("long", estimated_seconds=900), job("short", estimated_seconds=10, submitted_at=5)]
    assert list(placed(schedule(snap([node("a", 1)], jobs), get_policy("sjf")))) == ["short"]


def test_srtf_preempts_a_job_with_much_more_estimated_time_left() -> None:
    n, running = place(node("a", 1), job("big", estimated_seconds=10_000, service_rate=1.0))
    new = job("small", estimated_seconds=60, submitted_at=1)
    decisions = schedule(snap([n], [new], [running], now=100), get_policy("srtf"))
    assert decisions == [Preempt("big")]


def test_las_demotes_a_job_once_its_service_passes_the_threshold() -> None:
    policy = Tiresias()
    threshold = policy.thresholds[0]
    fresh = job("fresh", started_at=0.0, service_rate=1.0)
    assert policy.queue(fresh, now=threshold - 1) == 0
    assert policy.queue(fresh, now=threshold + 1) == 1


def test_las_preempts_a_demoted_job_for_a_new_one() -> None:
    policy = Tiresias()
    n, old = place(node("a", 1), job("old", service_rate=1.0))
    new = job("new", submitted_at=policy.thresholds[0] + 5)
    decisions = schedule(snap([n], [new], [old], now=policy.thresholds[0] + 10), policy)
    assert decisions == [Preempt("old")]


def test_las_does_not_preempt_a_demoted_job_before_its_lease_ends() -> None:
    policy = Tiresias()
    t = policy.thresholds[0] + 10
    n, old = place(node("a", 1), job("old", service_rate=1.0, attained_service=t - 60), now=t - 60)
    new = job("new", submitted_at=t - 5)
    assert old.attained(t) > policy.thresholds[0]
    assert schedule(snap([n], [new], [old], now=t), policy) == []
    later = t - 60 + policy.min_lease
    assert schedule(snap([n], [new], [old], now=later), policy) == [Preempt("old")]


def test_las_does_not_preempt_a_job_still_in_the_top_queue() -> None:
    policy = Tiresias()
    n, old = place(node("a", 1), job("old", service_rate=1.0))
    new = job("new", submitted_at=50)
    assert schedule(snap([n], [new], [old], now=100), policy) == []


def test_las_promotes_a_job_that_waited_too_long() -> None:
    policy = Tiresias()
    starved = job("starved", attained_service=policy.thresholds[-1] + 1, submitted_at=0)
    ran = starved.attained_service
    assert policy.queue(starved, now=ran + 1, waiting=True) == len(policy.thresholds)
    assert policy.queue(starved, now=ran * (policy.promote_knob + 2), waiting=True) == 0


def test_priority_preempts_best_effort_for_latency_sensitive() -> None:
    n, be = place(node("a", 1), job("be", qos="BE"))
    ls = job("ls", qos="LS", submitted_at=1)
    assert schedule(snap([n], [ls], [be]), get_policy("priority")) == [Preempt("be")]


def test_priority_never_preempts_latency_sensitive_work() -> None:
    n, other = place(node("a", 1), job("other-ls", qos="LS"))
    assert schedule(snap([n], [job("ls", qos="LS")], [other]), get_policy("priority")) == []


def test_priority_queues_latency_sensitive_first() -> None:
    jobs = [job("be", qos="BE", submitted_at=0), job("ls", qos="LS", submitted_at=9)]
    assert list(placed(schedule(snap([node("a", 1)], jobs), get_policy("priority")))) == ["ls"]


def test_drf_serves_the_tenant_with_the_least_dominant_share() -> None:
    n, held = place(node("a", 4), job("a1", tenant="A"))
    pending = [job("a2", tenant="A", submitted_at=0), job("b1", tenant="B", submitted_at=5)]
    order = [j.id for j in get_policy("drf").order(pending, snap([n], pending, [held]))]
    assert order == ["b1", "a2"]


def test_drf_equalises_dominant_shares() -> None:
    # Tenant A's jobs are CPU-heavy, B's GPU-heavy; 8 GPUs, 80 CPUs free.
    nodes = [node("a", 8, cpu=80_000)]
    pending = [job(f"a{i}", gpus=1, cpu_milli=10_000, tenant="A", submitted_at=i) for i in range(8)]
    pending += [job(f"b{i}", gpus=1, cpu_milli=1_000, tenant="B", submitted_at=i + 0.5) for i in range(8)]
    s = snap(nodes, pending)
    got = placed(schedule(s, get_policy("drf")))
    total = capacity(s)
    shares = {}
    for tenant in "AB":
        held = [0.0, 0.0, 0.0]
        for p in pending:
            if p.id in got and p.tenant == tenant:
                for k, v in enumerate(usage(p)):
                    held[k] += v
        shares[tenant] = dominant((held[0], held[1], held[2]), total)
    assert abs(shares["A"] - shares["B"]) <= 1 / 8 + 1e-9


def test_binpack_fills_the_used_node_and_spread_the_empty_one() -> None:
    busy, _ = place(node("busy", 4), job("x"))
    empty = node("empty", 4)
    new = job("new")
    assert placed(schedule(snap([empty, busy], [new]), get_policy("binpack")))["new"].node == "busy"
    assert placed(schedule(snap([busy, empty], [new]), get_policy("spread")))["new"].node == "empty"


def test_best_fit_takes_the_gpu_that_leaves_least_over() -> None:
    a, _ = place(node("a", 1), job("x", milli=300))
    b, _ = place(node("b", 1), job("y", milli=600))
    got = placed(schedule(snap([a, b], [job("new", milli=400)]), get_policy("best-fit")))
    assert got["new"].node == "b"


def test_fgd_picks_the_placement_that_minimises_expected_fragmentation() -> None:
    # Workload: half the tasks want a whole GPU, half want 0.5 GPU. Node "a" has one GPU with 0.5
    # free and one idle GPU; a 0.5 task on the half-used GPU keeps the idle one whole.
    workload = (TaskClass(1, 0, 0, (), 0.5), TaskClass(1, 500, 0, (), 0.5))
    a, _ = place(node("a", 2), job("x", milli=500))
    policy = Fgd(workload=workload)
    got = placed(schedule(snap([a], [job("new", milli=500)]), policy))
    assert got["new"].gpus == (0,)
    # And it is the minimum over every option by the measure itself.
    frag = Fragmentation(workload)
    assert frag.of("G2", (1000,), 1 << 40) < frag.of("G2", (500, 500), 1 << 40)


def test_fragmentation_counts_partial_gpus_as_useless_to_whole_gpu_tasks() -> None:
    frag = Fragmentation((TaskClass(1, 0, 0, (), 1.0),))
    assert frag.of("G2", (300, 1000), 0) == 300
    assert frag.of("G2", (300,), 0) == 300  # cannot run at all: everything free is a fragment


def test_gandiva_suspends_a_job_after_its_quantum_for_a_waiting_one() -> None:
    policy = get_policy("gandiva")
    n, old = place(node("a", 1), job("old"), now=0.0)
    waiting = job("new", submitted_at=1)
    assert schedule(snap([n], [waiting], [old], now=policy.quantum(waiting, snap([], [])) - 1), policy) == []
    assert schedule(snap([n], [waiting], [old], now=policy.quantum(waiting, snap([], [])) + 1), policy) == [Preempt("old")]


def test_gandiva_packs_a_share_onto_an_already_shared_gpu() -> None:
    shared, _ = place(node("a", 2), job("x", milli=500))
    got = placed(schedule(snap([shared], [job("new", milli=400)]), get_policy("gandiva")))
    assert got["new"].gpus == (0,)


def test_fifo_lets_a_small_job_backfill_past_a_blocked_head() -> None:
    jobs = [job("big", gpus=2, submitted_at=0), job("small", gpus=1, submitted_at=1)]
    assert list(placed(schedule(snap([node("a", 1)], jobs), get_policy("fifo")))) == ["small"]


def test_type_constraint_is_respected_by_every_policy() -> None:
    nodes = [node("t4", 2, model="T4"), node("v100", 2, model="V100M32")]
    picky = Resources(gpus=1, gpu_types=("V100M32",))
    from gpuos.scheduler import JobView, available

    for name in available():
        got = placed(schedule(snap(nodes, [JobView("p", picky)]), get_policy(name)))
        assert got["p"].node == "v100", name
