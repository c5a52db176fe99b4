"""The evolved policies shipped in scheduler/policies/ load like any other and say where they came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuos.agents.evaluator import evaluate_stage1, human_policies
from gpuos.agents.sandbox import check_source
from gpuos.agents.workloads import HELD_OUT, TRAINING
from gpuos.scheduler import available, get_policy

POLICIES = Path(__file__).resolve().parents[2] / "scheduler" / "policies"
SHIPPED = sorted(POLICIES.glob("evolved_*.py"))


def test_at_least_two_evolved_policies_are_shipped() -> None:
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_an_evolved_policy_is_registered_by_its_name(path: Path) -> None:
    name = path.stem.replace("_", "-")
    assert name in available()
    assert get_policy(name).name == name
    assert name not in human_policies()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_an_evolved_policy_header_names_its_run_training_traces_and_held_out_scores(path: Path) -> None:
    header = path.read_text().split('"""')[1]
    assert "run " in header and "Command: gpuosctl evolve" in header
    training = header.split("Training traces")[1].split("Training score")[0].splitlines()[1:]
    assert training and all(line.strip() in TRAINING for line in training)
    assert all(trace in header for trace in HELD_OUT)
    assert "FIFO" in header and "random-fit" in header
    assert "per trace (oracle)" in header and "single best human policy" in header


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_an_evolved_policy_passes_the_evaluator_it_was_found_with(path: Path) -> None:
    check_source(path.read_text())
    result = evaluate_stage1(path)
    assert result["valid"] == 1.0, result.get("error")
