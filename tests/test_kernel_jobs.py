"""Kernel jobs end to end: gpuosd validates them, runs them in its kernel worker (on the CPU
here, under Triton's interpreter) and shows their progress and per-step latency."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DaemonProcess

pytest.importorskip("torch")
pytest.importorskip("triton")


def test_a_kernel_job_runs_in_the_worker_and_reports_each_step(gpuosd: DaemonProcess) -> None:
    submitted = gpuosd.ctl("submit", "--kernel", "vattention-decode", "--gpu-fraction", "0.5",
                           "--param", "batch=2", "--param", "context=600", "--param", "steps=3")
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    assert gpuosd.ctl("wait", job, timeout=240).returncode == 0, gpuosd.ctl("logs", job).stdout
    data = json.loads(gpuosd.ctl("-o", "json", "get", job).stdout)
    assert data["state"] == "SUCCEEDED" and data["kind"] == "kernel"
    progress = data["progress"]
    assert progress["steps_done"] == 3 and progress["steps_total"] == 3
    assert 0 < progress["p50_latency_ms"] <= progress["p99_latency_ms"]
    assert "density" in " ".join(progress["summary"])
    logs = gpuosd.ctl("logs", job).stdout
    assert "step 3/3" in logs
    assert "progress: 3/3 steps" in gpuosd.ctl("get", job).stdout


@pytest.mark.parametrize(("param", "expected"), [
    ("epsilon=2", "params.epsilon: 2 is above the maximum"),
    ("context=lots", "params.context: 'lots' is not an integer"),
    ("colour=red", "has no parameter 'colour'"),
])
def test_a_kernel_job_with_a_bad_parameter_is_refused_with_the_reason(gpuosd: DaemonProcess, param: str,
                                                                       expected: str) -> None:
    result = gpuosd.ctl("submit", "--kernel", "vattention-decode", "--param", param)
    assert result.returncode == 1
    assert expected in result.stderr
