"""``gpuosctl replay``: a trace window replayed into gpuosd, and the work its jobs do.

The trace window and scale are shared with ``gpuosctl sim``; the worker counts only the time it
was allowed to run and resumes from its checkpoint after a preemption.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuos.cli.replay import daemon_cluster, replay
from gpuos.cli.replay_work import TERMINATED, read_checkpoint, work
from gpuos.client import TERMINAL, Client, jobs_pb2
from gpuos.errors import InvalidArgument
from gpuos.jobs import Resources
from gpuos.scheduler.sim.cluster import parse_gpus
from gpuos.scheduler.sim.traces import Trace, TraceJob, placeable, scale, window
from tests.conftest import ROOT

GENAI = str(ROOT / "tests" / "data" / "alibaba-genai-2026" / "lora_request_trace.csv")
# Jobs 2-9 of the GenAI excerpt arrive within 46 s and run 36-54 s each: at 40x, 8 jobs that
# queue on the fixture's two GPUs and are all done within about 7 s.
WINDOW = ("--trace", GENAI, "--start", "0.005", "--jobs", "8")


def _job(name: str, arrival: float, duration: float = 10.0, **request: object) -> TraceJob:
    return TraceJob(id=name, arrival=arrival, duration=duration, request=Resources(**request),  # type: ignore[arg-type]
                    estimate=duration, slo=2 * duration)


def _gpuosctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuos.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd="/")


# -- the trace window ---------------------------------------------------------------------------


def test_a_window_skips_the_first_fraction_keeps_n_jobs_and_starts_at_zero() -> None:
    trace = Trace("t", parse_gpus("1xH100-80GB"), tuple(_job(f"j{i}", 100.0 + 10 * i) for i in range(10)))
    cut = window(trace, start=0.2, jobs=3)
    assert [j.id for j in cut.jobs] == ["j2", "j3", "j4"]
    assert [j.arrival for j in cut.jobs] == [0.0, 10.0, 20.0]
    assert "jobs 3-5 of 10" in cut.name


def test_a_window_without_start_or_jobs_is_the_whole_trace() -> None:
    trace = Trace("t", parse_gpus("1xH100-80GB"), (_job("a", 5.0),))
    assert window(trace) is trace


@pytest.mark.parametrize("start", [1.0, -0.1])
def test_a_window_refuses_a_start_outside_zero_to_one(start: float) -> None:
    with pytest.raises(InvalidArgument, match="start"):
        window(Trace("t", (), ()), start=start)


def test_scaling_divides_arrivals_durations_and_estimates() -> None:
    (job,) = scale(Trace("t", (), (_job("a", 100.0, duration=50.0),)), 10.0).jobs
    assert (job.arrival, job.duration, job.estimate, job.slo) == (10.0, 5.0, 5.0, 10.0)


def test_placeable_leaves_out_jobs_the_cluster_could_never_run() -> None:
    jobs = (
        _job("fits", 0.0, gpus=2),
        _job("share", 0.0, gpus=1, gpu_milli=300),
        _job("cpu-only", 0.0, gpus=0),
        _job("too-many", 0.0, gpus=3),
        _job("wrong-type", 0.0, gpus=1, gpu_types=("T4",)),
        _job("no-such-slice", 0.0, mig_profile="9g.90gb"),
    )
    kept, left = placeable(Trace("t", parse_gpus("2xH100-80GB"), jobs))
    assert [j.id for j in kept.jobs] == ["fits", "share"]
    assert [j.id for j in left] == ["cpu-only", "too-many", "wrong-type", "no-such-slice"]


def test_sim_replays_only_the_window_it_is_given(tmp_path: Path) -> None:
    result = _gpuosctl("-o", "json", "sim", *WINDOW)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert run["jobs"] == 8 and "jobs 2-9 of 300" in run["trace"]


@pytest.mark.parametrize("flag, args", [
    ("--start", ["sim", "--trace", GENAI, "--start", "1"]),
    ("--start", ["sim", "--trace", GENAI, "--start", "-0.5"]),
    ("--jobs", ["sim", "--trace", GENAI, "--jobs", "0"]),
    ("--start", ["replay", "--trace", GENAI, "--start", "nan"]),
    ("--jobs", ["replay", "--trace", GENAI, "--jobs", "many"]),
    ("--time-scale", ["replay", "--trace", GENAI, "--time-scale", "0"]),
    ("--time-scale", ["replay", "--trace", GENAI, "--time-scale", "-10"]),
])
def test_a_bad_window_or_scale_exits_2_naming_the_flag(flag: str, args: list[str]) -> None:
    result = _gpuosctl(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and flag in result.stderr


# -- the worker ---------------------------------------------------------------------------------


class _Clock:
    """A fake clock whose sleeps take what they are asked, except the ones listed as stopped."""

    def __init__(self, stopped: dict[int, float]) -> None:
        self.now, self.sleeps, self.stopped = 0.0, 0, stopped

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.stopped.get(self.sleeps, 0.0)
        self.sleeps += 1


def test_time_spent_stopped_does_not_count_as_work() -> None:
    clock = _Clock(stopped={2: 100.0})  # the third step is SIGSTOPped for 100 s
    done = work(0.1, step=0.01, clock=clock.time, sleep=clock.sleep)
    assert done == pytest.approx(0.1)
    assert clock.now == pytest.approx(100.1)


def test_work_resumes_from_what_was_done() -> None:
    clock = _Clock(stopped={})
    assert work(1.0, done=0.95, step=0.01, clock=clock.time, sleep=clock.sleep) == pytest.approx(1.0)
    assert clock.now == pytest.approx(0.05)


def _start_worker(seconds: float, checkpoint: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "gpuos.cli.replay_work", str(seconds), str(checkpoint)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("working from")
    return proc


def test_sigterm_checkpoints_the_work_done_and_a_restart_finishes_the_rest(tmp_path: Path) -> None:
    checkpoint = tmp_path / "job.json"
    proc = _start_worker(3600.0, checkpoint)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == TERMINATED
    done = read_checkpoint(checkpoint)
    assert 0 < done < 3600
    # An hour of work less what is done: only a resumed worker ends within the timeout.
    checkpoint.write_text(json.dumps({"done": 3600.0 - 0.2}))
    again = _start_worker(3600.0, checkpoint)
    assert again.wait(30) == 0
    assert read_checkpoint(checkpoint) == pytest.approx(3600.0)


def test_a_sigstopped_worker_counts_only_the_time_it_ran(tmp_path: Path) -> None:
    checkpoint = tmp_path / "job.json"
    proc = _start_worker(3600.0, checkpoint)
    began = time.monotonic()
    time.sleep(0.3)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(1.5)
    proc.send_signal(signal.SIGCONT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == TERMINATED
    wall = time.monotonic() - began
    assert read_checkpoint(checkpoint) < wall - 1.0


# -- replay into gpuosd -------------------------------------------------------------------------


def test_replay_prints_sims_json_for_the_same_window(gpuosd) -> None:  # type: ignore[no-untyped-def]
    replayed = gpuosd.ctl("-o", "json", "replay", *WINDOW, "--time-scale", "40", "--gpus", "2xH100-80GB")
    assert replayed.returncode == 0, replayed.stderr
    simulated = _gpuosctl("-o", "json", "sim", *WINDOW, "--gpus", "2xH100-80GB")
    (got,), (want,) = json.loads(replayed.stdout), json.loads(simulated.stdout)
    assert got.keys() == want.keys()
    assert [c.keys() for c in got["classes"]] == [c.keys() for c in want["classes"]]
    assert (got["trace"], got["cluster"], got["policy"]) == (want["trace"], want["cluster"], want["policy"])
    assert got["jobs"] == got["finished"] == 8


def test_replay_refuses_gpus_that_are_not_the_daemons(gpuosd) -> None:  # type: ignore[no-untyped-def]
    result = gpuosd.ctl("replay", *WINDOW, "--gpus", "4xA100-80GB")
    assert result.returncode == 2
    assert result.stderr.startswith("gpuosctl: --gpus:") and "2xH100-80GB" in result.stderr


def test_a_preempted_job_resumes_from_its_checkpoint_and_finishes(gpuosd) -> None:  # type: ignore[no-untyped-def]
    with Client(socket=gpuosd.socket) as client:
        client.set_policy("priority")
        node = daemon_cluster(list(client.devices().devices))
        # A best-effort job holds both GPUs; a latency-sensitive one arrives and preempts it.
        jobs = (
            TraceJob("be", 0.0, 2.0, Resources(gpus=2), tenant="t", qos="BE", priority=0, estimate=2.0),
            TraceJob("ls", 0.5, 0.5, Resources(gpus=1), tenant="t", qos="LS", priority=2, estimate=0.5),
        )
        result = replay(client, Trace("preempt", (node,), jobs), time_scale=1.0)
        be, ls = result.jobs
        log = b"".join(data for stream, data in client.logs(be.job_id) if stream == "stdout").decode()
    runs = [line for line in log.splitlines() if line.startswith("working from")]
    assert len(runs) == 2 and runs[0].startswith("working from 0.000 s") and not runs[1].startswith("working from 0.000")
    assert (be.state, ls.state) == ("SUCCEEDED", "SUCCEEDED")
    assert (be.preemptions, ls.preemptions) == (1, 0)
    assert be.devices == (0, 1) and be.partition == "exclusive"
    assert be.first_start is not None and ls.first_start is not None and be.first_start < ls.first_start
    assert be.finish is not None and ls.finish is not None and ls.finish < be.finish


def test_ctrl_c_cancels_every_job_the_replay_submitted(gpuosd) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import wait_for

    proc = subprocess.Popen([sys.executable, "-m", "gpuos.cli.main", "--socket", gpuosd.socket, "replay", *WINDOW],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    with Client(socket=gpuosd.socket) as client:
        wait_for(lambda: client.list(["running"]), timeout=30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "interrupted; cancelled" in err
        # Cancelled at once when pending; when running, once its process has ended.
        jobs = wait_for(lambda: [j for j in client.list() if j.state in TERMINAL] == client.list() and client.list())
        assert {jobs_pb2.JobState.Name(j.state) for j in jobs} == {"CANCELLED"}
