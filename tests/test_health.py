"""GPU health through NVML: one GPU's failed query spoils only its own sample, and a GPU is
marked lost (its jobs stopped) only after several failed samples in a row.

NVML is replaced by a fake ``pynvml`` with two GPUs whose queries can be made to fail; the
daemon, its jobs and its socket are real.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.devices import nvml
from gpuos.devices.nvml import NvmlBackend
from gpuos.v1 import jobs_pb2
from tests.conftest import _kill_leftover_jobs, make_config, wait_for

GiB = 1024**3
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


class FakeNvml(types.SimpleNamespace):
    """Just enough of pynvml for two H100s; ``fail[i] = n`` makes GPU i's next n queries fail."""

    class NVMLError(Exception):
        pass

    class NVMLError_Unknown(NVMLError):  # noqa: N801 - pynvml's name
        pass

    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        super().__init__()
        self.fail: dict[int, int] = {0: 0, 1: 0}

    def _query(self, handle: int) -> None:
        if self.fail[handle]:
            self.fail[handle] -= 1
            raise self.NVMLError_Unknown("Unknown Error")

    def nvmlInit(self) -> None: ...  # noqa: N802 - pynvml's names, here and below

    def nvmlShutdown(self) -> None: ...  # noqa: N802

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:  # noqa: N802
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle: int) -> str:  # noqa: N802
        return f"GPU-fake-{handle}"

    def nvmlDeviceGetAttributes(self, handle: int) -> types.SimpleNamespace:  # noqa: N802
        return types.SimpleNamespace(multiprocessorCount=132)

    def nvmlDeviceGetMigMode(self, handle: int) -> None:  # noqa: N802
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> types.SimpleNamespace:  # noqa: N802
        self._query(handle)
        return types.SimpleNamespace(total=80 * GiB, used=GiB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[object]:  # noqa: N802
        return []

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> types.SimpleNamespace:  # noqa: N802
        return types.SimpleNamespace(gpu=40)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:  # noqa: N802
        return 50

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:  # noqa: N802
        return 300_000


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setattr(nvml, "pynvml", fake)
    return fake


@pytest.fixture
def nvml_daemon(short_dir: Path, fake_nvml: FakeNvml) -> Iterator[Daemon]:
    d = Daemon(make_config(short_dir, backend="nvml", health_failures_before_lost=3))
    d.controller.tick = 0.05
    d.start()
    yield d
    d.stop()
    _kill_leftover_jobs(short_dir / "state")


def test_one_gpus_nvml_error_spoils_only_its_own_sample(fake_nvml: FakeNvml) -> None:
    backend = NvmlBackend()
    fake_nvml.fail[1] = 1
    first, second = backend.status()
    assert first.healthy and first.memory_used == GiB and first.utilization_pct == 40.0
    assert not second.healthy and "Unknown" in second.sample_error
    assert all(s.healthy and not s.sample_error for s in backend.status())  # the next sample reads again


def test_a_transient_nvml_error_stops_no_job(nvml_daemon: Daemon, fake_nvml: FakeNvml) -> None:
    with Client(socket=nvml_daemon.config.socket) as client:
        job = client.submit(SLEEP, gpus=2)
        wait_for(lambda: client.get(job.id).state == jobs_pb2.RUNNING)
        fake_nvml.fail[1] = 1
        nvml_daemon.controller.check_now()
        assert fake_nvml.fail[1] == 0  # the failed sample was taken
        nvml_daemon.controller.check_now()  # and a good one after it
        got = client.get(job.id)
        assert got.state == jobs_pb2.RUNNING
        assert [e.kind for e in client.events(job_id=job.id)].count("requeued") == 0
        client.cancel(job.id)


def test_a_gpu_is_lost_only_after_the_configured_failed_samples_in_a_row(nvml_daemon: Daemon,
                                                                         fake_nvml: FakeNvml) -> None:
    with Client(socket=nvml_daemon.config.socket) as client:
        job = client.submit(SLEEP, gpus=2)
        wait_for(lambda: client.get(job.id).state == jobs_pb2.RUNNING)
        fake_nvml.fail[1] = 10**9
        nvml_daemon.controller.check_now()
        # One failed sample (the loop's own once-a-second sample may add a second): not lost yet.
        assert client.get(job.id).state == jobs_pb2.RUNNING
        nvml_daemon.controller.check_now()
        nvml_daemon.controller.check_now()
        wait_for(lambda: ("requeued", "device-lost") in [(e.kind, e.reason) for e in client.events(job_id=job.id)])
        assert client.get(job.id).state == jobs_pb2.PENDING  # both GPUs are needed, and one is lost
        fake_nvml.fail[1] = 0
        nvml_daemon.controller.check_now()
        wait_for(lambda: client.get(job.id).state == jobs_pb2.RUNNING)  # back once it answers again
        client.cancel(job.id)
