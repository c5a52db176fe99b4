"""bench/colocation.py: without a GPU it measures nothing and says so; with MPS figures it derives
the simulator's interference coefficient by inverting the simulator's own MPS rate."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import pytest

from gpuos.jobs import Resources
from gpuos.scheduler.sim import SimConfig, Trace, TraceJob, parse_gpus, run_simulation
from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "colocation.py"


def _colocation() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_colocation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_measures_nothing_says_so_and_exits_0() -> None:
    # An empty CUDA_VISIBLE_DEVICES hides any GPU, so this takes the skip path on every machine.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "1"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "bench/colocation.py: no GPU here; colocation is measured on real GPUs only (nothing measured, "
        "calibration unchanged)."
    ]
    assert result.stderr == ""


def test_the_derived_interference_makes_the_simulator_reproduce_the_measured_slowdown() -> None:
    slowdown = 1.19
    x = _colocation().interference_for(slowdown)
    share = Resources(gpus=1, gpu_milli=500)
    trace = Trace("pair", parse_gpus("1xH100-80GB"), (TraceJob("a", 0, 100, share), TraceJob("b", 0, 100, share)))
    result = run_simulation(trace, "fifo", config=SimConfig(interference=x))
    assert [r.finish for r in result.outcome.records] == pytest.approx([100 * slowdown] * 2)


def test_the_h100_mps_pair_figures_give_the_documented_interference() -> None:
    # bench/RESULTS.md, Colocation: decode p50 1.668 ms on its 50% share alone, 1.960 ms beside the
    # matmuls; matmuls 416 TFLOP/s alone on their share, 350 beside the decode steps.
    lines = _colocation().calibration({"p50_ms": 1.668}, {"tflops": 416.0}, {"p50_ms": 1.960}, {"tflops": 350.0})
    assert "latency job p50 1.175x, throughput job 1.189x" in lines[0]
    assert "0.350 (latency), 0.377 (throughput); mean 0.36" in lines[1]
