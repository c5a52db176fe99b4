"""``--share executor``: kernel jobs of several tenants in one per-GPU kernel executor.

The API and the CLI refuse what the executor cannot run; the scheduler seats at most
MAX_EXECUTOR_JOBS on a GPU, never beside another way of sharing, and models the executor's
priority rule; the memory watchdog leaves the executor's own memory alone; and a gpuosd on the
simulated backend runs two kernel jobs of different priorities in one executor (the kernels on
the CPU under Triton's interpreter), where cancelling one leaves the other running.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuos.api.convert import spec_from_pb
from gpuos.cli.main import main
from gpuos.client import Client
from gpuos.daemon.health import Health
from gpuos.daemon.partitioning import Partitions
from gpuos.devices.backend import DeviceStatus, ProcessUsage
from gpuos.devices.sim import SimBackend
from gpuos.errors import InvalidArgument
from gpuos.jobs import (
    EXECUTOR,
    TIMESLICE,
    Job,
    JobKind,
    JobSpec,
    JobState,
    Partition,
    PartitionKind,
    Placement,
    Reason,
    Resources,
)
from gpuos.partitions.memory import overruns, usage_by_group
from gpuos.scheduler import JobView, Place, get_policy, schedule
from gpuos.scheduler.explain import WaitKind
from gpuos.scheduler.snapshot import MAX_EXECUTOR_JOBS, MILLI
from gpuos.units import GiB
from gpuos.v1 import common_pb2, jobs_pb2
from tests.conftest import serve, wait_for
from tests.scheduler.helpers import node, place, snap
from tests.scheduler.test_explain import why
from tests.scheduler.test_state import h100s, start

NO_DAEMON = "/nonexistent/gpuos.sock"


def executor_job(id: str, priority: int = 1, **resources: object) -> JobView:
    return JobView(id, Resources(sharing=EXECUTOR, **resources), priority=priority)  # type: ignore[arg-type]


# -- bad input ------------------------------------------------------------------------------------

def submitted(sharing: str, gpus: int = 1, kernel: bool = True) -> jobs_pb2.JobSpec:
    spec = jobs_pb2.JobSpec(resources=common_pb2.Resources(gpus=gpus, sharing=sharing))
    if kernel:
        spec.kernel = "vattention-decode"
    else:
        spec.command.extend(["python", "train.py"])
    return spec


def test_a_kernel_job_may_ask_for_the_executor() -> None:
    spec = spec_from_pb(submitted(EXECUTOR), "alice")
    assert spec.kind == JobKind.KERNEL and spec.resources.executor


def test_a_process_job_in_the_executor_is_refused_naming_resources_sharing() -> None:
    with pytest.raises(InvalidArgument) as refused:
        spec_from_pb(submitted(EXECUTOR, kernel=False), "alice")
    assert refused.value.field == "resources.sharing"
    assert "kernel jobs only" in refused.value.problem


def test_an_executor_job_on_two_gpus_is_refused_like_a_time_sharer() -> None:
    with pytest.raises(InvalidArgument) as refused:
        spec_from_pb(submitted(EXECUTOR, gpus=2), "alice")
    assert refused.value.field == "resources.gpus"


def test_the_cli_refuses_a_command_with_share_executor_in_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--socket", NO_DAEMON, "submit", "--share", "executor", "--", "python", "train.py"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("gpuosctl: --share: executor runs --kernel jobs only")


# -- the scheduler --------------------------------------------------------------------------------

def test_a_gpu_seats_at_most_max_executor_jobs_and_the_next_waits_for_a_slot() -> None:
    n, running = node("a", 1), []
    for k in range(MAX_EXECUTOR_JOBS):
        n, r = place(n, executor_job(f"r{k}", memory_bytes=GiB))
        running.append(r)
    s = snap([n], [executor_job("j", memory_bytes=GiB)], running)
    assert not [d for d in schedule(s, get_policy("fifo")) if isinstance(d, Place)]
    reason = why(s, "j")
    assert reason.kind == WaitKind.BUSY
    assert f"executor slots full ({MAX_EXECUTOR_JOBS} jobs) on 1 GPU" in reason.message


def test_executor_jobs_take_a_quarter_of_the_gpu_by_default_and_their_memory_adds_up() -> None:
    n, running = node("a", 1), []
    for k in range(4):
        n, r = place(n, executor_job(f"r{k}"))
        running.append(r)
    assert n.gpus[0].memory_free == 0
    reason = why(snap([n], [executor_job("j")], running), "j")
    assert reason.message.startswith("needs 8.0 GiB in a GPU's kernel executor; the most free on one GPU is 0")


@pytest.mark.parametrize("other", [Resources(sharing=TIMESLICE, memory_bytes=GiB), Resources(gpu_milli=300)])
def test_an_executor_never_shares_a_gpu_with_another_way_of_sharing(other: Resources) -> None:
    n, neighbour = place(node("a", 1), JobView("other", other))
    s = snap([n], [executor_job("j", memory_bytes=GiB)], [neighbour])
    assert not [d for d in schedule(s, get_policy("fifo")) if isinstance(d, Place)]
    # ... nor the other way round.
    n, seated = place(node("b", 1), executor_job("e", memory_bytes=GiB))
    s = snap([n], [JobView("k", other)], [seated])
    assert not [d for d in schedule(s, get_policy("fifo")) if isinstance(d, Place)]


def test_in_the_model_the_top_priority_shares_the_executor_by_weight_and_a_lower_one_waits() -> None:
    state = h100s(1)
    start(state, "low", Resources(sharing=EXECUTOR, memory_bytes=GiB), priority=0)
    assert state.rate("low") == 1.0  # alone: the whole GPU
    start(state, "a", Resources(sharing=EXECUTOR, gpu_milli=750, memory_bytes=GiB), now=10.0, priority=2)
    start(state, "b", Resources(sharing=EXECUTOR, gpu_milli=250, memory_bytes=GiB), now=10.0, priority=2)
    assert state.rate("low") == 0.0
    assert state.rate("a") == pytest.approx(0.75) and state.rate("b") == pytest.approx(0.25)
    assert state.attained("a", 20.0) == pytest.approx(7.5)
    state.finish("a", 20.0)
    state.finish("b", 20.0)
    assert state.rate("low") == 1.0
    assert state.attained("low", 30.0) == pytest.approx(20.0)


# -- the memory watchdog --------------------------------------------------------------------------

def test_the_executors_own_gpu_memory_is_no_jobs_overrun() -> None:
    # The executor (pid 50) holds its jobs' memory; a job whose process group it shared would
    # otherwise be charged all of it.
    statuses = [DeviceStatus(0, True, 0.0, 30 * GiB, (ProcessUsage(50, 28 * GiB), ProcessUsage(60, GiB)))]
    limits = {"job": (7, (0,), 2 * GiB)}
    group_of = {50: 7, 60: 7}.__getitem__
    assert overruns(limits, usage_by_group(statuses, group_of)) != []
    assert overruns(limits, usage_by_group(statuses, group_of, exclude={50})) == []


# -- the executor's life under gpuosd -------------------------------------------------------------

needs_kernels = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None,
    reason="the executor runs Triton kernels (torch and triton not installed)",
)


def executor_placed(job_id: str, index: int = 0) -> Job:
    spec = JobSpec(name=job_id, kind=JobKind.KERNEL, kernel="vattention-decode",
                   resources=Resources(sharing=EXECUTOR, memory_bytes=GiB))
    placement = Placement(devices=(index,), partition=Partition(PartitionKind.EXECUTOR),
                          granted=Resources(gpus=1, gpu_milli=MILLI, memory_bytes=GiB, sharing=EXECUTOR))
    return Job(job_id, spec, owner_uid=0, state=JobState.RUNNING, placement=placement)


@needs_kernels
def test_an_executor_outlives_gpuosd_is_adopted_and_its_death_is_a_fault_of_its_jobs(short_dir: Path) -> None:
    backend = SimBackend("1xH100-80GB")
    first = Partitions(backend, backend.devices(), short_dir / "mps", executor_root=short_dir / "executor")
    job = executor_placed("k1")
    assert job.placement is not None
    first.create(job.placement)  # spawns it; the control loop does not wait
    deadline = time.time() + 60
    while not first.executor_ready(0):
        assert time.time() < deadline, "the executor did not come up"
        time.sleep(0.05)
    (pid,) = first.executor_pids()
    # A restarted gpuosd knows nothing but the socket path: it finds the executor and adopts it.
    second = Partitions(backend, backend.devices(), short_dir / "mps", executor_root=short_dir / "executor")
    second.readopt(job.placement)
    assert second.executor_pids() == {pid}
    assert set(second.admit(job)) == {"GPUOS_EXECUTOR_TOKEN"}
    health = Health(backend, backend.devices(), second, 3)
    assert health.check(0.0, [job]).faults == ()
    assert second.executors is not None
    second.executors.kill(0)
    wait_for(lambda: second.executor_died(0))
    found = health.check(1.0, [job, placed_process("p1")])
    assert [(f.job.id, f.reason) for f in found.faults] == [("k1", Reason.EXECUTOR_LOST)]
    assert "kernel executor of GPU 0 died" in found.faults[0].message
    assert health.check(2.0, [job]).faults == ()  # reported once
    first.executors.forget(0)  # type: ignore[union-attr]  # reap the child


def placed_process(job_id: str) -> Job:
    spec = JobSpec(name=job_id, kind=JobKind.PROCESS, resources=Resources())
    return Job(job_id, spec, owner_uid=0, state=JobState.RUNNING,
               placement=Placement(devices=(0,), partition=Partition(PartitionKind.EXCLUSIVE)))


# Tiny shapes: a step takes about 0.1 s in Triton's interpreter.
TINY = {"batch": 1, "heads": 1, "kv_heads": 1, "dim": 16, "context": 64, "page_size": 16, "sink": 0,
        "local": 16, "dtype": "fp32"}


def finished_order(client: Client, job_ids: set[str]) -> list[str]:
    """The jobs of ``job_ids`` in the order their ends were recorded (the events' order)."""
    ended = (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED)
    return [e.job_id for e in client.events() if e.state in ended and e.job_id in job_ids]


@pytest.fixture
def one_gpu(short_dir: Path) -> Iterator[Client]:
    """A gpuosd with one simulated GPU, so that every executor job shares its one executor."""
    for daemon in serve(short_dir, sim_gpus="1xH100-80GB"):
        with Client(socket=daemon.config.socket) as client:
            yield client


@needs_kernels
def test_two_kernel_jobs_share_one_executor_by_priority_and_a_cancel_leaves_the_rest_running(
        one_gpu: Client) -> None:
    client = one_gpu

    def submit(priority: str, steps: int) -> str:
        return client.submit(kernel="vattention-decode", sharing=EXECUTOR, priority=priority,
                             params={**TINY, "steps": steps}).id

    # Submitted (and so started) highest first, so no job runs ahead for want of a rival.
    high = submit("high", 4)
    doomed = submit("normal", 2000)
    low = submit("low", 6)
    wait_for(lambda: client.get(high).state == jobs_pb2.SUCCEEDED, timeout=90)
    got = client.get(high)
    assert got.placement.partition == "executor"
    assert got.progress.steps_done == got.progress.steps_total == 4
    # The high job had the executor's atoms first; the others wait (RUNNING) meanwhile.
    assert client.get(low).state == jobs_pb2.RUNNING and client.get(doomed).state == jobs_pb2.RUNNING
    client.cancel(doomed)
    wait_for(lambda: client.get(low).state == jobs_pb2.SUCCEEDED, timeout=90)
    assert client.get(doomed).state == jobs_pb2.CANCELLED
    assert client.get(low).progress.steps_done == 6
    assert finished_order(client, {low, doomed, high}) == [high, doomed, low]
