"""bench/multitask.py: without a GPU it measures nothing and says so; its reading of the kernel
jobs' step lines and its normalisation are what the report's figures rest on."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from types import ModuleType

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "multitask.py"


def _multitask() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_multitask", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_measures_nothing_says_so_and_exits_0() -> None:
    # An empty CUDA_VISIBLE_DEVICES hides any GPU, so this takes the skip path on every machine.
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert "no GPU here" in done.stdout and "nothing measured" in done.stdout


def test_step_lines_of_the_worker_become_latencies_and_a_rate() -> None:
    bench = _multitask()
    lines = [(10.0, "vattention-decode: {} seed=1\n"), (10.5, "step 1/1000000: 2.000 ms\n"),
             (11.0, "step 2/1000000: 4.500 ms\n"), (11.5, "not a step\n"), (12.5, "step 3/1000000: 3.000 ms\n")]
    run = bench.read_steps(lines)
    assert run.latencies == [0.002, 0.0045, 0.003]
    assert run.times == [10.5, 11.0, 12.5]
    assert math.isclose(run.rate(), 2 / 2.0)


def test_each_job_is_normalised_by_its_own_rate_alone_and_the_aggregate_by_driver_time_slicing() -> None:
    bench = _multitask()
    Run = bench.Run

    def steady(count: int, seconds: float, latency: float) -> object:
        return Run([latency] * count, [i * seconds / (count - 1) for i in range(count)])

    alone = {"ls-sparse": steady(101, 1.0, 0.010), "ls-dense": steady(101, 1.0, 0.020), "be": steady(11, 1.0, 0.1)}
    driver = {"ls-sparse": steady(51, 1.0, 0.030), "ls-dense": steady(51, 1.0, 0.050), "be": steady(6, 1.0, 0.2)}
    better = {"ls-sparse": steady(101, 1.0, 0.011), "ls-dense": steady(101, 1.0, 0.021), "be": steady(8, 1.0, 0.14)}
    norm = bench.normalised(driver, alone)
    assert math.isclose(norm["ls-sparse"], 0.5) and math.isclose(norm["be"], 0.5)
    rows = bench.mix_rows({"driver time-slicing": driver, "gpuos executor": better, "mps": "not here"}, alone)
    by_name = {row.split(" | ")[0].strip("| "): row for row in rows[2:]}
    # 1 + 1 + 0.7 over 0.5 + 0.5 + 0.5.
    assert by_name["gpuos executor"].rstrip(" |").endswith("1.80")
    assert "1.10" in by_name["gpuos executor"]  # LS-sparse p99 over alone
    assert "100.0%" in by_name["gpuos executor"]  # every step within 1.2x its p99 alone
    assert "skipped: not here" in by_name["mps"]
