"""The evaluator scores good candidates against the best human policy and gives bad ones zero."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gpuos.agents import evaluate
from gpuos.agents.evaluator import compute_baselines, evaluate_source, evaluate_stage1
from gpuos.agents.masking import Secret
from gpuos.agents.sandbox import CandidateRejected, check_source

QUICK = ["synthetic:bursty?n=60&seed=5|gpus=1x8xA100-80GB|load=1.5"]
CALM = ["synthetic:bursty?n=40&seed=7|gpus=2x8xA100-80GB|load=0.4"]
# One secret for the candidates and the baselines they are compared with here, as in a search.
SECRET = Secret.fresh()

HEADER = """
from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler import GpuView, JobView, NodeView, Policy, Snapshot
"""


def candidate(body: str, imports: str = "") -> str:
    return HEADER + textwrap.dedent(imports) + "\n\nclass Candidate(Policy):\n    name = 'candidate'\n" + textwrap.indent(
        textwrap.dedent(body), "    "
    )


def score(source: str, traces: list[str] = QUICK, **kwargs: object) -> dict[str, object]:
    return evaluate_source(source, traces=traces, secret=SECRET, **kwargs)  # type: ignore[arg-type]


SHORTEST_ESTIMATE = candidate(
    """
    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        return sorted(pending, key=lambda j: (j.estimated_seconds, j.submitted_at, j.id))
    """
)


def test_a_valid_candidate_scores_its_ratio_to_the_best_human_policy() -> None:
    result = score(SHORTEST_ESTIMATE)
    assert result["valid"] == 1.0 and "error" not in result
    base = compute_baselines(QUICK, secret=SECRET)
    _, best = base.best(QUICK[0], "mean_jct")
    assert result[f"{QUICK[0]}/score"] == pytest.approx(best / result[f"{QUICK[0]}/mean_jct"])
    assert result["combined_score"] == pytest.approx(result["primary_score"] * result["guard_penalty"])


def test_fifo_as_a_candidate_scores_what_fifo_measured_as_a_baseline() -> None:
    result = score(candidate("pass"))
    fifo = compute_baselines(QUICK, secret=SECRET).runs[QUICK[0]]["fifo"]
    assert result[f"{QUICK[0]}/mean_jct"] == pytest.approx(fifo.metrics["mean_jct"])


def test_the_objective_chooses_the_metric_of_the_ratio() -> None:
    result = score(SHORTEST_ESTIMATE, objective="makespan")
    _, best = compute_baselines(QUICK, "makespan", secret=SECRET).best(QUICK[0], "makespan")
    assert result[f"{QUICK[0]}/score"] == pytest.approx(best / result[f"{QUICK[0]}/makespan"])


def test_stage1_takes_under_a_second_from_a_file(tmp_path: Path) -> None:
    import time

    path = tmp_path / "candidate.py"
    path.write_text(SHORTEST_ESTIMATE)
    import tempfile

    cache = Path(tempfile.gettempdir()) / "gpuos-adrs-baselines"
    compute_baselines(["synthetic:bursty?n=60&seed=5|gpus=1x8xA100-80GB|load=1.5"], secret=Secret.load_or_create(cache))
    started = time.perf_counter()
    result = evaluate_stage1(path)
    assert time.perf_counter() - started < 1.0
    assert result["valid"] == 1.0


def test_config_file_sets_objective_and_traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "candidate.py"
    path.write_text(SHORTEST_ESTIMATE)
    config = tmp_path / "adrs.json"
    config.write_text(f'{{"objective": "makespan", "traces": ["{CALM[0]}"], "cache_dir": "{tmp_path / "cache"}"}}')
    monkeypatch.setenv("GPUOS_ADRS_CONFIG", str(config))
    result = evaluate(path)
    assert f"{CALM[0]}/score" in result
    _, best = compute_baselines(CALM, "makespan", secret=Secret.load_or_create(tmp_path / "cache")).best(CALM[0], "makespan")
    assert result[f"{CALM[0]}/score"] == pytest.approx(best / result[f"{CALM[0]}/makespan"])


# -- reward hacks and failures score zero -----------------------------------------------------


def assert_zero(result: dict[str, object], *words: str) -> None:
    assert result["combined_score"] == 0.0 and result["valid"] == 0.0
    error = str(result["error"])
    for word in words:
        assert word in error, error


def test_a_crashing_candidate_scores_zero_with_its_traceback() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            return sorted(pending, key=lambda j: 1 / 0)
        """
    )
    assert_zero(score(bad), "crash", "ZeroDivisionError")


def test_importing_the_simulator_to_read_true_durations_is_rejected() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            truth = {j.id: j.duration for j in load_trace("alibaba-gpu-2023").jobs}
            return sorted(pending, key=lambda j: truth.get(j.id, 0))
        """,
        imports="from gpuos.scheduler.sim import load_trace",
    )
    assert_zero(score(bad), "forbidden", "gpuos.scheduler.sim")


def test_reaching_the_simulator_through_the_public_package_fails() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            truth = {j.id: j.duration for j in scheduler.sim.load_trace("alibaba-gpu-2023").jobs}
            return sorted(pending, key=lambda j: truth.get(j.id, 0))
        """,
        imports="import gpuos.scheduler as scheduler",
    )
    assert_zero(score(bad), "crash", "has no attribute 'sim'")


@pytest.mark.parametrize(
    "snippet, rule",
    [
        ("x = snap.__class__", "dunder attribute"),
        ("x = getattr(snap, 'index')", "builtin 'getattr'"),
        ("x = ZeroDivisionError().__traceback__", "dunder attribute"),
        ("x = (i for i in ()).gi_frame", "attribute 'gi_frame'"),
        ("x = '{0.x}'.format(snap)", "attribute 'format'"),
        ("x = open('/etc/passwd').read()", "builtin 'open'"),
        ("import os", "import of 'os'"),
        ("import gpuos.agents.evaluator", "import of 'gpuos.agents.evaluator'"),
        ("x = snap.index._trees", "private attribute"),
    ],
)
def test_escape_hatches_towards_the_truth_are_rejected_before_running(snippet: str, rule: str) -> None:
    with pytest.raises(CandidateRejected, match=rule):
        check_source(snippet)


def test_a_candidate_that_reads_durations_through_frames_scores_zero() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            try:
                raise RuntimeError
            except RuntimeError as exc:
                sim = exc.__traceback__.tb_frame.f_back.f_back.f_locals["self"]
            return sorted(pending, key=lambda j: sim.records[j.id].job.duration)
        """
    )
    assert_zero(score(bad), "forbidden", "is not allowed")


def test_a_candidate_that_never_starts_big_jobs_is_starvation() -> None:
    bad = candidate(
        """
        def fits(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> bool:
            return job.request.gpus < 4
        """
    )
    assert_zero(score(bad), "starvation", "never started")


def test_a_candidate_that_holds_one_job_back_until_the_end_is_starvation() -> None:
    bad = candidate(
        """
        def fits(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> bool:
            return job.submitted_at > 0 or snap.now > 14000  # the first arrival waits (ids are salted)
        """
    )
    assert_zero(score(bad, traces=CALM), "starvation")


def test_placing_a_job_twice_is_caught_as_an_invalid_decision() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            return [*pending, *pending]
        """
    )
    assert_zero(score(bad), "invalid", "not pending")


def test_shrinking_a_jobs_request_to_over_commit_is_caught() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            return [replace(j, request=replace(j.request, gpus=1, gpu_milli=100)) for j in pending]
        """,
        imports="from dataclasses import replace",
    )
    assert_zero(score(bad), "invalid")


def test_monkeypatching_the_capacity_check_is_rejected() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            GpuView.idle = True
            return list(pending)
        """
    )
    assert_zero(score(bad), "forbidden", "monkeypatching")


def test_a_hanging_candidate_is_killed_at_the_timeout() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            while True:
                pass
        """
    )
    assert_zero(score(bad, timeout=2.0), "timed out after 2 s")


def test_a_candidate_that_allocates_too_much_memory_scores_zero() -> None:
    bad = candidate(
        """
        def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
            self.hoard = bytearray(4 << 30)
            return list(pending)
        """
    )
    assert_zero(score(bad, memory=768 << 20), "memory limit")


def test_a_file_without_a_policy_is_rejected() -> None:
    assert_zero(score("x = 1\n"), "exactly one Policy subclass")


def test_the_view_a_policy_gets_carries_no_true_duration() -> None:
    import dataclasses

    from gpuos.agents.evaluator import load_trace_cached
    from gpuos.scheduler import JobView, get_policy
    from gpuos.scheduler.sim.engine import Simulator

    assert not {"duration", "remaining", "finish", "slo"} & {f.name for f in dataclasses.fields(JobView)}
    trace = load_trace_cached(QUICK[0])
    sim = Simulator(trace, get_policy("fifo"))
    job = trace.jobs[0]
    view = sim._pending_view(sim.records[job.id], 0.0)
    assert job.duration not in {v for v in dataclasses.astuple(view) if isinstance(v, float)}


def test_the_network_is_closed_inside_the_evaluation_process() -> None:
    import subprocess
    import sys

    code = ("from gpuos.agents.sandbox import _block_network\n_block_network()\nimport socket\n"
            "socket.create_connection(('127.0.0.1', 9))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "network access is not allowed" in done.stderr


def test_baselines_cached_on_disk_are_reused_without_simulating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuos.agents import evaluator

    monkeypatch.setattr(evaluator, "_BASELINES", {})
    first = compute_baselines(CALM, policies=["fifo", "sjf"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    monkeypatch.setattr(evaluator, "_BASELINES", {})

    def no_simulation(*args: object) -> None:
        raise AssertionError("simulated although the baseline was cached")

    monkeypatch.setattr(evaluator, "simulate", no_simulation)
    again = compute_baselines(CALM, policies=["fifo", "sjf"], cache_dir=tmp_path)
    assert again.runs == first.runs
