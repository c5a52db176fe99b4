"""`gpuosctl trace export`: gpuosd's own history, written as a trace the simulator reads back."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gpuos.cli.main import main
from gpuos.cli.replay import daemon_cluster
from gpuos.cli.trace import point_in_time
from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.errors import InvalidArgument
from gpuos.history import Pseudonyms, run_time
from gpuos.jobs import Event, JobState
from gpuos.scheduler.sim import run_simulation
from gpuos.scheduler.sim.traces import load_trace
from gpuos.units import parse_duration
from tests.conftest import DaemonProcess, wait_for

SECRET = "s3cret-value-in-env"


def _sleep(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _export(socket: str, path: Path, *flags: str) -> int:
    return main(["--socket", socket, "trace", "export", *flags, "-o", str(path)])


@pytest.fixture
def history(daemon: Daemon, client: Client) -> dict[str, object]:
    """Two batches of jobs run on a simulated gpuosd, a time between them, and one job that never ran."""
    first = [
        client.submit(_sleep(0.6), name="alpha-name", tenant="alice", qos="LS", priority="high",
                      env={"TOKEN": SECRET}, estimated_seconds=3.0),
        client.submit(_sleep(0.6), name="beta-name", tenant="bob", gpu_fraction=0.5, group="sweep",
                      group_mode="first-success", dedupe_key="work-1"),
    ]
    # Both GPUs are taken for a while, so this one waits, and is cancelled before it ever runs.
    waiting = client.submit(_sleep(5), gpus=2, tenant="alice", name="never-ran")
    client.cancel(waiting.id)
    for job in first:
        client.wait(job.id, timeout=30)
    middle = time.time()
    time.sleep(0.05)
    second = [client.submit(_sleep(0.3), tenant="bob", priority="low", name="gamma-name"),
              client.submit(_sleep(0.3), tenant="alice", qos="BE", name="delta-name")]
    for job in second:
        client.wait(job.id, timeout=30)
    return {"first": first, "second": second, "middle": middle, "socket": daemon.config.socket}


def test_an_export_reads_back_as_the_jobs_that_ran(history: dict[str, object], client: Client,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "history.jsonl"
    assert _export(str(history["socket"]), path) == 0
    said = capsys.readouterr().out
    assert "exported 4 jobs" in said and "1 finished jobs that never ran" in said
    header = json.loads(path.read_text().splitlines()[0])
    assert header["jobs"] == 4 and header["never_ran"] == 1 and not header["anonymized"]
    trace = load_trace(path)
    assert len(trace.jobs) == 4 and [len(n.gpus) for n in trace.nodes] == [2]
    # The machine a history simulates is the one gpuosctl replay simulates gpuosd as.
    assert trace.nodes == (daemon_cluster(list(client.devices().devices)),)
    ran = [client.get(j.id) for j in [*history["first"], *history["second"]]]  # type: ignore[misc]
    origin = min(j.created_at.ToNanoseconds() for j in ran) / 1e9
    by_id = {j.id: j for j in trace.jobs}
    for job in ran:
        exported = by_id[job.id]
        assert exported.arrival == pytest.approx(job.created_at.ToNanoseconds() / 1e9 - origin, abs=2e-3)
        # Never paused or preempted here: the run time is its start to its end.
        held = (job.finished_at.ToNanoseconds() - job.started_at.ToNanoseconds()) / 1e9
        assert exported.duration == pytest.approx(held, abs=0.02)
        assert exported.tenant == job.tenant and exported.estimate == job.spec.estimated_seconds
    alpha, beta = (by_id[j.id] for j in history["first"])  # type: ignore[attr-defined]
    gamma, delta = (by_id[j.id] for j in history["second"])  # type: ignore[attr-defined]
    assert (alpha.qos, alpha.priority, alpha.tenant) == ("LS", 2, "alice")
    assert (gamma.qos, gamma.priority, delta.qos) == ("BE", 0, "BE")
    assert beta.request.gpu_milli == 500 and beta.group == "sweep" and beta.dedupe_key == "work-1"
    assert [(g.tenant, g.spec.name, g.spec.mode_text) for g in trace.groups] == [("bob", "sweep", "first-success")]
    text = path.read_text()
    for secret in ("alpha-name", "never-ran", SECRET, "time.sleep", sys.executable):
        assert secret not in text
    result = run_simulation(trace, "fifo")
    assert result.jobs == 4 and result.finished == 4


def test_anonymized_exports_name_no_tenant_group_or_key(history: dict[str, object], tmp_path: Path) -> None:
    path = tmp_path / "anon.jsonl"
    assert _export(str(history["socket"]), path, "--anonymize") == 0
    text = path.read_text()
    for name in ("alice", "bob", "sweep", "work-1", *(j.id for j in history["first"])):  # type: ignore[attr-defined]
        assert name not in text
    trace = load_trace(path)
    tenants = {j.tenant for j in trace.jobs}
    assert len(tenants) == 2 and json.loads(text.splitlines()[0])["anonymized"]
    # One pseudonym per tenant within an export, so fairness by tenant and groups still work.
    grouped = [j for j in trace.jobs if j.group]
    assert len(grouped) == 1 and trace.groups[0].tenant == grouped[0].tenant and trace.groups[0].spec.name == grouped[0].group


def test_since_until_and_tenant_pick_the_jobs_submitted_then(history: dict[str, object], tmp_path: Path) -> None:
    socket, middle = str(history["socket"]), float(history["middle"])  # type: ignore[arg-type]
    ids = {k: {j.id for j in history[k]} for k in ("first", "second")}  # type: ignore[attr-defined]

    def exported(*flags: str) -> set[str]:
        path = tmp_path / f"part{len(list(tmp_path.iterdir()))}.jsonl"
        assert _export(socket, path, *flags) == 0
        return {j.id for j in load_trace(path).jobs}

    assert exported("--since", _rfc3339(middle)) == ids["second"]
    assert exported("--until", _rfc3339(middle)) == ids["first"]
    assert exported("--since", "1h", "--tenant", "bob") == {
        j.id for k in ("first", "second") for j in history[k] if j.tenant == "bob"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("flags", "named"), [
    (("--since", "yesterday"), "--since"),
    (("--until", "2025-06-01T12:00:00"), "--until"),
    (("--since", "1h", "--until", "2h"), "--until"),
])
def test_a_bad_time_exits_2_naming_its_flag(flags: tuple[str, ...], named: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any daemon is asked: the socket names nothing.
    with pytest.raises(SystemExit) as exited:
        code = _export(str(tmp_path / "none.sock"), tmp_path / "out.jsonl", *flags)
        raise SystemExit(code)
    assert exited.value.code == 2 and named in capsys.readouterr().err


def test_an_unwritable_output_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _export(str(tmp_path / "none.sock"), tmp_path / "missing" / "out.jsonl") == 2
    assert "-o:" in capsys.readouterr().err
    assert _export(str(tmp_path / "none.sock"), tmp_path) == 2


def test_relative_times_count_back_from_now() -> None:
    assert point_in_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert point_in_time("7d", now=1e6) == 1e6 - 7 * 86400
    assert point_in_time("1w", now=1e6) == 1e6 - 7 * 86400
    assert point_in_time("30min", now=1e6) == 1e6 - 1800
    assert point_in_time("2025-06-01T12:00:00Z") == datetime(2025, 6, 1, 12, tzinfo=timezone.utc).timestamp()


def test_a_duration_ago_in_an_unknown_unit_names_the_units() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="unknown unit 'y'.*use us, ms, s, m, h, d or w"):
        point_in_time("2y")


def test_days_and_weeks_are_durations_only_where_a_caller_asks_for_them() -> None:
    assert (parse_duration("2d", days=True), parse_duration("1w", days=True)) == (2 * 86400, 7 * 86400)
    with pytest.raises(InvalidArgument, match="unknown unit 'd' in '2d'; use us, ms, s, m or h$"):
        parse_duration("2d")


def _event(t: float, state: JobState) -> Event:
    return Event(seq=0, time=t, job_id="j", kind=state.value.lower(), state=state)


def test_run_time_adds_the_stretches_on_the_gpu_and_leaves_out_queueing_and_pauses() -> None:
    R, P, Q = JobState.RUNNING, JobState.PAUSED, JobState.PENDING
    events = [_event(0, Q), _event(5, R), _event(8, P), _event(10, R), _event(11, Q), _event(20, R),
              _event(24, JobState.SUCCEEDED)]
    run = run_time(events)
    assert run.seconds == pytest.approx(3 + 1 + 4) and run.first_start == 5
    assert run_time([_event(0, Q), _event(3, JobState.CANCELLED)]).first_start is None


def test_pseudonyms_are_keyed_per_export() -> None:
    one, two = Pseudonyms(), Pseudonyms()
    assert one.of("tenant", "alice") == one.of("tenant", "alice") != two.of("tenant", "alice")
    assert one.of("tenant", "alice") != one.of("group", "alice") and one.of("tenant", "") == ""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as other users")
def test_a_tenant_exports_only_their_own_jobs(gpuosd: DaemonProcess) -> None:
    alice, bob = 54321, 54322
    for uid in (alice, bob):
        assert gpuosd.ctl("submit", "--", "true", user=uid).returncode == 0
    with Client(socket=gpuosd.socket) as c:
        wait_for(lambda: all(j.state in (4, 5, 6) for j in c.list()) and len(c.list()) == 2)
    out = gpuosd.base / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    mine = out / "alice.jsonl"
    result = gpuosd.ctl("trace", "export", "-o", str(mine), user=alice)
    assert result.returncode == 0, result.stderr
    assert {j.tenant for j in load_trace(mine).jobs} == {"uid54321"}
    other = gpuosd.ctl("trace", "export", "--tenant", "uid54322", "-o", str(out / "bob.jsonl"), user=alice)
    assert other.returncode == 1 and "PERMISSION_DENIED" in other.stderr
