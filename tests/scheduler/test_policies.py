"""Each policy's defining behaviour on a hand-made scenario."""

from __future__ import annotations

from dataclasses import replace

from gpuos.jobs import Resources
from gpuos.scheduler import Place, Preempt, get_policy, schedule
from gpuos.scheduler.fragmentation import Fragmentation, TaskClass
from gpuos.scheduler.policies.drf import capacity, dominant, usage
from gpuos.scheduler.policies.fgd import Fgd
from gpuos.scheduler.policies.tiresias import Tiresias
from gpuos.scheduler.policies.tiresias_gittins import TiresiasGittins
from gpuos.scheduler.snapshot import JobView, Stint

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


def test_las_preempts_a_demoted_job_without_a_lease() -> None:
    # The reference (SymbioticLab/Tiresias) leases nothing: a job ranked ahead takes the GPUs now.
    policy = Tiresias()
    t = policy.thresholds[0] + 10
    n, old = place(node("a", 1), job("old", service_rate=1.0, attained_service=t - 60), now=t - 60)
    new = job("new", submitted_at=t - 5)
    assert schedule(snap([n], [new], [old], now=t), policy) == [Preempt("old")]


def test_las_does_not_preempt_a_job_still_in_the_top_queue() -> None:
    policy = Tiresias()
    n, old = place(node("a", 1), job("old", service_rate=1.0))
    new = job("new", submitted_at=50)
    assert schedule(snap([n], [new], [old], now=100), policy) == []


def ran(id: str, start: float, stop: float, **kw: object) -> JobView:
    """A waiting job that ran alone on one GPU from ``start`` to ``stop`` and was preempted."""
    return job(id, attained_service=stop - start, stints=(Stint(start, stop, stop - start),), **kw)


def test_las_promotes_a_job_once_its_wait_since_it_ran_reaches_the_knob_times_its_run() -> None:
    policy = Tiresias()
    run = 8000.0  # past the last threshold: the bottom queue
    starved = ran("starved", 0.0, run)
    due = run + policy.promote_knob * run
    assert policy.queue(starved, now=due - 1) == len(policy.thresholds)
    assert policy.queue(starved, now=due + 1) == 0


def test_las_does_not_count_the_wait_before_the_first_run_towards_promotion() -> None:
    policy = Tiresias()
    run = 8000.0
    # It waited 10000 s for its first run: the old rule (all time not running) would promote it.
    late = ran("late", 10_000.0, 10_000.0 + run, submitted_at=0.0)
    assert policy.queue(late, now=10_000.0 + run + policy.promote_knob * run - 1) == len(policy.thresholds)


def test_las_restarts_the_service_count_when_it_promotes_a_job() -> None:
    policy = Tiresias()
    run = 8000.0
    promoted_at = run + policy.promote_knob * run
    restart = promoted_at + 100
    again = replace(ran("again", 0.0, run), started_at=restart, service_rate=1.0, service_since=restart)
    # 9000 GPU-seconds in all, but only 1000 since the promotion: still the top queue.
    assert policy.queue(again, now=restart + 1000) == 0
    assert policy.queue(again, now=restart + policy.thresholds[0] + 1) == 1


def test_las_serves_a_queue_in_the_order_jobs_entered_it() -> None:
    policy = Tiresias()
    # "early" arrived first but entered the second queue later than "late" did.
    early = ran("early", 5000.0, 5000.0 + policy.thresholds[0] + 100, submitted_at=0.0)
    late = ran("late", 1000.0, 1000.0 + policy.thresholds[0] + 100, submitted_at=500.0)
    now = 9000.0
    s = snap([], [early, late], now=now)
    assert [policy.queue(j, now) for j in (early, late)] == [1, 1]
    assert [j.id for j in policy.order([early, late], s)] == ["late", "early"]


def test_tiresias_gittins_runs_first_the_job_likelier_to_finish_soon_within_a_queue() -> None:
    policy = TiresiasGittins()
    # Sizes (estimates, GPU-seconds): half finish at 4500, half run to 50000.
    sizes = [job(f"f{i}", estimated_seconds=4500.0 if i % 2 else 50_000.0, submitted_at=9000.0) for i in range(8)]
    near = ran("near", 100.0, 4100.0, submitted_at=50.0, estimated_seconds=4500.0)
    far = ran("far", 0.0, 3300.0, submitted_at=0.0, estimated_seconds=50_000.0)
    now = 4200.0
    pending = [far, near, *sizes]
    s = snap([], pending, now=now)
    assert policy.queue(near, now) == policy.queue(far, now) == 1
    ordered = [j.id for j in policy.order(pending, s) if j.id in ("near", "far")]
    assert ordered == ["near", "far"]
    assert [j.id for j in Tiresias().order([far, near], s)] == ["far", "near"]


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


def test_a_combined_policy_orders_like_its_order_policy_and_places_like_its_placement() -> None:
    combo = get_policy("srtf+bestfit")
    jobs = [job("long", estimated_seconds=900, submitted_at=0), job("short", estimated_seconds=10, submitted_at=5)]
    s = snap([node("a", 2)], jobs)
    assert [j.id for j in combo.order(jobs, s)] == [j.id for j in get_policy("srtf").order(jobs, s)]
    # best-fit: the half-used node over the empty one.
    n_used, _ = place(node("used", 2), job("x"))
    one = [job("one")]
    got = placed(schedule(snap([node("empty", 2), n_used], one), combo))
    assert got["one"].node == "used"
    assert combo.provenance.startswith("SRTF")


def test_giving_a_combined_fgd_policy_its_workload_keeps_its_queue_order() -> None:
    from gpuos.scheduler.policies.fgd import given_workload
    from gpuos.scheduler.policies.srtf import ShortestRemainingTimeFirst

    policy = given_workload(get_policy("srtf+fgd"), [TaskClass(1, 0, 0, (), 1.0)])
    assert isinstance(policy, ShortestRemainingTimeFirst) and policy.name == "srtf+fgd"
