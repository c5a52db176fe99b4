"""Prometheus metrics are served and say what the daemon is doing."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from tests.conftest import _kill_leftover_jobs, make_config, wait_for

PY = sys.executable


@pytest.fixture
def metered(short_dir: Path) -> Iterator[Daemon]:
    d = Daemon(make_config(short_dir, metrics_listen="127.0.0.1:0"))
    d.controller.tick = 0.05
    d.start()
    yield d
    d.stop()
    _kill_leftover_jobs(short_dir / "state")


def scrape(daemon: Daemon) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_gpu_metrics_use_dcgm_exporter_names(metered: Daemon) -> None:
    metrics = scrape(metered)
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP",
                 "DCGM_FI_DEV_POWER_USAGE"):
        assert [labels["gpu"] for labels, _ in metrics[name]] == ["0", "1"], name
    assert {labels["modelName"] for labels, _ in metrics["DCGM_FI_DEV_GPU_UTIL"]} == {"H100-80GB"}


def test_job_states_queue_and_policy_are_reported(metered: Daemon) -> None:
    with Client(socket=metered.config.socket) as c:
        holders = [c.submit([PY, "-c", "import time; time.sleep(30)"], gpus=1) for _ in range(2)]
        wait_for(lambda: all(c.get(j.id).state == 2 for j in holders))
        c.submit([PY, "-c", "pass"], gpus=1)
        metrics = scrape(metered)
        states = {labels["state"]: value for labels, value in metrics["gpuos_jobs"]}
        assert states == {"pending": 1, "running": 2, "paused": 0}
        assert metrics["gpuos_queue_length"] == [({}, 1.0)]
        assert metrics["gpuos_policy_info"] == [({"policy": "fifo"}, 1.0)]
        assert metrics["gpuos_queue_wait_seconds_count"][0][1] >= 2
        assert metrics["gpuos_scheduling_decision_seconds_count"][0][1] >= 1
        reserved = sum(v for _, v in metrics["gpuos_gpu_memory_reserved_bytes"])
        assert reserved == 2 * 80 * 1024**3
        for j in holders:
            c.cancel(j.id)
        # A running job's cancellation is acknowledged before its process is reaped; the
        # counter moves when the end is recorded, so wait for it rather than race it.
        cancelled = ({"state": "cancelled", "reason": "cancelled-by-user"}, 2.0)
        wait_for(lambda: cancelled in scrape(metered)["gpuos_jobs_finished_total"])


def test_memory_limit_kills_are_counted(metered: Daemon) -> None:
    with Client(socket=metered.config.socket) as c:
        job = c.submit([PY, "-c", "import time; time.sleep(30)"], gpu_fraction=0.5, memory="10GiB")
        held = wait_for(lambda: (j := metered.store.active_job(job.id)) and j.child_pid and j)
        metered.backend.set_process_memory(held.placement.devices[0], held.child_pid, 11 * 1024**3)
        c.wait(job.id, timeout=30)
    assert scrape(metered)["gpuos_memory_limit_kills_total"] == [({}, 1.0)]
