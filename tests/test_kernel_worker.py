"""The kernel worker's own mechanics: yielding at kernel boundaries, and progress reports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from gpuos.jobs import KernelProgress
from gpuos.kernels.worker import Progress, Yielder, main, read_progress

# A stand-in for a kernel loop: each "kernel" is a short sleep, each boundary may yield.
LOOP = """
import sys, time
from gpuos.kernels.worker import Yielder
y = Yielder(); y.install()
print("ready", flush=True)
for step in range(200):
    time.sleep(0.01)
    y.boundary()
    print(step, y.yields, flush=True)
"""


def _status(pid: int) -> str:
    return str(psutil.Process(pid).status())


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_yield_request_stops_the_worker_at_the_next_boundary_until_resumed() -> None:
    proc = subprocess.Popen([sys.executable, "-c", LOOP], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        assert _wait_for(lambda: _status(proc.pid) == psutil.STATUS_STOPPED)
        proc.send_signal(signal.SIGCONT)
        assert _wait_for(lambda: _status(proc.pid) != psutil.STATUS_STOPPED)
        out, _ = proc.communicate(timeout=30)
        last_step, yields = map(int, out.strip().splitlines()[-1].split())
        assert last_step == 199 and yields == 1
    finally:
        proc.kill()


def test_a_resume_that_overtakes_its_pause_request_does_not_stop_the_worker_later() -> None:
    proc = subprocess.Popen([sys.executable, "-c", LOOP], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        proc.send_signal(signal.SIGCONT)  # before the loop reached a boundary, most of the time
        out, _ = proc.communicate(timeout=30)
        assert out.strip().splitlines()[-1].split()[0] == "199"
    finally:
        proc.kill()


def test_a_resume_clears_a_pause_request_not_yet_honoured(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The deterministic form of the race above: the request and the resume both land before a
    # boundary, so the boundary must not stop the process.
    stops: list[int] = []
    monkeypatch.setattr("gpuos.kernels.worker.os.kill", lambda pid, sig: stops.append(sig))
    yielder = Yielder()
    yielder._ask(signal.SIGUSR1, None)
    yielder._resumed(signal.SIGCONT, None)
    yielder.boundary()
    assert yielder.yields == 0 and not yielder.requested and stops == []
    yielder._ask(signal.SIGUSR1, None)
    yielder.boundary()
    assert stops == [signal.SIGSTOP] and yielder.yields == 1


def test_progress_reports_steps_and_latency_quantiles(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    progress = Progress(str(path), "k", steps_total=4)
    for step, seconds in enumerate([0.004, 0.001, 0.002, 0.003]):
        progress.record(step, seconds)
    read = read_progress(str(path))
    assert read is not None
    assert read.kernel == "k" and read.steps_done == 4 and read.steps_total == 4
    assert abs(read.last_latency_ms - 3.0) < 1e-9
    assert abs(read.mean_latency_ms - 2.5) < 1e-9
    assert abs(read.p50_latency_ms - 2.0) < 1e-9 and abs(read.p99_latency_ms - 4.0) < 1e-9
    assert json.loads(path.read_text()) == read.as_dict()


def test_progress_written_by_an_older_or_foreign_worker_reads_leniently(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    path.write_text(json.dumps({"steps_done": 2, "steps_total": "many", "summary": {"gbps": 3, "note": "x"}}))
    read = read_progress(str(path))
    assert read == KernelProgress(steps_done=2, summary=(("gbps", 3.0),))


def test_no_progress_file_reads_as_none(tmp_path: Path) -> None:
    assert read_progress(str(tmp_path / "progress.json")) is None


def test_a_worker_refuses_an_unknown_kernel_or_parameter(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--kernel", "no-such-kernel"]) == 2
    assert "unknown kernel 'no-such-kernel'" in capsys.readouterr().err
