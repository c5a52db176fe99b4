"""Evolving on one's own history: the time-ordered split, tuned baselines, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuos.agents.workloads import (
    HISTORY_HELD_OUT_WINDOWS,
    HISTORY_MIN_WINDOW_JOBS,
    WorkloadSpec,
    content_key,
    history_min_jobs,
    history_plan,
    load_workload,
)
from gpuos.cli.evolve import main
from gpuos.errors import InvalidArgument
from gpuos.history import HISTORY_FORMAT, HISTORY_VERSION
from gpuos.scheduler.sim import Trace, load_trace

# A busy machine's history: 8 GPUs at offered load 1.2, so queue order matters.
SOURCE = "synthetic:bursty?n={n}&seed=5|gpus=1x8xA100-80GB|load=1.2"
EPOCH = 1.75e9


def write_history(trace: Trace, path: Path, *, tie_at: int = -1) -> Path:
    """``trace`` as ``gpuosctl trace export`` writes it (jobs ``tie_at`` and the one after arrive
    at the same instant when given)."""
    gpus = [{"model": g.name, "memory_bytes": g.memory} for g in trace.nodes[0].gpus]
    header = {"format": HISTORY_FORMAT, "version": HISTORY_VERSION, "source": "test history", "gpus": gpus,
              "groups": []}
    lines = [json.dumps(header)]
    jobs = sorted(trace.jobs, key=lambda j: (j.arrival, j.id))
    for i, j in enumerate(jobs):
        arrival = jobs[tie_at].arrival if i == tie_at + 1 and tie_at >= 0 else j.arrival
        r = j.request
        lines.append(json.dumps({
            "id": f"{i:06d}", "arrival": EPOCH + arrival, "duration": j.duration, "wait": 0.0, "gpus": r.gpus,
            "gpu_milli": r.gpu_milli, "memory_bytes": r.memory_bytes, "mig_profile": r.mig_profile,
            "gpu_types": list(r.gpu_types), "sharing": r.sharing, "qos": j.qos, "priority": j.priority,
            "tenant": j.tenant, "group": "", "dedupe_key": "", "estimate": j.estimate, "outcome": "succeeded",
            "reason": "", "preemptions": 0,
        }))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    return write_history(load_workload(SOURCE.format(n=history_min_jobs())), path)


def _jobs(spec: str) -> list[str]:
    """The ids of the jobs a window takes, in the original history."""
    parsed = WorkloadSpec.parse(spec)
    jobs = sorted(load_trace(parsed.trace).jobs, key=lambda j: (j.arrival, j.id))
    first = int(parsed.start * len(jobs))
    return [j.id for j in jobs[first:first + parsed.jobs]]


def test_the_held_out_part_is_newer_than_every_training_window(history: Path) -> None:
    plan = history_plan(str(history))
    assert len(plan.held_out) == HISTORY_HELD_OUT_WINDOWS and plan.training
    by_id = {j.id: j for j in load_trace(history).jobs}
    training = [i for s in plan.training for i in _jobs(s)]
    held = [i for s in plan.held_out for i in _jobs(s)]
    assert not set(training) & set(held)
    assert not {content_key(by_id[i]) for i in training} & {content_key(by_id[i]) for i in held}
    assert max(by_id[i].arrival for i in training) < min(by_id[i].arrival for i in held)
    # Every training window lies before the split, every held-out one after it, none overlapping.
    ordered = sorted(by_id, key=lambda i: (by_id[i].arrival, i))
    assert all(ordered.index(i) < plan.split for i in training)
    assert all(ordered.index(i) >= plan.split for i in held)
    assert len(training) == len(set(training)) and len(held) == len(set(held))
    assert all(len(_jobs(s)) == plan.window_jobs >= HISTORY_MIN_WINDOW_JOBS for s in (*plan.training, *plan.held_out))
    # The windows keep the history's own cluster and arrival times.
    window = load_workload(plan.held_out[0])
    first = [by_id[i] for i in _jobs(plan.held_out[0])]
    assert [j.arrival for j in window.jobs] == pytest.approx([j.arrival - first[0].arrival for j in first])


def test_jobs_arriving_together_stay_on_one_side_of_the_split(tmp_path: Path) -> None:
    n = history_min_jobs() + 5
    split = int(n * 0.6)
    path = write_history(load_workload(SOURCE.format(n=n)), tmp_path / "tie.jsonl", tie_at=split - 1)
    plan = history_plan(str(path))
    assert plan.split == split + 1


def test_too_little_history_names_trace_and_the_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = write_history(load_workload(SOURCE.format(n=history_min_jobs() - 1)), tmp_path / "small.jsonl")
    with pytest.raises(InvalidArgument) as refused:
        history_plan(str(small))
    assert refused.value.field == "trace" and f"{history_min_jobs() - 1} finished jobs" in refused.value.problem
    policy = tmp_path / "p.py"
    policy.write_text("from gpuos.scheduler import Policy\n\n\nclass Arrival(Policy):\n    name = 'arrival'\n")
    assert main(["--verify", str(policy), "--trace", str(small)]) == 2
    err = capsys.readouterr().err
    assert "--trace" in err and str(history_min_jobs()) in err


def test_a_search_on_a_history_refuses_other_training_traces(history: Path, capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    assert main(["--trace", str(history), "--traces", "training", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--traces" in capsys.readouterr().err
    csv = Path(__file__).resolve().parents[1] / "data" / "alibaba-gpu-2023" / "openb_pod_list_default.csv"
    assert main(["--trace", str(csv), "--run-dir", str(tmp_path / "r")]) == 2
    assert "--trace" in capsys.readouterr().err


def test_verify_judges_on_the_newer_part_against_baselines_tuned_on_the_older(
    history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "arrival.py"
    policy.write_text("from gpuos.scheduler import Policy\n\n\nclass Arrival(Policy):\n    name = 'arrival'\n")
    code = main(["--verify", str(policy), "--trace", str(history), "--no-robustness", "--baseline-trials", "2",
                 "-o", "json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["trace"] for r in report["rows"]] == list(history_plan(str(history)).held_out)
    row = report["rows"][0]
    assert row["candidate"] == pytest.approx(row["fifo"])  # arrival order, first fit: FIFO itself
    assert not report["ship"] and report["traces"] == HISTORY_HELD_OUT_WINDOWS


def test_a_search_on_a_history_trains_on_its_older_part(history: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code = main(["--trace", str(history), "--iterations", "1", "--population", "2", "--jobs", "1",
                 "--baseline-trials", "2", "--run-dir", str(run), "-o", "json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    plan = history_plan(str(history))
    assert report["config"]["traces"] == list(plan.training)
    assert report["config"]["held_out"] == list(plan.held_out)
    assert set(report["config"]["tuned"]) == {"srtf", "tiresias", "gandiva"}
    assert [r["trace"] for r in report["held_out"]["rows"]] == list(plan.held_out)
    baselines = json.loads((run / "baselines.json").read_text())
    names = set(next(iter(baselines.values())))
    assert {"srtf", "fifo"} <= names and any(n.startswith("srtf@tuned-") for n in names)
    assert not any(n.endswith("@tuned-mean_jct") for n in names)  # not the public training set's constants
