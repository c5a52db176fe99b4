"""bench/kernels.py: the prepared GPU run skips cleanly without a GPU, and its whole pipeline
(cases, timing, floors, targets, JSON) runs on the CPU under the interpreter (``--smoke``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("triton")

SCRIPT = str(ROOT / "bench" / "kernels.py")


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          cwd=str(ROOT), env=env)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET")}
    return {**env, **extra}


def test_without_a_gpu_it_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    result = _run(env=_env(CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert "no GPU here" in result.stdout and "nothing measured" in result.stdout
    assert not (tmp_path / "kernels.json").exists()


def test_smoke_runs_every_case_and_writes_the_json(tmp_path: Path) -> None:
    result = _run("--smoke", env=_env(CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "kernels.json").read_text())
    assert report["mode"] == "smoke" and report["errors"] == [] and report["skipped"] == []
    assert report["copy_gbps"] > 0 and 0 < report["elapsed_s"] <= report["budget_s"]
    assert set(report["versions"]) == {"torch", "triton", "python"}
    families = [case["family"] for case in report["cases"]]
    assert families == ["vattention"] + ["sla"] * 3 + ["radial"] * 2
    for case in report["cases"]:
        for side in ("sparse", "dense"):
            assert case[side]["median_ms"] > 0 and case[side]["reps"] == 2, case["label"]
        assert case["speedup"] == pytest.approx(case["dense"]["median_ms"] / case["sparse"]["median_ms"])
    decode = report["cases"][0]
    assert decode["sparse_bytes"] > 0 and 0 < decode["density"] <= 1
    assert decode["floor_ratio"] == pytest.approx(decode["sparse"]["median_ms"] / decode["floor_ms"])
    assert all(case["tflops"] > 0 and case["flops"] > 0 for case in report["cases"][1:])
    names = [target["name"] for target in report["targets"]]
    sla_target = "SLA speed-up over dense at 95% sparsity"
    radial_target = "radial speed-up over dense at 4x length"
    assert names == (["decode speed-up over dense", "decode time over the HBM floor"]
                     + [sla_target] * 3 + [radial_target])
    for target in report["targets"]:
        assert f"{'PASS' if target['passed'] else 'MISS'}  {target['name']}" in result.stdout
    # The interpreter compiles nothing, so there are no register counts to list.
    assert report["kernels"] == [] and "none compiled" in result.stdout
    assert "| case | sparse ms | dense ms | speed-up |" in result.stdout


def test_a_spent_budget_skips_cases_with_a_note(tmp_path: Path) -> None:
    env = _env(CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path))
    result = _run("--smoke", "--budget-s", "1", "--only", "radial", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "kernels.json").read_text())
    assert report["cases"] == [] and report["skipped"] == ["radial: time budget"]
    assert "SKIPPED radial: time budget" in result.stdout
