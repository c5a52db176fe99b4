"""Suspend-to-host: the simulator's model, the CUDA checkpoint driver code (against a fake of the
bindings), and the daemon's primitives (Lifecycle.suspend / restore) on the simulated GPUs."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.devices import checkpoint
from gpuos.devices.backend import Transfer
from gpuos.devices.catalog import MODELS, lookup
from gpuos.devices.sim import SimBackend
from gpuos.errors import BackendError
from gpuos.jobs import JobState, Reason
from gpuos.v1 import jobs_pb2
from tests.conftest import make_config, serve, wait_for

GiB = 1024**3
H100_LINK = lookup("H100-80GB").host_link_bytes_per_s  # type: ignore[union-attr]


# -- the catalog and the simulator's model ----------------------------------------------------------


def test_every_gpu_model_has_a_host_link_bandwidth() -> None:
    assert all(m.host_link_bytes_per_s > 0 for m in MODELS)


def test_sim_suspend_frees_the_gpu_and_takes_bytes_over_the_host_link() -> None:
    sim = SimBackend("2xH100-80GB")
    pid = os.getpid()
    sim.attach(0, pid, GiB, 1000)

    moved = sim.suspend(0, pid)

    assert moved == Transfer(GiB, GiB / H100_LINK)
    (gpu0, _) = sim.status()
    assert gpu0.memory_used == 0 and gpu0.processes == () and gpu0.utilization_pct == 0


def test_sim_restore_puts_the_memory_back_on_another_gpu_of_the_model() -> None:
    sim = SimBackend("2xH100-80GB")
    pid = os.getpid()
    sim.attach(0, pid, GiB, 1000)
    sim.suspend(0, pid)

    back = sim.restore(pid, 1, 0)

    assert back == Transfer(GiB, GiB / H100_LINK)
    gpu0, gpu1 = sim.status()
    assert gpu0.memory_used == 0 and gpu1.memory_used == GiB
    assert sim.suspend_support().cross_gpu


def test_sim_restore_refuses_another_model_and_a_gpu_without_room() -> None:
    sim = SimBackend("1xH100-80GB,1xA100-40GB,1xH100-80GB")
    pid = os.getpid()
    sim.attach(0, pid, GiB, 1000)
    sim.suspend(0, pid)
    sim.attach(2, 1, 80 * GiB, 1000)  # GPU 2 is full (pid 1 exists: the simulator keeps it)

    with pytest.raises(BackendError, match="same model"):
        sim.restore(pid, 1, 0)
    with pytest.raises(BackendError, match="needs"):
        sim.restore(pid, 2, 0)
    with pytest.raises(BackendError, match="not GPU 2"):
        sim.restore(pid, 0, 2)
    assert sim.restore(pid, 0, 0).bytes == GiB


def test_sim_refuses_to_suspend_twice_or_an_unattached_process() -> None:
    sim = SimBackend("1xH100-80GB")
    pid = os.getpid()
    with pytest.raises(BackendError, match="no memory on GPU 0"):
        sim.suspend(0, pid)
    sim.attach(0, pid, GiB, 1000)
    sim.suspend(0, pid)
    with pytest.raises(BackendError, match="already suspended"):
        sim.suspend(0, pid)


def test_sim_suspension_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUOS_SIM_SUSPEND", "0")
    sim = SimBackend("1xH100-80GB")
    sim.attach(0, os.getpid(), GiB, 1000)

    assert not sim.suspend_support().supported
    assert "GPUOS_SIM_SUSPEND" in sim.suspend_support().detail
    with pytest.raises(BackendError, match="turned off"):
        sim.suspend(0, os.getpid())


# -- the CUDA checkpoint API, against a fake of cuda.bindings.driver -------------------------------


class _Err(int):
    @property
    def name(self) -> str:
        return "CUDA_SUCCESS" if self == 0 else f"CUDA_ERROR_{int(self)}"


class FakeBindings(SimpleNamespace):
    """The parts of cuda.bindings.driver that checkpoint.py calls; records the calls in order."""

    def __init__(self, fail: str = "", state: int = 0, cuda_version: int = 12080) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.fail, self.current, self.cuda_version = fail, state, cuda_version
        self.CUprocessState = SimpleNamespace(CU_PROCESS_STATE_RUNNING=0, CU_PROCESS_STATE_LOCKED=1,
                                              CU_PROCESS_STATE_CHECKPOINTED=2, CU_PROCESS_STATE_FAILED=3)
        self.CUcheckpointLockArgs = SimpleNamespace
        self.CUcheckpointRestoreArgs = SimpleNamespace
        self.CUcheckpointGpuPair = SimpleNamespace
        self.CUuuid = SimpleNamespace
        for name in ("Lock", "Checkpoint", "Restore", "Unlock"):
            setattr(self, f"cuCheckpointProcess{name}", self._op(name.lower()))

    def _op(self, name: str) -> Any:
        def call(pid: int, args: Any) -> tuple[_Err]:
            self.calls.append((name, pid, args))
            return (_Err(999 if name == self.fail else 0),)
        return call

    def cuCheckpointProcessGetState(self, pid: int) -> tuple[_Err, int]:
        return _Err(0), self.current

    def cuGetErrorString(self, err: _Err) -> tuple[_Err, bytes]:
        return _Err(0), b"operation not permitted when stream is capturing"

    def cuInit(self, flags: int) -> tuple[_Err]:
        self.calls.append(("init",))
        return (_Err(0),)

    def cuDriverGetVersion(self) -> tuple[_Err, int]:
        return _Err(0), self.cuda_version


def test_suspend_locks_then_checkpoints_with_the_lock_timeout() -> None:
    fake = FakeBindings()
    checkpoint.suspend_process(checkpoint.BindingsDriver(fake, "fake"), 4242, timeout_ms=5000)

    assert [c[:2] for c in fake.calls] == [("lock", 4242), ("checkpoint", 4242)]
    assert fake.calls[0][2].timeoutMs == 5000


def test_a_failed_checkpoint_unlocks_and_reports_the_drivers_message() -> None:
    fake = FakeBindings(fail="checkpoint")
    with pytest.raises(BackendError, match="cuCheckpointProcessCheckpoint failed: CUDA_ERROR_999: operation not "
                                           "permitted"):
        checkpoint.suspend_process(checkpoint.BindingsDriver(fake, "fake"), 7)
    assert [c[0] for c in fake.calls] == ["lock", "checkpoint", "unlock"]


def test_restore_onto_another_gpu_passes_every_gpu_in_the_pair_mapping() -> None:
    fake = FakeBindings(state=2)  # checkpointed
    uuids = ["GPU-00000000-0000-0000-0000-00000000000a", "GPU-00000000-0000-0000-0000-00000000000b",
             "GPU-00000000-0000-0000-0000-00000000000c"]
    pairs = checkpoint.gpu_pairs(uuids, uuids[0], uuids[2])

    checkpoint.restore_process(checkpoint.BindingsDriver(fake, "fake"), 9, pairs)

    assert pairs == {uuids[0]: uuids[2], uuids[1]: uuids[1], uuids[2]: uuids[0]}
    (restore, pid, args), unlock = fake.calls[0], fake.calls[1]
    assert (restore, pid, unlock[0]) == ("restore", 9, "unlock")
    assert args.gpuPairsCount == 3
    assert [p.oldUuid.bytes[-1] for p in args.gpuPairs] == [0xA, 0xB, 0xC]
    assert [p.newUuid.bytes[-1] for p in args.gpuPairs] == [0xC, 0xB, 0xA]


def test_restore_of_a_process_already_restored_only_unlocks_it() -> None:
    fake = FakeBindings(state=1)  # locked: the driver finished a restore gpuosd did not see end
    checkpoint.restore_process(checkpoint.BindingsDriver(fake, "fake"), 9)
    assert [c[0] for c in fake.calls] == ["unlock"]


def test_load_says_cuda_python_is_missing() -> None:
    def importer(name: str) -> Any:
        raise ImportError(name)

    with pytest.raises(BackendError, match="cuda-python is not installed"):
        checkpoint.load(importer)


def test_load_prefers_cuda_core_and_initialises_the_driver() -> None:
    fake, core = FakeBindings(), SimpleNamespace(Process=object)
    modules = {"cuda.bindings.driver": fake, "cuda.core.checkpoint": core}

    def importer(name: str) -> Any:
        if name not in modules:
            raise ImportError(name)
        return modules[name]

    assert isinstance(checkpoint.load(importer), checkpoint.CoreDriver)
    assert fake.calls == [("init",)]
    del modules["cuda.core.checkpoint"]
    assert isinstance(checkpoint.load(importer), checkpoint.BindingsDriver)


@pytest.mark.parametrize(("nvml", "cuda", "supported", "cross", "says"), [
    ("550.54.15", 12040, False, False, "r550; suspend-to-host needs r570"),
    ("570.86.15", 12080, True, False, "same GPU only"),
    ("580.65.06", 13000, True, True, "another GPU of its model"),
    (None, 13000, True, True, "driver r580"),
])
def test_detection_needs_driver_r570_and_r580_for_another_gpu(
        nvml: str | None, cuda: int, supported: bool, cross: bool, says: str) -> None:
    fake = FakeBindings(cuda_version=cuda)
    support, driver = checkpoint.detect(nvml, loader=lambda: checkpoint.BindingsDriver(fake, "fake"),
                                        permission=lambda: "")
    assert (support.supported, support.cross_gpu, driver is not None) == (supported, cross, supported)
    assert says in support.detail


def test_detection_says_why_when_the_api_or_the_permission_is_missing(tmp_path: Path) -> None:
    def absent() -> checkpoint.Driver:
        raise BackendError("cuda-python is not installed (pip install 'gpuos[cuda]')")

    support, _ = checkpoint.detect("580.1", loader=absent)
    assert not support.supported and "cuda-python is not installed" in support.detail

    scope = tmp_path / "ptrace_scope"
    scope.write_text("2\n")
    assert "only root" in checkpoint.may_act_on_others(euid=1000, ptrace_scope_path=str(scope))
    assert checkpoint.may_act_on_others(euid=0, ptrace_scope_path=str(scope)) == ""
    fake = FakeBindings(cuda_version=13000)
    support, _ = checkpoint.detect("580.1", loader=lambda: checkpoint.BindingsDriver(fake, "fake"),
                                   permission=lambda: "gpuosd runs as uid 1000 and kernel.yama.ptrace_scope is 2")
    assert not support.supported and "ptrace_scope" in support.detail


# -- the daemon's primitives on the simulated GPUs --------------------------------------------------

# Runs until the file named by $GO exists, then exits 0: a job whose process must survive.
WAITER = [sys.executable, "-c",
          "import os, time\nwhile not os.path.exists(os.environ['GO']): time.sleep(0.02)\n"]


@pytest.fixture
def sim_daemon(short_dir: Path) -> Iterator[Daemon]:
    yield from serve(short_dir, sim_gpus="2xH100-80GB")


def _running(d: Daemon, client: Client, go: Path) -> tuple[str, int]:
    # A whole GPU, not a time-sharer: the daemon's own residency rule (time-sharers' turns) then
    # leaves its memory where these tests put it.
    job = client.submit(WAITER, gpus=1, memory=GiB, env={"GO": str(go)})
    pid = wait_for(lambda: d.controller.lifecycle._attached.get(job.id, 0))
    return job.id, pid


def _gpu_memory(d: Daemon, pid: int) -> int:
    return sum(p.memory_used for s in d.controller.backend.status() for p in s.processes if p.pid == pid)


def _events(client: Client, job_id: str) -> dict[str, str]:
    return {e.kind: e.message for e in client.events(job_id=job_id)}


def _suspend(d: Daemon, job_id: str, requeue: bool) -> bool:
    with d.controller._lock:
        job = d.controller.store.active_job(job_id)
        assert job is not None
        return d.controller.lifecycle.suspend(job, time.time(), requeue=requeue)


def test_a_suspended_job_frees_its_gpu_memory_and_finishes_after_its_restore(
        sim_daemon: Daemon, short_dir: Path) -> None:
    go = short_dir / "go"
    with Client(socket=sim_daemon.config.socket) as client:
        job_id, pid = _running(sim_daemon, client, go)
        assert _gpu_memory(sim_daemon, pid) == GiB

        assert _suspend(sim_daemon, job_id, requeue=False)
        store = sim_daemon.controller.store
        suspended = wait_for(lambda: (j := store.active_job(job_id)) and j.reason == Reason.SUSPENDED and j)
        assert (suspended.state, suspended.suspended_bytes, suspended.suspended_from) == (JobState.PAUSED, GiB, 0)
        assert _gpu_memory(sim_daemon, pid) == 0
        assert "1.07 GB in 0.021 s (50.0 GB/s)" in _events(client, job_id)["suspended"]

        with sim_daemon.controller._lock:
            assert sim_daemon.controller.lifecycle.restore(suspended, 0, time.time())
        wait_for(lambda: store.active_job(job_id).state == JobState.RUNNING)  # type: ignore[union-attr]
        assert _gpu_memory(sim_daemon, pid) == GiB
        assert "onto GPU 0" in _events(client, job_id)["restored"]

        go.touch()
        done = wait_for(lambda: (j := client.get(job_id)).state == jobs_pb2.SUCCEEDED and j)
        assert done.exit_code == 0


def test_a_job_preempted_by_suspension_resumes_its_own_process_when_placed_again(
        sim_daemon: Daemon, short_dir: Path) -> None:
    go = short_dir / "go"
    with Client(socket=sim_daemon.config.socket) as client:
        job_id, pid = _running(sim_daemon, client, go)

        assert _suspend(sim_daemon, job_id, requeue=True)
        # Its GPU is free, so the next round places it again: placing it restores it.
        wait_for(lambda: "restored" in _events(client, job_id))
        assert sim_daemon.controller.lifecycle._attached[job_id] == pid
        assert _gpu_memory(sim_daemon, pid) == GiB
        go.touch()
        done = wait_for(lambda: (j := client.get(job_id)).state == jobs_pb2.SUCCEEDED and j)

    kinds = [e.kind for e in Client(socket=sim_daemon.config.socket).events(job_id=job_id)]
    assert kinds.count("started") == 1  # one process, never restarted
    assert kinds.index("suspended") < kinds.index("restoring") < kinds.index("restored")
    assert done.exit_code == 0


def test_without_suspension_the_job_keeps_running_and_devices_say_why(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUOS_SIM_SUSPEND", "0")
    go = short_dir / "go"
    for d in serve(short_dir, sim_gpus="1xH100-80GB"):
        with Client(socket=d.config.socket) as client:
            job_id, pid = _running(d, client, go)

            assert not _suspend(d, job_id, requeue=False)
            assert client.get(job_id).state == jobs_pb2.RUNNING and _gpu_memory(d, pid) == GiB
            (gpu,) = client.devices().devices
            assert not gpu.suspend_supported and "GPUOS_SIM_SUSPEND=0" in gpu.suspend_detail
            go.touch()
            wait_for(lambda j=job_id: client.get(j).state == jobs_pb2.SUCCEEDED)


def test_a_restarted_gpuosd_readopts_a_suspended_job_and_can_restore_it(short_dir: Path) -> None:
    go = short_dir / "go"
    first = Daemon(make_config(short_dir))
    first.controller.tick = 0.05
    first.start()
    try:
        with Client(socket=first.config.socket) as client:
            job_id, pid = _running(first, client, go)
            assert _suspend(first, job_id, requeue=False)
            wait_for(lambda: first.controller.store.active_job(job_id).reason == Reason.SUSPENDED)  # type: ignore[union-attr]
    finally:
        first.stop()  # its jobs keep running (here: stay suspended)
    for again in serve(short_dir):
        job = again.controller.store.active_job(job_id)
        assert job is not None and (job.state, job.reason, job.child_pid) == (JobState.PAUSED, Reason.SUSPENDED, pid)
        assert _gpu_memory(again, pid) == 0  # the new simulator knows its memory is on the host
        with again.controller._lock:
            assert again.controller.lifecycle.restore(job, 0, time.time())
        with Client(socket=again.config.socket) as client:
            wait_for(lambda: client.get(job_id).state == jobs_pb2.RUNNING)
            assert _gpu_memory(again, pid) == GiB
            go.touch()
            assert wait_for(lambda: (j := client.get(job_id)).state == jobs_pb2.SUCCEEDED and j).exit_code == 0


def test_a_failed_restore_requeues_the_job_to_start_afresh(sim_daemon: Daemon, short_dir: Path) -> None:
    go = short_dir / "go"
    with Client(socket=sim_daemon.config.socket) as client:
        job_id, pid = _running(sim_daemon, client, go)
        assert _suspend(sim_daemon, job_id, requeue=False)
        store = sim_daemon.controller.store
        suspended = wait_for(lambda: (j := store.active_job(job_id)) and j.reason == Reason.SUSPENDED and j)
        sim = sim_daemon.controller.backend
        assert isinstance(sim, SimBackend)
        sim.attach(0, os.getpid(), 80 * GiB, 0)  # something else took GPU 0's memory meanwhile

        with sim_daemon.controller._lock:
            assert sim_daemon.controller.lifecycle.restore(suspended, 0, time.time())
        wait_for(lambda: "restore-failed" in _events(client, job_id))
        assert "needs" in _events(client, job_id)["restore-failed"]
        sim.detach(0, os.getpid())
        go.touch()
        done = wait_for(lambda: (j := client.get(job_id)).state == jobs_pb2.SUCCEEDED and j)
        kinds = [e.kind for e in client.events(job_id=job_id)]
    assert kinds.count("started") == 2 and done.exit_code == 0  # requeued, restarted, never lost
