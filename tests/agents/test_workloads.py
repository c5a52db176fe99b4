"""The held-out protocol and what candidates are shown: content-disjoint windows, masked ids,
secret estimate noise."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import random
import re
import stat
from pathlib import Path

import pytest

from gpuos.agents.masking import Secret, mask
from gpuos.agents.workloads import (
    ALIBABA_LISTS,
    CLUSTERS,
    HELD_OUT,
    TRAINING,
    WorkloadSpec,
    content_key,
    content_keys,
    family,
    load_workload,
    plan,
)
from gpuos.scheduler.sim import load_trace, parse_gpus
from gpuos.scheduler.sim.traces import ESTIMATE_SIGMA, trace_dir

DATA = Path(__file__).resolve().parents[1] / "data"
EXCERPT = DATA / "alibaba-gpu-2023" / "openb_pod_list_default.csv"
GENAI_EXCERPT = DATA / "alibaba-genai-2026" / "lora_request_trace.csv"
EXCERPT_WINDOW = f"{EXCERPT}|gpus=1x8xG2,1x4xT4|start=0.2|jobs=100|load=1.2"
SYNTHETIC_WINDOW = "synthetic:bursty?n=120&seed=4|gpus=1x8xA100-80GB|load=1.2"
FAMILIES = set(CLUSTERS)

needs_full_traces = pytest.mark.skipif(
    not all(
        (trace_dir() / "alibaba-gpu-2023" / f"openb_pod_list_{(t.split(':') + ['default'])[1]}.csv").exists()
        for t in ALIBABA_LISTS
    )
    or not (trace_dir() / "alibaba-genai-2026").exists(),
    reason="needs the full Alibaba and GenAI traces ($GPUOS_TRACES or ../shared/traces)",
)


def judged(job: object) -> tuple[object, ...]:
    """What the simulator and the metrics use of a job: everything but its id and estimate."""
    fields = dataclasses.asdict(job)  # type: ignore[call-overload]
    return tuple(v for k, v in fields.items() if k not in ("id", "estimate"))


def fingerprint(trace: object) -> str:
    jobs = trace.jobs  # type: ignore[attr-defined]
    return hashlib.sha256(
        repr([(j.id, j.arrival, j.duration, j.estimate) for j in jobs]).encode()
    ).hexdigest()[:16]


# --- the held-out protocol --------------------------------------------------------------------


@needs_full_traces
def test_training_and_held_out_windows_share_no_job_content_across_all_pod_lists() -> None:
    seen = frozenset().union(*(content_keys(spec) for spec in TRAINING))
    for spec in HELD_OUT:
        assert not content_keys(spec) & seen, spec


@needs_full_traces
def test_the_windows_are_what_the_documented_rule_chooses() -> None:
    assert plan() == (TRAINING, HELD_OUT)


@needs_full_traces
def test_every_pod_list_in_the_trace_folder_is_trained_on_and_held_out() -> None:
    on_disk = {
        p.stem.removeprefix("openb_pod_list_")
        for p in (trace_dir() / "alibaba-gpu-2023").glob("openb_pod_list_*.csv")
    }
    named = {(t.split(":") + ["default"])[1] for t in ALIBABA_LISTS}
    assert named == on_disk
    for specs in (TRAINING, HELD_OUT):
        assert {WorkloadSpec.parse(s).trace for s in specs} >= set(ALIBABA_LISTS)


def test_every_family_has_at_least_five_held_out_windows_and_is_trained_on() -> None:
    for fam in FAMILIES:
        assert sum(family(s) == fam for s in HELD_OUT) >= 5, fam
        assert any(family(s) == fam for s in TRAINING), fam
    assert {family(s) for s in TRAINING + HELD_OUT} == FAMILIES


def test_every_family_is_held_out_on_a_cluster_of_mixed_gpu_models() -> None:
    for fam in FAMILIES:
        models = [
            {g.name for n in parse_gpus(WorkloadSpec.parse(s).gpus) for g in n.gpus}
            for s in HELD_OUT
            if family(s) == fam
        ]
        assert any(len(m) > 1 for m in models), fam


def test_a_windows_content_keys_are_the_same_on_every_load_and_under_any_secret() -> None:
    keys = content_keys(EXCERPT_WINDOW)
    assert len(keys) > 90
    assert content_keys(EXCERPT_WINDOW) == keys
    secret = Secret.fresh()
    assert {content_key(j) for j in load_trace(EXCERPT, estimate_seed=secret.seed("x")).jobs} >= keys


def test_a_content_key_names_what_a_job_is_not_what_it_is_called() -> None:
    job = load_trace(EXCERPT).jobs[0]
    assert content_key(dataclasses.replace(job, id="renamed", estimate=1.0)) == content_key(job)
    assert content_key(dataclasses.replace(job, duration=job.duration + 1)) != content_key(job)
    assert content_key(dataclasses.replace(job, arrival=job.arrival + 1)) != content_key(job)
    assert content_key(dataclasses.replace(job, cpu_milli=job.cpu_milli + 1)) != content_key(job)


def test_a_windows_content_keys_use_the_original_arrival_not_the_shifted_one() -> None:
    original = {content_key(j) for j in load_trace(EXCERPT).jobs}
    assert content_keys(EXCERPT_WINDOW) <= original
    shifted = {content_key(j) for j in load_workload(EXCERPT_WINDOW).jobs}
    assert not shifted & content_keys(EXCERPT_WINDOW)


# --- secret estimate noise ---------------------------------------------------------------------


def test_a_plain_load_is_what_it_was_before_estimate_seeds() -> None:
    # Digests of (id, arrival, duration, estimate) taken with the loaders before estimate_seed.
    assert fingerprint(load_trace(EXCERPT)) == "6f10023e767d0410"
    assert fingerprint(load_trace("synthetic:bursty?n=200&seed=3")) == "adbffd5258309f46"
    assert fingerprint(load_trace("synthetic:llm-decode?n=200&seed=3")) == "353a7d0714488192"
    assert fingerprint(load_trace(EXCERPT, estimate_seed=None)) == "6f10023e767d0410"


@pytest.mark.parametrize(
    "name", [str(EXCERPT), "synthetic:bursty?n=200&seed=3", "synthetic:llm-decode?n=200&seed=3"]
)
def test_an_estimate_seed_changes_the_estimates_and_nothing_else(name: str) -> None:
    plain, secret = load_trace(name), load_trace(name, estimate_seed=12345)
    assert [j.id for j in plain.jobs] == [j.id for j in secret.jobs]
    assert [judged(j) for j in plain.jobs] == [judged(j) for j in secret.jobs]
    changed = sum(
        a.estimate != b.estimate for a, b in zip(plain.jobs, secret.jobs, strict=True) if a.duration > 0
    )
    assert changed == sum(j.duration > 0 for j in plain.jobs)


def test_genai_estimates_are_work_based_and_ignore_the_estimate_seed() -> None:
    assert load_trace(GENAI_EXCERPT).jobs == load_trace(GENAI_EXCERPT, estimate_seed=99).jobs


def test_replaying_the_public_noise_recovers_durations_only_without_a_secret() -> None:
    def replayed(trace: object) -> int:
        rng = random.Random(0)  # the loader's public seed, drawn row by row
        with EXCERPT.open() as f:
            names = [row["name"] for row in csv.DictReader(f)]
        truth = {j.id: j.duration for j in load_trace(EXCERPT).jobs}
        by_id = {j.id: j for j in trace.jobs}  # type: ignore[attr-defined]
        hits = 0
        for name in names:
            guess = by_id[name].estimate / math.exp(rng.gauss(0.0, ESTIMATE_SIGMA))
            hits += truth[name] > 0 and math.isclose(guess, truth[name], rel_tol=1e-9)
        return hits

    gpu_jobs = sum(j.duration > 0 for j in load_trace(EXCERPT).jobs)
    assert replayed(load_trace(EXCERPT)) == gpu_jobs
    assert replayed(load_trace(EXCERPT, estimate_seed=Secret.fresh().seed("estimates"))) == 0


# --- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [EXCERPT_WINDOW, SYNTHETIC_WINDOW])
def test_masking_changes_ids_and_estimates_but_not_what_the_simulator_judges(spec: str) -> None:
    plain, masked = load_workload(spec), load_workload(spec, Secret.fresh())
    assert masked.name == plain.name and masked.nodes == plain.nodes
    assert [judged(j) for j in masked.jobs] == [judged(j) for j in plain.jobs]
    ids = [j.id for j in masked.jobs]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
    assert not set(ids) & {j.id for j in plain.jobs}
    assert all(
        a.estimate != b.estimate for a, b in zip(plain.jobs, masked.jobs, strict=True) if a.duration > 0
    )


def test_two_secrets_give_different_ids_and_estimates() -> None:
    a, b = load_workload(SYNTHETIC_WINDOW, Secret.fresh()), load_workload(SYNTHETIC_WINDOW, Secret.fresh())
    assert not {j.id for j in a.jobs} & {j.id for j in b.jobs}
    assert all(x.estimate != y.estimate for x, y in zip(a.jobs, b.jobs, strict=True))


def test_the_same_secret_gives_the_same_ids_and_estimates() -> None:
    secret = Secret.fresh()
    assert load_workload(EXCERPT_WINDOW, secret) == load_workload(EXCERPT_WINDOW, Secret(secret.key))


def test_a_job_id_masks_differently_in_another_trace() -> None:
    secret = Secret.fresh()
    trace = load_trace("synthetic:bursty?n=20&seed=1")
    other = dataclasses.replace(trace, name="another")
    assert not {j.id for j in mask(trace, secret).jobs} & {j.id for j in mask(other, secret).jobs}


def test_masking_refuses_a_trace_with_repeated_ids() -> None:
    trace = load_trace("synthetic:bursty?n=3&seed=1")
    twice = dataclasses.replace(trace, jobs=trace.jobs + trace.jobs[:1])
    with pytest.raises(ValueError, match="repeats job ids"):
        mask(twice, Secret.fresh())


# --- the secret itself ---------------------------------------------------------------------------


def test_a_secret_shows_only_its_digest() -> None:
    secret = Secret.fresh()
    for text in (repr(secret), str(secret), f"{secret}"):
        assert secret.key.hex() not in text and secret.digest in text
    assert re.fullmatch(r"[0-9a-f]{12}", secret.digest) and secret.digest not in secret.key.hex()


def test_a_stored_secret_is_private_and_the_same_when_loaded_again(tmp_path: Path) -> None:
    first = Secret.load_or_create(tmp_path / "run")
    files = list((tmp_path / "run").iterdir())
    assert len(files) == 1 and stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    assert Secret.load_or_create(tmp_path / "run") == first
    assert Secret.load_or_create(tmp_path / "other") != first


def test_a_secret_too_short_to_be_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Secret(b"short")
