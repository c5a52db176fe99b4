"""Search runs: a run directory that resumes, a report with held-out baselines, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpuos.agents.evaluator import Baselines, baseline_makers
from gpuos.agents.gp import SEEDS, Genome
from gpuos.agents.masking import SECRET_FILE
from gpuos.agents.objectives import TraceRun
from gpuos.agents.sandbox import load_policy_class
from gpuos.agents.search import RunConfig, search
from gpuos.cli.evolve import main

TRAIN = ["synthetic:bursty?n=60&seed=5|gpus=1x8xA100-80GB|load=1.5"]
HELD = ["synthetic:bursty?n=60&seed=9|gpus=1x8xA100-80GB|load=1.5"]


def config(iterations: int, engine: str = "gp") -> RunConfig:
    return RunConfig(objective="mean_jct", engine=engine, traces=TRAIN, held_out=HELD, iterations=iterations,
                     population=4, seed=3, jobs=1, name="evolved-test")


def test_a_search_writes_state_per_generation_and_a_report(tmp_path: Path) -> None:
    report = search(config(2), tmp_path, progress=False)
    for name in ("config.json", "baselines.json", "gen-0000.json", "gen-0001.json", "best.py", "report.json",
                 "report.md", "score.png", "heldout.png"):
        assert (tmp_path / name).is_file(), name
    assert [h["generation"] for h in report["history"]] == [0, 1]
    row = report["held_out"]["rows"][0]
    assert row["trace"] == HELD[0] and {"fifo", "single_best", "best_human", "candidate", "ceiling"} <= row.keys()
    assert "held-out" in (tmp_path / "report.md").read_text()


def test_the_report_judges_against_the_single_best_baseline_with_an_interval(tmp_path: Path) -> None:
    held = search(config(1), tmp_path, progress=False)["held_out"]
    assert held["single_best"] in baseline_makers("mean_jct")
    assert set(held["trivial"]) == {"fifo", "random-fit"}
    gain = held["gain"]
    assert gain["low"] <= gain["mean"] <= gain["high"]
    row = held["rows"][0]
    assert gain["mean"] == pytest.approx(row["single_best"] / row["candidate"] - 1)
    assert set(held["guards"]) == {"slo_miss", "latency_wait_p99", "slowdown", "idle_while_waiting", "fragmentation"}
    assert len(held["robustness"]) == 4
    text = (tmp_path / "report.md").read_text()
    assert f"gain vs the single best ({held['single_best']})" in text and "verdict:" in text


def _run(mean_jct: float) -> TraceRun:
    return TraceRun({"mean_jct": mean_jct}, jobs=10, finished=10, never_started=0, max_wait=0.0, wall_seconds=0.0)


def test_the_single_best_human_policy_is_best_over_all_traces_not_on_one() -> None:
    # "a" wins one trace by a little and loses the other by a lot; "b" is close on both.
    base = Baselines({"t1": {"fifo": _run(200.0), "a": _run(90.0), "b": _run(100.0)},
                      "t2": {"fifo": _run(200.0), "a": _run(300.0), "b": _run(100.0)}})
    assert base.best("t1", "mean_jct") == ("a", 90.0)
    policy, score = base.single_best("mean_jct")
    assert policy == "b" and score == pytest.approx((0.9 * 1.0) ** 0.5)


def test_the_best_score_never_falls_between_generations(tmp_path: Path) -> None:
    report = search(config(3), tmp_path, progress=False)
    scores = [h["best_combined"] for h in report["history"]]
    assert scores == sorted(scores)


def test_a_resumed_search_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    whole = search(config(3), tmp_path / "whole", progress=False)
    # The same secret (so the same masked traces), as a run directory keeps for its own resumes.
    (tmp_path / "split").mkdir()
    shutil.copy(tmp_path / "whole" / SECRET_FILE, tmp_path / "split" / SECRET_FILE)
    search(config(2), tmp_path / "split", progress=False)
    resumed = search(config(3), tmp_path / "split", resume=True, progress=False)
    assert resumed["history"] == whole["history"]
    assert resumed["best"] == whole["best"]


def test_a_used_run_directory_is_refused_without_resume(tmp_path: Path) -> None:
    search(config(1), tmp_path, progress=False)
    with pytest.raises(FileExistsError):
        search(config(1), tmp_path, progress=False)


def test_tuning_searches_the_constants_of_a_human_policy(tmp_path: Path) -> None:
    report = search(config(1, engine="tune"), tmp_path, progress=False)
    assert set(report["best"]["genome"]) == {"thresholds[0]", "thresholds[1]", "promote_knob", "period"}
    assert "(Tiresias)" in (tmp_path / "best.py").read_text()


def test_cli_evolve_emits_a_policy_file_with_its_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emitted = tmp_path / "evolved_test.py"
    code = main(["--objective", "mean_jct", "--traces", TRAIN[0], "--held-out", HELD[0], "--iterations", "1",
                 "--population", "3", "--jobs", "1", "--name", "evolved-cli-test", "--run-dir", str(tmp_path / "run"),
                 "--emit", str(emitted)])
    out = capsys.readouterr()
    assert code == 0
    assert "single best baseline" in out.out and "[" in out.err  # the table, and the progress bar on stderr
    text = emitted.read_text()
    assert "Training traces" in text and TRAIN[0] in text and HELD[0] in text and "@register" in text
    assert load_policy_class(text).name == "evolved-cli-test"


def test_cli_evolve_warm_starts_from_an_earlier_runs_best_genome(tmp_path: Path) -> None:
    earlier = {"best": {"genome": Genome(("mul", "preempted", "work"), place="node_idle").to_json()}}
    (tmp_path / "report.json").write_text(json.dumps(earlier))
    assert main(["--traces", TRAIN[0], "--held-out", "", "--iterations", "1", "--population", "3", "--jobs", "1",
                 "--run-dir", str(tmp_path / "run"), "--warm-start", str(tmp_path / "report.json")]) == 0
    first = json.loads((tmp_path / "run" / "gen-0000.json").read_text())["evaluated"]
    assert first[0]["genome"] == earlier["best"]["genome"]
    assert first[1]["genome"] == SEEDS[0].to_json()  # then the hand-made seeds


def test_cli_evolve_refuses_a_warm_start_that_is_not_a_report(tmp_path: Path) -> None:
    (tmp_path / "policy.py").write_text("x = 1\n")
    assert main(["--run-dir", str(tmp_path / "run"), "--warm-start", str(tmp_path / "policy.py")]) == 2


def test_cli_evolve_prints_json_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--traces", TRAIN[0], "--held-out", "", "--iterations", "1", "--population", "2", "--jobs", "1",
                 "--run-dir", str(tmp_path), "-o", "json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["config"]["population"] == 2


def test_cli_evolve_refuses_a_held_out_trace_that_is_also_trained_on(tmp_path: Path) -> None:
    assert main(["--traces", TRAIN[0], "--held-out", TRAIN[0], "--run-dir", str(tmp_path)]) == 2


def test_cli_evolve_refuses_an_unknown_objective(tmp_path: Path) -> None:
    assert main(["--objective", "happiness", "--run-dir", str(tmp_path)]) == 2


def test_cli_evolve_verifies_a_policy_file_on_held_out_traces(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "fifo_like.py"
    policy.write_text("from gpuos.scheduler import Policy\n\n\nclass Arrival(Policy):\n    name = 'arrival'\n")
    assert main(["--verify", str(policy), "--trace", HELD[0], "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    row = report["rows"][0]
    assert row["trace"] == HELD[0]
    assert row["candidate"] == pytest.approx(row["fifo"])  # arrival order, first fit: FIFO itself
    assert not report["ship"] and report["reasons"]


def test_cli_evolve_verifies_on_a_trace_file_of_ones_own_cut_into_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "fifo_like.py"
    policy.write_text("from gpuos.scheduler import Policy\n\n\nclass Arrival(Policy):\n    name = 'arrival'\n")
    excerpt = Path(__file__).resolve().parents[1] / "data" / "alibaba-gpu-2023" / "openb_pod_list_default.csv"
    assert main(["--verify", str(policy), "--trace", str(excerpt), "--no-robustness", "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["traces"] == 5 and len({r["trace"] for r in report["rows"]}) == 5
    assert report["robustness"] == {}


def test_cli_evolve_verify_names_a_bad_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "fifo_like.py"
    policy.write_text("from gpuos.scheduler import Policy\n\n\nclass Arrival(Policy):\n    name = 'arrival'\n")
    assert main(["--verify", str(policy), "--trace", str(tmp_path / "missing.csv")]) == 2
    assert "--trace" in capsys.readouterr().err


def test_cli_evolve_openevolve_without_the_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpuos.agents import openevolve_engine

    def missing(**kwargs: object) -> Path:
        raise ModuleNotFoundError("No module named 'openevolve'")

    monkeypatch.setattr(openevolve_engine, "run", missing)
    assert main(["--engine", "openevolve", "--run-dir", str(tmp_path), "--held-out", ""]) == 1
    assert "pip install 'gpuos[adrs]'" in capsys.readouterr().err
