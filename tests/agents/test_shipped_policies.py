"""Evolved policies are shipped in scheduler/policies/ only with a held-out verdict that says so.

The rule (docs/adrs.md, gpuos.agents.verify): a held-out gain of at least 10% over the single
best tuned baseline, the bootstrap interval's lower bound above 0, no guard worse than 2%, and
the gain holding across interference 0.1-0.5 and preemption cost 10-120 s. The two policies of
the last round failed it and were withdrawn to bench/withdrawn/ (kept to re-verify them).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpuos.agents.evaluator import baseline_makers
from gpuos.agents.sandbox import check_source, load_policy_class
from gpuos.agents.workloads import TRAINING
from gpuos.scheduler import available, get_policy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scheduler" / "policies").glob("evolved_*.py"))
WITHDRAWN = sorted((ROOT / "bench" / "withdrawn").glob("evolved_*.py"))


def test_every_evolved_policy_is_either_shipped_or_withdrawn_by_name() -> None:
    registered = {n for n in available() if n.startswith("evolved")}
    assert registered == {p.stem.replace("_", "-") for p in SHIPPED}
    assert not registered & {p.stem.replace("_", "-") for p in WITHDRAWN}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_shipped_policy_carries_a_held_out_verdict_that_says_ship(path: Path) -> None:
    name = path.stem.replace("_", "-")
    assert get_policy(name).name == name and name not in baseline_makers("mean_jct")
    header = path.read_text().split('"""')[1]
    assert "Command: gpuosctl evolve" in header and "verdict: SHIP" in header
    training = header.split("Training traces")[1].split("Training score")[0].splitlines()[1:]
    assert training and all(line.strip() in TRAINING for line in training)
    # No path of the machine it was made on: every path a header names is relative to the repo.
    assert not re.search(r"(?:^|[\s(=])/[\w.-]+/", header), "the header names an absolute path"


@pytest.mark.parametrize("path", WITHDRAWN, ids=lambda p: p.stem)
def test_a_withdrawn_policy_still_loads_as_a_candidate(path: Path) -> None:
    source = path.read_text()
    check_source(source)
    assert load_policy_class(source).name == path.stem.replace("_", "-")
