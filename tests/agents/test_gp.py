"""The GP engine: seeded, its genomes become readable policy files that load and register."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import pytest

from gpuos.agents import gp
from gpuos.agents.evaluator import compute_baselines
from gpuos.agents.objectives import simulate
from gpuos.agents.sandbox import check_source, load_policy_class
from gpuos.agents.search import evaluate_in_process
from gpuos.agents.workloads import load_workload
from gpuos.jobs import Resources
from gpuos.scheduler import GpuView, JobView, Policy, Share, Snapshot
from gpuos.scheduler.policies.tiresias import Tiresias
from gpuos.scheduler.sim import load_trace, run_simulation
from gpuos.scheduler.sim.cluster import gpu_type

QUICK = ["synthetic:bursty?n=60&seed=5|gpus=1x8xA100-80GB|load=1.5"]


def test_the_same_seed_gives_the_same_genomes() -> None:
    def draw(seed: int) -> list[gp.Genome]:
        rng = random.Random(seed)
        genomes = [gp.random_genome(rng) for _ in range(5)]
        return genomes + [gp.mutate(g, rng) for g in genomes] + [gp.crossover(genomes[0], genomes[1], rng)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_mutation_keeps_trees_within_the_depth_limit() -> None:
    rng = random.Random(1)
    g = gp.SEEDS[1]
    for _ in range(300):
        g = gp.mutate(g, rng)
        assert gp.depth(g.order) <= gp.MAX_DEPTH
        assert g.place is None or gp.depth(g.place) <= gp.MAX_DEPTH


def test_expressions_render_as_plain_python() -> None:
    tree = ("add", ("mul", "size", "estimate"), ("div", "age", ("neg", ("log", ("sub", "age", 2.0)))))
    assert gp.render_expr(tree) == "((size * estimate) + pdiv(age, -plog(age - 2.0)))"


def test_genomes_round_trip_through_json() -> None:
    rng = random.Random(2)
    for _ in range(20):
        g = gp.random_genome(rng)
        assert gp.Genome.from_json(g.to_json()) == g


@pytest.mark.parametrize("genome", gp.SEEDS, ids=lambda g: gp.render_expr(g.order))
def test_every_seed_renders_to_a_file_the_sandbox_accepts(genome: gp.Genome) -> None:
    source = gp.render(genome, "evolved-test")
    check_source(source)
    cls = load_policy_class(source)
    assert issubclass(cls, Policy) and cls.name == "evolved-test"
    assert cls.first_fit == (genome.place is None)


def test_a_rendered_genome_decides_like_the_rule_it_encodes() -> None:
    # order = estimate, first fit: the same decisions as the hand-written SJF.
    cls = load_policy_class(gp.render(gp.Genome("estimate"), "evolved-sjf"))
    trace = load_trace("synthetic:bursty?n=80&seed=2")
    evolved, sjf = run_simulation(trace, cls()), run_simulation(trace, "sjf")
    assert evolved.overall.jct_mean == pytest.approx(sjf.overall.jct_mean)


def test_the_srtf_seed_decides_like_the_srtf_policy() -> None:
    # remaining time, preempting a job with twice as much left: the hand-written srtf.
    cls = load_policy_class(gp.render(gp.Genome("remaining", preempt=True, margin=0.0, scale=2.0), "evolved-srtf"))
    trace = load_workload(QUICK[0])  # one node under load 1.5: SRTF preempts
    evolved, srtf = run_simulation(trace, cls()), run_simulation(trace, "srtf")
    assert evolved.overall.jct_mean == pytest.approx(srtf.overall.jct_mean)
    assert evolved.preemptions == srtf.preemptions > 0


def test_derived_terms_render_with_the_terms_they_need() -> None:
    source = gp.render(gp.Genome(("add", "work", "gpu_seconds")), "evolved-work")
    for line in ("size = ", "service = ", "estimate = ", "remaining = ", "work = size * remaining",
                 "gpu_seconds = size * estimate"):
        assert line in source
    load_policy_class(source)


def test_a_genome_saved_before_the_preemption_scale_existed_loads_with_scale_one() -> None:
    old = {"order": "remaining", "place": None, "preempt": True, "margin": 600.0, "period": 0.0}
    assert gp.Genome.from_json(old) == gp.Genome("remaining", preempt=True, margin=600.0)


def test_in_process_scoring_matches_the_baseline_for_a_fifo_genome() -> None:
    base = compute_baselines(QUICK)
    metrics = evaluate_in_process(gp.render(gp.Genome(("neg", "age")), "evolved-fifo"), QUICK, base, "mean_jct")
    _, best = base.best(QUICK[0], "mean_jct")
    assert metrics[f"{QUICK[0]}/score"] == pytest.approx(best / base.runs[QUICK[0]]["fifo"].metrics["mean_jct"])


def test_tuned_constants_render_as_a_subclass_of_the_human_policy() -> None:
    values = {"thresholds[0]": 50_000.0, "thresholds[1]": 900.0, "promote_knob": 3.0, "period": 30.0}
    cls = load_policy_class(gp.render_tuned(gp.TIRESIAS_SPACE, values, "tiresias-tuned"))
    assert issubclass(cls, Tiresias)
    assert cls.thresholds == (900.0, 50_000.0)  # kept ascending
    assert (cls.promote_knob, cls.period) == (3.0, 30.0)


def test_parameter_mutation_stays_in_bounds() -> None:
    rng = random.Random(5)
    values = dict(gp.TIRESIAS_SPACE.defaults)
    for _ in range(200):
        values = gp.TIRESIAS_SPACE.mutate(values, rng, scale=2.0)
        for p in gp.TIRESIAS_SPACE.params:
            assert p.low <= values[p.label] <= p.high


# -- the sharing choice and the quantum ----------------------------------------------------------

LLM = "synthetic:llm-decode?n=60&seed=5|gpus=1x8xH100-80GB"


def test_a_genome_saved_before_the_sharing_choice_existed_loads_as_mps_with_one_second_quanta() -> None:
    old = {"order": "remaining", "place": None, "preempt": False, "margin": 1.0, "period": 0.0, "scale": 1.0}
    g = gp.Genome.from_json(old)
    assert (g.share, g.quantum) == (None, 1.0)
    assert "def share" not in gp.render(g, "evolved-old") and "def quantum" not in gp.render(g, "evolved-old")


def test_genomes_with_a_sharing_rule_and_quantum_round_trip_through_json() -> None:
    g = gp.Genome("remaining", share=gp.MIG_WHERE_FREE, quantum=2.5)
    assert gp.Genome.from_json(g.to_json()) == g


def test_mutation_and_crossover_reach_the_sharing_rule_and_the_quantum_within_bounds() -> None:
    rng = random.Random(7)
    g = gp.SEEDS[0]
    shares, quanta = set(), set()
    for _ in range(400):
        g = gp.mutate(g, rng)
        assert g.share is None or gp.depth(g.share) <= gp.MAX_DEPTH
        assert gp.QUANTUM_MIN <= g.quantum <= gp.QUANTUM_MAX
        shares.add(g.share)
        quanta.add(g.quantum)
    assert len(shares) > 5 and len(quanta) > 5
    donor = gp.Genome("age", share=gp.MIG_WHERE_FREE, quantum=5.0)
    merged = {gp.crossover(gp.SEEDS[0], donor, random.Random(i)) for i in range(40)}
    assert any(m.share == gp.MIG_WHERE_FREE and m.quantum == 5.0 for m in merged)


def test_a_rendered_sharing_rule_and_quantum_load_in_the_sandbox_and_answer_as_the_rule_says() -> None:
    source = gp.render(gp.Genome(("neg", "age"), share=gp.MIG_WHERE_FREE, quantum=2.5), "evolved-share")
    check_source(source)
    policy = load_policy_class(source)()
    kind = gpu_type("H100-80GB")
    idle = GpuView(0, kind.name, kind.memory, kind.memory, mig_profiles=kind.mig_profiles)
    mps = replace(idle, sharing="mps", jobs=("x",), milli_free=500)
    job = JobView("j", Resources(gpu_milli=250))
    now = Snapshot(0.0, (), ())
    assert (policy.share(job, idle, now), policy.share(job, mps, now)) == (Share.MIG, Share.MPS)
    assert policy.quantum(job, now) == 2.5


def test_a_genome_choosing_mig_places_fractions_as_mig_instances_in_a_simulation() -> None:
    trace = load_workload(LLM)
    flexible = {j.id for j in trace.jobs if j.request.gpu_milli and not j.request.sharing}
    assert flexible
    base = load_policy_class(gp.render(gp.Genome(("neg", "age"), share=("add", 2.0, "size")), "evolved-mig"))
    sliced: set[str] = set()

    class Watching(base):  # type: ignore[valid-type,misc]
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            sliced.update(j.id for j in snap.running if j.request.mig_profile and j.id in flexible)
            return super().order(pending, snap)

    run = simulate(trace, Watching())
    assert run.finished == run.jobs == len(trace.jobs)
    assert len(sliced) > len(flexible) // 2
