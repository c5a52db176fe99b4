"""Deploying a policy under a guard: the guard's grammar, its reading, the rollback, and its durability."""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gpuos.cli.main import main
from gpuos.client import ApiError, Client, jobs_pb2
from gpuos.daemon.daemon import Daemon
from gpuos.daemon.deploy import Deployment
from gpuos.errors import InvalidArgument
from gpuos.guard import GuardSpec, parse_guard, percentile, read
from gpuos.jobs import Job, JobKind, JobSpec, JobState, Qos, Resources
from gpuos.policy_choice import PolicyChoice
from gpuos.scheduler.registry import get_policy
from gpuos.store import Store
from tests.conftest import serve, wait_for

# Never places a latency-class job: the deliberately bad candidate a guard must catch.
STARVE_LATENCY = '''
from gpuos.scheduler import Policy


class StarveLatency(Policy):
    name = "starve-latency"
    description = "never places a latency-class job"

    def fits(self, job, node, gpus, snap):
        return job.qos not in ("LS", "Guaranteed")
'''


# -- the grammar ---------------------------------------------------------------------------------


def test_a_delay_guard_takes_a_duration_bound_and_a_window() -> None:
    spec = parse_guard("p99_queue_delay_ls<=30s", "5m")
    assert (spec.metric, spec.op, spec.bound, spec.window, spec.min_samples) == ("p99_queue_delay_ls", "<=", 30, 300, 5)


def test_an_attainment_guard_takes_a_fraction_or_a_percentage() -> None:
    assert parse_guard("slo_attainment>=0.95", "60s").bound == 0.95
    assert parse_guard("slo_attainment>=90%", "60s", 3).bound == pytest.approx(0.9)


@pytest.mark.parametrize(("guard", "window", "field", "words"), [
    ("p99_latency<=3s", "1m", "guard", "unknown metric"),
    ("p99_queue_delay_ls>=3s", "1m", "guard", "guarded with <="),
    ("slo_attainment<=0.9", "1m", "guard", "guarded with >="),
    ("p99_queue_delay_ls<=soon", "1m", "guard", "not a duration"),
    ("slo_attainment>=1.5", "1m", "guard", "fraction from 0 to 1"),
    ("p99_queue_delay_ls", "1m", "guard", "METRIC<=BOUND"),
    ("p99_queue_delay_ls<=3s", "", "window", "needs a window"),
    ("p99_queue_delay_ls<=3s", "0s", "window", "positive"),
    ("p99_queue_delay_ls<=3s", "a while", "window", "not a duration"),
])
def test_a_bad_guard_is_refused_naming_its_field(guard: str, window: str, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_guard(guard, window)
    assert caught.value.field == field and words in caught.value.problem


# -- the reading ---------------------------------------------------------------------------------


def _job(created: float, started: float | None = None, finished: float | None = None, qos: Qos = Qos.LS,
         gpus: int = 1) -> Job:
    state = JobState.PENDING if started is None else JobState.RUNNING if finished is None else JobState.SUCCEEDED
    spec = JobSpec(name="j", kind=JobKind.PROCESS, resources=Resources(gpus=gpus), qos=qos)
    return Job(id=f"j{created}", spec=spec, owner_uid=0, state=state, created_at=created, started_at=started,
               finished_at=finished)


def test_the_percentile_interpolates_like_numpy() -> None:
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert percentile([5.0], 99) == 5.0


def test_waiting_latency_jobs_count_with_their_wait_so_far() -> None:
    spec = GuardSpec("p99_queue_delay_ls", "<=", 5.0, 60.0, min_samples=2)
    reading = read(spec, [_job(100.0), _job(101.0)], since=90.0, now=120.0)
    assert reading.samples == 2 and reading.value == pytest.approx(19.99) and reading.breached


def test_best_effort_and_cpu_only_jobs_are_not_the_guards_samples() -> None:
    spec = GuardSpec("p99_queue_delay_ls", "<=", 5.0, 60.0, min_samples=1)
    reading = read(spec, [_job(100.0, qos=Qos.BE), _job(100.0, gpus=0)], since=90.0, now=120.0)
    assert reading.samples == 0 and math.isnan(reading.value) and not reading.judged


def test_a_window_with_too_few_samples_is_not_judged() -> None:
    spec = GuardSpec("p99_queue_delay_ls", "<=", 1.0, 60.0, min_samples=3)
    reading = read(spec, [_job(100.0), _job(100.0)], since=90.0, now=120.0)
    assert reading.value > spec.bound and not reading.judged and not reading.breached


def test_jobs_that_started_before_the_window_are_out_of_it() -> None:
    spec = GuardSpec("p99_queue_delay_ls", "<=", 5.0, 10.0, min_samples=1)
    old, recent = _job(50.0, started=80.0), _job(105.0, started=112.0)
    reading = read(spec, [old, recent], since=0.0, now=120.0)
    assert reading.samples == 1 and reading.value == pytest.approx(7.0)


def test_slo_attainment_counts_the_ended_jobs_by_the_simulators_rule() -> None:
    # SLO = 2 x run + 10 s: a 1 s run met it within 12 s of its submit, and missed it after.
    spec = GuardSpec("slo_attainment", ">=", 0.9, 60.0, min_samples=2)
    met, missed = _job(100.0, started=101.0, finished=102.0), _job(100.0, started=115.0, finished=116.0)
    reading = read(spec, [met, missed, _job(100.0)], since=90.0, now=120.0)
    assert reading.samples == 2 and reading.value == 0.5 and reading.breached


# -- the deployment's read of the store -----------------------------------------------------------

LS_GPU = JobSpec(name="j", kind=JobKind.PROCESS, command=("true",), resources=Resources(gpus=1), qos=Qos.LS)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path)
    yield s
    s.close()


def _guarded(store: Store, guard: str) -> tuple[Deployment, float]:
    """A deployment that has just switched fifo -> srtf under ``guard`` (a 1-minute window, 1 sample)."""
    deployment = Deployment(store, PolicyChoice("fifo"), get_policy("fifo"), lambda policy: None, threading.RLock())
    now = time.time()
    deployment.set(PolicyChoice("srtf"), get_policy("srtf"), parse_guard(guard, "1m", 1), now)
    return deployment, now


def test_a_reading_takes_waiting_jobs_from_memory_and_ended_ones_in_one_read(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.submit(LS_GPU, 0)  # queued before the deploy: never the guard's
    deployment, now = _guarded(store, "p99_queue_delay_ls<=1h")
    store.submit_batch([(LS_GPU, "", None)] * 600, 0)
    ended, _ = store.submit(LS_GPU, 0)
    store.update(ended.id, state=JobState.SUCCEEDED, started_at=now + 0.5, finished_at=now + 1.0)

    def paged(*args: object, **kwargs: object) -> None:
        raise AssertionError("the guard paged through the store's jobs")

    for name in ("page", "list", "history"):
        monkeypatch.setattr(store, name, paged)
    reads: list[float] = []
    finished_since = store.finished_since
    monkeypatch.setattr(store, "finished_since", lambda t, **kw: reads.append(t) or finished_since(t, **kw))
    reading = deployment.watch_round(now + 2.0)
    assert reading is not None and reading.samples == 601 and reads == [now]


def test_a_reading_overtaken_by_a_policy_set_switches_nothing_back(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment, now = _guarded(store, "p99_queue_delay_ls<=1s")
    store.submit(LS_GPU, 0)  # still waiting 10 s on: a breach
    finished_since = store.finished_since

    def set_meanwhile(t: float, **kw: int) -> list[Job]:
        deployment.set(PolicyChoice("fifo"), get_policy("fifo"), None, now + 5.0)
        return finished_since(t, **kw)

    monkeypatch.setattr(store, "finished_since", set_meanwhile)
    assert deployment.watch_round(now + 10.0) is None
    status = deployment.status()
    assert status.choice.name == "fifo" and status.rollbacks == 0 and status.watch is None
    assert [s.kind for s in status.switches] == ["guarded-set", "set"]


# -- in gpuosd -----------------------------------------------------------------------------------


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[Daemon]:
    yield from serve(short_dir, metrics_listen="127.0.0.1:0")


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(socket=daemon.config.socket) as c:
        yield c


@pytest.mark.parametrize(("guard", "window", "field"), [
    ("latency<=3s", "1m", "guard"), ("p99_queue_delay_ls>=3s", "1m", "guard"), ("p99_queue_delay_ls<=3s", "x", "window"),
])
def test_gpuosd_refuses_a_bad_guard_naming_the_field(client: Client, guard: str, window: str, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        client.set_policy("srtf", guard=guard, window=window)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details.startswith(f"{field}:")
    assert client.policy_status().active.name == "fifo"


@pytest.mark.parametrize(("argv", "flag"), [
    (["policy", "set", "srtf", "--guard", "p99_queue_delay_ls>=3s", "--window", "1m"], "--guard"),
    (["policy", "set", "srtf", "--guard", "nope<=3s", "--window", "1m"], "--guard"),
    (["policy", "set", "srtf", "--guard", "slo_attainment>=0.9", "--window", "soon"], "--window"),
    (["policy", "set", "srtf", "--window", "1m"], "--window"),
])
def test_the_cli_exits_2_naming_the_flag(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", "no-gpuosd-here.sock", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpuosctl: {flag}:") and err.count("\n") == 1


def _metric(daemon: Daemon, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name))


def test_a_breached_guard_switches_back_with_an_event_and_a_metric(daemon: Daemon, client: Client) -> None:
    client.set_policy(source=STARVE_LATENCY, filename="starve.py", guard="p99_queue_delay_ls<=1s", window="30s",
                      min_samples=3)
    jobs = [client.submit(["sleep", "0.2"], gpus=1, qos="LS") for _ in range(3)]
    wait_for(lambda: client.policy_status().active.name == "fifo", timeout=20)
    # Back on fifo, the starved jobs run.
    wait_for(lambda: all(client.get(j.id).state == jobs_pb2.SUCCEEDED for j in jobs))
    status = client.policy_status()
    assert status.rollbacks == 1 and not status.HasField("guard")
    rollback = status.switches[-1]
    assert (rollback.kind, rollback.from_policy, rollback.to_policy) == ("rollback", "starve-latency", "fifo")
    assert "p99_queue_delay_ls" in rollback.reason and "30s" in rollback.reason and "3 samples" in rollback.reason
    events = [e for e in client.events() if e.kind == "policy-rollback"]
    assert len(events) == 1 and "bound 1" in events[0].message
    assert _metric(daemon, 'gpuos_policy_switches_total{kind="rollback"}') == 1


def test_a_guard_that_holds_keeps_the_deployed_policy(daemon: Daemon, client: Client) -> None:
    client.set_policy("srtf", guard="p99_queue_delay_ls<=30s", window="30s", min_samples=3)
    jobs = [client.submit(["true"], gpus=1, qos="LS") for _ in range(3)]
    wait_for(lambda: all(client.get(j.id).state == jobs_pb2.SUCCEEDED for j in jobs))
    wait_for(lambda: client.policy_status().guard.judged)
    status = client.policy_status()
    assert status.active.name == "srtf" and status.rollbacks == 0
    assert status.guard.samples >= 3 and status.guard.value <= 30
    assert _metric(daemon, 'gpuos_policy_guard_bound{metric="p99_queue_delay_ls"}') == 30


def test_a_restarted_gpuosd_keeps_watching_the_guard(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = serve(short_dir)
    d = next(first)
    with Client(socket=d.config.socket) as c:
        c.set_policy(source=STARVE_LATENCY, filename="starve.py", guard="p99_queue_delay_ls<=2s", window="1m")
    next(first, None)
    again = serve(short_dir)
    d = next(again)

    def loaded(source: str, filename: str) -> None:
        raise AssertionError(f"{filename} was loaded again to answer a read")

    # Loaded once, at the start; what it is comes from then on from the policy that runs.
    monkeypatch.setattr("gpuos.policy_choice.load_file", loaded)
    try:
        with Client(socket=d.config.socket) as c:
            status = c.policy_status()
            assert (status.active.name, status.active.filename) == ("starve-latency", "starve.py")
            assert status.active.description == "never places a latency-class job"
            listed = [(p.name, p.description) for p in c.policies() if p.active]
            assert listed == [("starve-latency", "never places a latency-class job")]
            assert status.guard.text == "p99_queue_delay_ls<=2s" and status.guard.previous == "fifo"
            assert [s.kind for s in status.switches] == ["guarded-set"]
    finally:
        next(again, None)
