"""The OpenEvolve engine, driven end to end by a scripted model (no network, no LLM).

OpenEvolve runs in its own process; the scripted model below is plugged in through the
engine's ``client_factory`` (OpenEvolve's ``init_client``), so that process imports this file.
It answers each prompt with a SEARCH/REPLACE edit of the parent program shown in the prompt,
the way a model would. Candidates are scored by gpuos's real evaluator.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openevolve", reason="openevolve is an optional dependency: pip install gpuos[adrs]")

from gpuos.agents import openevolve_engine as engine  # noqa: E402
from gpuos.scheduler import Policy  # noqa: E402

HERE = Path(__file__).resolve().parent
SHIM = engine.EVALUATOR_SHIM
OBJECTIVE = "mean_jct"
TRACES = ["synthetic:bursty?n=100&seed=3|gpus=2x8xA100-80GB|load=1.2"]
ITERATIONS = 6

# (SEARCH, REPLACE) pairs, in the order the scripted model tries them; each matches the
# starting program and the descendants that have not had it yet.
EDITS = [
    (  # aging term: waiting counts ten times as fast
        "        return remaining / (1.0 + waited / 600.0)",
        "        return remaining / (1.0 + waited / 60.0)",
    ),
    (  # order key: arrival first, the estimate only breaks ties (FIFO)
        "        return sorted(pending, key=lambda job: (self.urgency(job, snap), job.submitted_at, job.id))",
        "        return sorted(pending, key=lambda job: (job.submitted_at, self.urgency(job, snap), job.id))",
    ),
    (  # score term: spread over the freest node instead of packing
        "        return -(node_left * 2.0 * MILLI + gpu_left)",
        "        return node_left * 2.0 * MILLI + gpu_left",
    ),
]
CRASH = (  # a broken candidate: it crashes on the first job it ranks
    "        gpus = job.request.compute_milli / MILLI",
    "        gpus = job.request.compute_milli / 0",
)
AGING = re.compile(r"^( +return remaining / \(1\.0 \+ waited / )([0-9.]+)(\))$", re.MULTILINE)
OUTSIDE_EDIT = (
    '    name = "openevolve-candidate"',
    '    name = "renamed-outside-the-block"',
)


def current_program(prompt: str) -> str:
    """The parent program in an OpenEvolve prompt (its "# Current Program" section)."""
    return prompt.split("# Current Program\n```python\n", 1)[1].split("\n```", 1)[0]


def retune_aging(parent: str) -> tuple[str, str]:
    """Halve the aging constant (applies to every descendant of the starting program)."""
    match = AGING.search(parent)
    assert match, "the starting program's aging line changed; update the scripted edits"
    return match.group(0), f"{match.group(1)}{float(match.group(2)) / 2}{match.group(3)}"


def diff(*edits: tuple[str, str]) -> str:
    return "\n".join(f"<<<<<<< SEARCH\n{s}\n=======\n{r}\n>>>>>>> REPLACE" for s, r in edits)


class ScriptedModel:
    """Answers with the first of EDITS that applies to the parent in the prompt, else with a
    retuned aging constant, so every parent gets a child and every run the same edits."""

    def __init__(self, model_config: Any, careless: bool = False) -> None:
        self.model = "scripted"  # OpenEvolve logs vars(client)["model"]
        self.careless = careless

    async def generate(self, prompt: str, **kwargs: Any) -> str:
        return await self.generate_with_context("", [{"role": "user", "content": prompt}])

    async def generate_with_context(
        self, system_message: str, messages: list[dict[str, str]], **kwargs: Any
    ) -> str:
        prompt = messages[-1]["content"]
        parent = current_program(prompt)
        if self.careless:
            return diff(OUTSIDE_EDIT, CRASH if CRASH[0] in parent else retune_aging(parent))
        usable = [edit for edit in EDITS if edit[0] in parent] + [retune_aging(parent)]
        return diff(usable[0])


def scripted_model(model_config: Any) -> ScriptedModel:
    return ScriptedModel(model_config)


def careless_model(model_config: Any) -> ScriptedModel:
    """Renames the policy (a line outside the evolve block) in every answer, and breaks it."""
    return ScriptedModel(model_config, careless=True)


class SilentModel:
    """An endpoint that never answers."""

    def __init__(self) -> None:
        self.model = "silent"

    async def generate_with_context(
        self, system_message: str, messages: list[dict[str, str]], **kwargs: Any
    ) -> str:
        raise ConnectionError("connection refused")


def silent_model(model_config: Any) -> SilentModel:
    return SilentModel()


@pytest.fixture(scope="module")
def scripted_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
        yield


def search(
    run_dir: Path,
    iterations: int = ITERATIONS,
    factory: str = "scripted_model",
    resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    return engine.run(
        objective=OBJECTIVE,
        traces=TRACES,
        iterations=iterations,
        run_dir=run_dir,
        resume=resume,
        client_factory=f"{Path(__file__).stem}:{factory}",
        progress=progress,
    )


@dataclass
class Finished:
    run_dir: Path
    best: Path
    progress: list[tuple[int, int]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, scripted_env: None) -> Finished:
    """One scripted search shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("oe") / "run"
    calls: list[tuple[int, int]] = []
    best = search(run_dir, progress=lambda done, total: calls.append((done, total)))
    return Finished(run_dir, best, calls)


def programs(checkpoint: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((checkpoint / "programs").glob("*.json"))]


def final_programs(run_dir: Path) -> list[dict[str, Any]]:
    latest = engine.latest_checkpoint(run_dir)
    assert latest is not None
    return programs(latest[1])


def load_file(path: Path) -> Any:
    """The module in ``path``, loaded the way OpenEvolve loads its evaluator file."""
    spec = importlib.util.spec_from_file_location(f"loaded_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate_with_shim(path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Score ``path`` the way the search did: OpenEvolve's evaluator file, the run's settings."""
    monkeypatch.setenv(engine.CONFIG_ENV, str(run_dir / "adrs.json"))
    return load_file(SHIM).evaluate(str(path))


def test_search_returns_a_best_program_that_loads_as_a_policy(finished: Finished) -> None:
    run_dir, best = finished.run_dir, finished.best
    assert best == engine.output_dir(run_dir) / "best" / "best_program.py"
    assert isinstance(load_file(best).POLICY, Policy)


def test_best_score_is_the_evaluators_score_of_the_best_program(
    finished: Finished, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, best = finished.run_dir, finished.best
    saved = json.loads((best.parent / "best_program_info.json").read_text())["metrics"]
    fresh = evaluate_with_shim(best, run_dir, monkeypatch).metrics
    assert fresh["combined_score"] > 0
    assert saved["combined_score"] == pytest.approx(fresh["combined_score"], rel=1e-9)
    for name in json.loads((run_dir / "adrs.json").read_text())["feature_dimensions"]:
        assert saved[name] == pytest.approx(fresh[name], rel=1e-9)


def test_best_program_scores_at_least_as_well_as_every_other_candidate(finished: Finished) -> None:
    run_dir, best = finished.run_dir, finished.best
    scores = {p["code"]: p["metrics"].get("combined_score", 0.0) for p in final_programs(run_dir)}
    assert len(scores) > 2
    assert scores[best.read_text()] == max(scores.values())


def test_progress_counts_finished_iterations_up_to_the_total(finished: Finished) -> None:
    done = [d for d, _ in finished.progress]
    assert {total for _, total in finished.progress} == {ITERATIONS}
    assert done == sorted(done)
    assert done[-1] == ITERATIONS


def test_evaluation_artifacts_reach_the_next_prompt(finished: Finished) -> None:
    run_dir = finished.run_dir
    by_id = {p["id"]: p for p in final_programs(run_dir)}
    children = [p for p in by_id.values() if p.get("parent_id") in by_id and p.get("prompts")]
    assert children
    for child in children:
        parent_artifacts = json.loads(by_id[child["parent_id"]]["artifacts_json"])
        prompt = child["prompts"]["diff_user"]["user"]
        assert "per_trace" in parent_artifacts
        for key, text in parent_artifacts.items():
            assert f"### {key}\n```\n{text}\n```" in prompt


@pytest.fixture(scope="module")
def careless(tmp_path_factory: pytest.TempPathFactory, scripted_env: None) -> list[dict[str, Any]]:
    """Every program of a two-iteration search with :func:`careless_model`."""
    run_dir = tmp_path_factory.mktemp("oe") / "careless"
    search(run_dir, iterations=2, factory="careless_model")
    return final_programs(run_dir)


def test_a_crashing_candidate_scores_zero_with_its_error_as_an_artifact(
    careless: list[dict[str, Any]],
) -> None:
    broken = [p for p in careless if CRASH[1] in p["code"]]
    assert broken
    for program in broken:
        assert program["metrics"]["combined_score"] == 0.0
        assert "ZeroDivisionError" in program["artifacts_json"]


def test_edits_outside_the_evolve_block_are_reverted(careless: list[dict[str, Any]]) -> None:
    assert len(careless) == 3  # the starting program and two children
    assert all(OUTSIDE_EDIT[0] in p["code"] and OUTSIDE_EDIT[1] not in p["code"] for p in careless)


def test_resume_continues_from_the_latest_checkpoint(
    finished: Finished, tmp_path: Path, scripted_env: None
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished.run_dir, run_dir)
    before = {p["id"] for p in final_programs(run_dir)}
    search(run_dir, iterations=ITERATIONS + 2, resume=True)
    latest = engine.latest_checkpoint(run_dir)
    assert latest is not None and latest[0] == ITERATIONS + 2
    after = final_programs(run_dir)
    # Nothing of the first run was redone: every program from then is the one it saved, every
    # new one comes from the two new iterations, and the starting program was not added again.
    assert all(p["id"] in before for p in after if p["iteration_found"] <= ITERATIONS)
    new = {p["iteration_found"] for p in after if p["id"] not in before}
    assert new and new <= {ITERATIONS + 1, ITERATIONS + 2}
    assert sum(1 for p in after if p.get("parent_id") is None) == 1


def test_a_finished_search_is_not_rerun_on_resume(finished: Finished, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished.run_dir, run_dir)
    log = (run_dir / "engine.log").read_text()
    assert search(run_dir, resume=True) == engine.output_dir(run_dir) / "best" / "best_program.py"
    assert (run_dir / "engine.log").read_text() == log


def test_a_used_run_directory_is_refused_without_resume(finished: Finished) -> None:
    with pytest.raises(FileExistsError, match="resume"):
        search(finished.run_dir)


def test_a_model_that_never_answers_fails_the_search(tmp_path: Path, scripted_env: None) -> None:
    with pytest.raises(engine.EngineError, match="model never answered.*connection refused"):
        search(tmp_path / "run", iterations=1, factory="silent_model")


def test_text_becomes_artifacts_and_features_are_cross_trace_means() -> None:
    shim = load_file(SHIM)
    raw = {
        "combined_score": 1.5,
        "valid": 1.0,
        "a/fragmentation": 0.1,
        "b/fragmentation": 0.3,
        "artifacts": {"a": "mean_jct 10 s"},
    }
    result = shim.to_result(raw, ["complexity", "fragmentation", "p99_latency"])
    assert result.metrics["fragmentation"] == pytest.approx(0.2)
    assert result.metrics["p99_latency"] == 0.0
    assert "complexity" not in result.metrics
    assert result.artifacts == {"a": "mean_jct 10 s"}
    invalid = shim.to_result({"combined_score": 0.0, "valid": 0.0, "error": "over-commits GPU 0"})
    assert invalid.metrics == {"combined_score": 0.0, "valid": 0.0}
    assert invalid.artifacts == {"error": "over-commits GPU 0"}
    assert all(math.isfinite(v) for v in result.metrics.values())
