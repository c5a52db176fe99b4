"""SLO-driven colocation: the controller on a synthetic plant, the latency log both ways, bad
input for an SLO, and gpuosd throttling a best-effort MPS neighbour to hold a latency job's SLO."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpuos.api.convert import spec_from_pb
from gpuos.client import ApiError, Client
from gpuos.daemon.colocation import TRUNCATE_AT, LatencyReader
from gpuos.errors import InvalidArgument
from gpuos.latency import LATENCY_FILE, LatencyLog, parse_line
from gpuos.partitions.slo import Sample, SloSettings, SloState, p99, tick
from gpuos.units import parse_duration
from gpuos.v1 import jobs_pb2
from tests.conftest import serve, wait_for

ROOT = Path(__file__).resolve().parent.parent
TICK = 0.5  # seconds between the plant's controller ticks
RATE = 200  # the plant's requests per second


class Plant:
    """A latency job beside a best-effort one: a request takes base / (1 - interference * d)
    times (1 + U(0, noise)), d the neighbour's share of time (0 while it is suspended)."""

    def __init__(self, base: float, interference: float, noise: float, seed: int) -> None:
        self.base, self.interference, self.noise = base, interference, noise
        self.rng = random.Random(seed)

    def p99_at(self, d: float) -> float:
        return self.base / (1 - self.interference * d) * (1 + 0.99 * self.noise)

    def true_share(self, slo: float) -> float:
        """The largest share whose p99 is within ``slo``."""
        return min(1.0, max(0.0, (1 - self.base * (1 + 0.99 * self.noise) / slo) / self.interference))

    def samples(self, state: SloState, start: float) -> list[Sample]:
        d = 0.0 if state.suspend else state.share
        n = int(RATE * TICK)
        return [Sample(start + TICK * (i + 1) / n,
                       self.base / (1 - self.interference * d) * (1 + self.rng.uniform(0, self.noise)))
                for i in range(n)]


def drive(plant: Plant | None, slo: float, seconds: float, state: SloState | None = None,
          start: float = 1000.0) -> tuple[SloState, list[tuple[SloState, list[Sample]]], float]:
    """Run the controller against ``plant`` (None: no requests) for ``seconds``; every tick's state and samples."""
    state = state or SloState()
    now, ticks = start, []
    while now < start + seconds:
        samples = plant.samples(state, now) if plant is not None else []
        now += TICK
        state = tick(state, samples, now, slo)
        ticks.append((state, samples))
    return state, ticks, now


plants = st.builds(
    lambda base, interference, ratio, noise, seed: (Plant(base, interference, noise, seed), base * ratio),
    st.floats(0.001, 0.05), st.floats(0.3, 0.95), st.floats(1.3, 4.0), st.floats(0.0, 0.2), st.integers(0, 2**16),
)


# -- the pure controller --------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(plants)
# A share that holds the SLO just below 1 (0.99): each probe of the full share breaks it by 3%.
@example((Plant(0.03125, 0.75, 0.0, 0), 0.03125 * 3.875))
def test_the_controller_holds_a_holdable_slo_and_reports_the_right_sized_share(case: tuple[Plant, float]) -> None:
    plant, slo = case
    floor = SloSettings().floor
    true = plant.true_share(slo)
    state, ticks, _ = drive(plant, slo, 120)
    # Each tick's samples were taken at the share the tick before it left.
    shares = [1.0] + [0.0 if st.suspend else st.share for st, _ in ticks[:-1]]
    held: list[float] = []
    probed: list[float] = []
    for share, (_, samples) in list(zip(shares, ticks, strict=True))[-120:]:  # the last minute
        (held if share <= true + 1e-9 else probed).extend(x.seconds for x in samples)
    late = held + probed
    if true >= floor:
        # Held over the last minute, but for the probes that test a share which broke the SLO
        # again every 30 s: those are a small part of the minute, and the rest holds it.
        assert len(probed) <= 0.05 * len(late)
        assert p99(held) <= slo * 1.02
        assert state.right_share is not None
        # Right-sizing: never above the plant's true share, and short of it by at most the dead
        # band's worth of share plus one step.
        margin_share = max(0.0, min(1.0, (1 - plant.base * (1 + 0.99 * plant.noise) / (slo * 0.9))
                                    / plant.interference))
        assert state.right_share <= true + 1e-6
        assert state.right_share >= min(margin_share, true) - SloSettings().increase - 0.02
    elif plant.p99_at(0.0) < slo * 0.9:
        # Not even the floor holds it, suspending the neighbour does: it stays suspended.
        assert state.suspend and p99(late) <= slo


def test_the_controller_lets_go_when_the_load_leaves() -> None:
    plant, slo = Plant(0.01, 0.9, 0.05, 1), 0.015
    state, _, now = drive(plant, slo, 30)
    assert state.share < 0.6
    state, ticks, _ = drive(None, slo, 40, state, now)
    assert state.share == 1.0 and not state.suspend
    # Step by step, never at once: a load that returns meets a throttle still in place.
    shares = [s.share for s, _ in ticks]
    assert all(b - a <= SloSettings().increase + 1e-9 for a, b in zip(shares, shares[1:], strict=False))


def test_the_controller_lets_go_when_the_interference_leaves() -> None:
    slo = 0.015
    state, _, now = drive(Plant(0.01, 0.9, 0.05, 2), slo, 30)
    assert state.share < 0.6
    state, _, _ = drive(Plant(0.01, 0.0, 0.05, 3), slo, 90, state, now)
    assert state.share == 1.0


def test_noise_inside_the_dead_band_moves_nothing() -> None:
    # p99 sits between 0.9 x SLO and the SLO at every share: the controller must hold still.
    slo = 0.0105
    state, ticks, _ = drive(Plant(0.01, 0.0, 0.04, 4), slo, 60)
    assert {s.share for s, _ in ticks} == {1.0}


def test_a_floor_that_breaks_the_slo_suspends_the_neighbour_and_comfort_restores_it() -> None:
    plant, slo = Plant(0.01, 0.99, 0.0, 5), 0.0104  # only d = 0 holds it
    state, ticks, now = drive(plant, slo, 20)
    assert state.suspend and state.share == SloSettings().floor
    assert p99([x.seconds for _, samples in ticks[-10:] for x in samples]) <= slo
    # The neighbour's load goes away: comfortable verdicts restore it.
    state, _, _ = drive(Plant(0.005, 0.0, 0.0, 6), slo, 10, state, now)
    assert not state.suspend


def test_an_slo_that_fails_with_the_neighbours_suspended_is_not_theirs_to_hold() -> None:
    plant, slo = Plant(0.02, 0.5, 0.0, 7), 0.01  # twice the SLO even alone
    state, ticks, _ = drive(plant, slo, 40)
    # Suspended, found useless, restored to the floor and tried again only a probe's time later:
    # the neighbour is suspended for the smaller part of the time, not for good.
    suspended = sum(s.suspend for s, _ in ticks) / len(ticks)
    assert 0 < suspended < 0.5
    assert "restored to the floor" in " ".join(s.why for s, _ in ticks)


def test_a_verdict_waits_for_enough_samples_taken_after_the_last_change() -> None:
    slo = 0.01
    state = tick(SloState(), [Sample(100.0 + i / 100, 0.05) for i in range(60)], 100.6, slo)
    assert state.share == 0.5
    # Slow samples from before the change settled move nothing.
    again = tick(state, [Sample(100.61 + i / 1000, 0.05) for i in range(100)], 100.72, slo)
    assert again.share == 0.5


# -- the latency log ------------------------------------------------------------------------------


def test_report_latency_appends_one_line_per_sample_from_threads(tmp_path: Path) -> None:
    path = tmp_path / LATENCY_FILE
    script = textwrap.dedent("""
        import threading, gpuos
        def work():
            for i in range(500):
                gpuos.report_latency(0.001 * (i % 7))
        threads = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "GPUOS_LATENCY_FILE": str(path)})
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2000 and all(parse_line(line) is not None for line in lines)


def test_report_latency_outside_gpuosd_warns_once_and_does_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GPUOS_LATENCY_FILE", "GPUOS_PROGRESS_DIR_FD")}
    run = subprocess.run([sys.executable, "-c", "import gpuos\nfor _ in range(3): gpuos.report_latency(0.01)"],
                         env=env, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert run.stderr.count("not running under gpuosd") == 1
    assert list(tmp_path.iterdir()) == []


def test_report_latency_refuses_a_latency_that_is_no_duration(tmp_path: Path) -> None:
    log = LatencyLog(os.open(tmp_path / "l", os.O_WRONLY | os.O_CREAT))
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            log.report(bad)
    log.close()


def test_the_reader_takes_whole_lines_and_skips_garbage(tmp_path: Path) -> None:
    path = tmp_path / LATENCY_FILE
    reader = LatencyReader(path)
    assert reader.read(200.0) == []  # no log yet
    with open(path, "ab") as f:
        f.write(b"100.0 0.010\nnot a sample\n100.5 -1\n100.6 nan\n\x00\xff garbage\n100.7 0.0")
        f.flush()
        assert reader.read(200.0) == [Sample(100.0, 0.010)]
        f.write(b"20\n300.0 0.5\n")  # completes the partial line; a time in the future is taken as now
        f.flush()
        assert reader.read(200.0) == [Sample(100.7, 0.020), Sample(200.0, 0.5)]


def test_the_reader_empties_a_long_log_once_read_and_follows_the_writer(tmp_path: Path) -> None:
    path = tmp_path / LATENCY_FILE
    log = LatencyLog(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
    reader = LatencyReader(path)
    written = read = 0
    emptied = False
    while written < 2 * TRUNCATE_AT // 25:  # twice past the limit, in lines of about 25 bytes
        for _ in range(5000):
            log.report(0.001)
        written += 5000
        read += len(reader.read(1e10))
        emptied = emptied or path.stat().st_size == 0
    assert emptied and read == written
    log.report(0.002)
    assert [s.seconds for s in reader.read(1e10)] == [0.002]


def test_the_reader_refuses_a_link_planted_in_place_of_the_log(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("1.0 2.0\n")
    (tmp_path / "jobdir").mkdir()
    (tmp_path / "jobdir" / LATENCY_FILE).symlink_to(secret)
    assert LatencyReader(tmp_path / "jobdir" / LATENCY_FILE).read(10.0) == []
    os.unlink(tmp_path / "jobdir" / LATENCY_FILE)
    os.link(secret, tmp_path / "jobdir" / LATENCY_FILE)  # a second name of another file
    assert LatencyReader(tmp_path / "jobdir" / LATENCY_FILE).read(10.0) == []
    assert secret.read_text() == "1.0 2.0\n"


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, problem", [
    (-0.01, "non-negative"), (math.nan, "non-negative"), (math.inf, "non-negative"), (86400.5, "absurd"),
])
def test_the_api_refuses_an_slo_that_is_no_latency(seconds: float, problem: str) -> None:
    spec = jobs_pb2.JobSpec(command=["true"], qos="LS", slo_p99_seconds=seconds)
    with pytest.raises(InvalidArgument, match=problem) as caught:
        spec_from_pb(spec, "t")
    assert caught.value.field == "slo_p99_seconds"


def test_the_api_refuses_an_slo_on_a_best_effort_job() -> None:
    with pytest.raises(InvalidArgument, match="qos LS") as caught:
        spec_from_pb(jobs_pb2.JobSpec(command=["true"], slo_p99_seconds=0.02), "t")
    assert caught.value.field == "slo_p99_seconds"
    assert spec_from_pb(jobs_pb2.JobSpec(command=["true"], qos="LS", slo_p99_seconds=0.02), "t").slo_p99_seconds == 0.02


def test_durations_read_as_seconds() -> None:
    assert [parse_duration(t) for t in ("20ms", "1.5s", "250us", "2m", "0.5")] == [0.02, 1.5, 250e-6, 120.0, 0.5]
    for bad in ("fast", "20 parsecs", "-3ms", "1e999s"):
        with pytest.raises(InvalidArgument):
            parse_duration(bad)


@pytest.mark.parametrize("value, problem", [
    ("fast", "not a duration"), ("0ms", "not a positive duration"), ("2d", "unknown unit"), ("90000s", "absurd"),
])
def test_gpuosctl_refuses_a_bad_slo_in_one_line(value: str, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gpuos.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["submit", "--qos", "LS", "--slo-p99", value, "--", "true"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpuosctl: --slo-p99") and problem in err and "\n" not in err


def test_gpuosctl_refuses_an_slo_without_qos_ls(capsys: pytest.CaptureFixture[str]) -> None:
    from gpuos.cli.main import main

    assert main(["--socket", "/nonexistent/gpuos.sock", "submit", "--slo-p99", "20ms", "--", "true"]) == 2
    assert capsys.readouterr().err.startswith("gpuosctl: --slo-p99: only a latency-sensitive job")


def test_a_job_file_line_with_a_bad_slo_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gpuos.cli.main import main

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"command": ["true"], "qos": "LS", "slo_p99": "soon"}\n')
    assert main(["--socket", "/nonexistent/gpuos.sock", "submit", "--from-file", str(jobs)]) == 2
    assert "line 1: slo_p99" in capsys.readouterr().err


# -- gpuosd ---------------------------------------------------------------------------------------

# The best-effort job: 300 units of 5 ms of "work", each marked by a byte appended to a file, so
# the latency job can see how much of the time it runs (a paused process appends nothing).
NEIGHBOUR = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for _ in range(300):
    end = time.monotonic() + 0.005
    while time.monotonic() < end:
        pass
    os.write(fd, b"x")
"""
# The latency job: every 5 ms a "request" whose latency grows with the share of the last 200 ms
# the neighbour ran (its bytes over the 40 it writes running flat out): the synthetic plant
# 5 ms / (1 - 0.9 f), 50 ms beside a neighbour that never pauses. Reports for 6 s.
LATENCY = """
import collections, os, sys, time, gpuos
path = sys.argv[1]
history = collections.deque()
end = time.monotonic() + 6
while time.monotonic() < end:
    now = time.monotonic()
    size = os.stat(path).st_size if os.path.exists(path) else 0
    history.append((now, size))
    while history[0][0] < now - 0.2:
        history.popleft()
    f = min(1.0, (size - history[0][1]) / 40) if now - history[0][0] > 0.15 else 0.0
    gpuos.report_latency(0.005 / (1 - 0.9 * f))
    time.sleep(0.005)
"""


@pytest.fixture
def one_gpu(short_dir: Path) -> Iterator[Client]:
    for d in serve(short_dir, sim_gpus="1xH100-80GB"):
        with Client(socket=d.config.socket) as c:
            yield c


def test_gpuosd_throttles_a_best_effort_neighbour_to_hold_an_slo_and_the_neighbour_finishes(
        one_gpu: Client, short_dir: Path) -> None:
    client = one_gpu
    marks = short_dir / "neighbour.marks"
    neighbour = client.submit([sys.executable, "-c", NEIGHBOUR, str(marks)], gpu_fraction=0.5, sharing="mps",
                              name="be")
    wait_for(lambda: marks.exists())
    slo = 0.010
    ls = client.submit([sys.executable, "-c", LATENCY, str(marks)], gpu_fraction=0.5, sharing="mps", qos="LS",
                       slo_p99="10ms", name="ls")
    assert ls.spec.slo_p99_seconds == slo
    with pytest.raises(ApiError) as refused:
        client.submit(["true"], slo_p99=0.01)  # a best-effort job
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "slo_p99_seconds" in refused.value.details

    def throttled() -> jobs_pb2.Job | None:
        job = client.get(neighbour.id)
        return job if job.HasField("colocation") and job.colocation.share < 1 else None

    held = wait_for(throttled, timeout=10)
    assert ls.id in held.colocation.reason

    def slo_held() -> jobs_pb2.Colocation | None:
        c = client.get(ls.id).colocation
        return c if c.samples >= 150 and c.p99_seconds <= slo and c.neighbour_share < 1 else None

    shown = wait_for(slo_held, timeout=10)
    assert shown.slo_p99_seconds == slo and shown.attainment >= 0.9
    # Once the latency job is done the neighbour runs freely again and completes its work.
    assert client.wait(ls.id, timeout=30).state == jobs_pb2.SUCCEEDED
    assert client.wait(neighbour.id, timeout=30).state == jobs_pb2.SUCCEEDED
    assert marks.stat().st_size == 300
    kinds = [e.kind for e in client.events(job_id=neighbour.id)]
    assert "throttled" in kinds
