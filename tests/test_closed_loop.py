"""The closed loop end to end on the CPU: replay -> export -> evolve -> shadow -> guarded deploy -> next window.

One gpuosd on the simulated backend runs a replayed window of a synthetic LLM-serving workload
(its history), exports it, evolves a policy on it, shadows the winner over a short window, then
deploys it under a guard whose bound is the latency class's p99 queueing delay under fifo on the
history, and replays the next window: either the guard held, so the live metric over the new
window is no worse than it was, or it was breached and gpuosd switched back, with an event saying
why; the test says which. A deliberately bad candidate (it never places a latency-class job)
deployed the same way must be rolled back. Times are scaled 1000x (scripts/closed_loop.sh runs
the same loop at a scale a person can watch).
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from gpuos.agents.workloads import history_min_jobs
from gpuos.cli.main import main
from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.guard import GuardSpec, read
from tests.conftest import serve, wait_for
from tests.test_guard import STARVE_LATENCY

pytest.importorskip("numpy")

WORKLOAD = "synthetic:llm-decode?n=600&seed=3&load=0.1"
SCALE = "1000"
HISTORY_JOBS = history_min_jobs() + 5


def _ctl(daemon: Daemon, *argv: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["--socket", daemon.config.socket, *argv])
    assert code == 0, (argv, out.getvalue())
    return out.getvalue()


def _replay(daemon: Daemon, start: float, jobs: int) -> None:
    _ctl(daemon, "replay", "--trace", WORKLOAD, "--start", f"{start:g}", "--jobs", str(jobs), "--time-scale", SCALE)


def _live_p99(daemon: Daemon, since: float) -> float:
    """The latency class's p99 queueing delay (wall seconds) over the jobs submitted since ``since``."""
    spec = GuardSpec("p99_queue_delay_ls", "<=", math.inf, math.inf, min_samples=1)
    return read(spec, daemon.store.list(), since, time.time()).value


class Loop:
    def __init__(self, daemon: Daemon, winner: Path, history_p99: float) -> None:
        self.daemon, self.winner, self.history_p99 = daemon, winner, history_p99


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    base = Path(tmp_path_factory.mktemp("loop"))
    short = Path(tempfile.mkdtemp(prefix="gpuos-loop"))  # a short path: Unix sockets' limit
    served = serve(short, sim_gpus="4xH100-80GB")
    daemon = next(served)
    try:
        began = time.time()
        _replay(daemon, 0.0, HISTORY_JOBS)
        history_p99 = _live_p99(daemon, began)
        exported = base / "history.jsonl"
        _ctl(daemon, "trace", "export", "-o", str(exported))
        winner = base / "winner.py"
        _ctl(daemon, "evolve", "--trace", str(exported), "--objective", "latency_wait_p99", "--iterations", "1",
             "--population", "2", "--jobs", "1", "--baseline-trials", "2", "--run-dir", str(base / "run"),
             "--emit", str(winner))
        yield Loop(daemon, winner, history_p99)
    finally:
        next(served, None)
        shutil.rmtree(short, ignore_errors=True)


def test_the_winner_is_shadowed_then_deployed_and_the_guard_holds_or_rolls_back(loop: Loop) -> None:
    daemon, start = loop.daemon, HISTORY_JOBS / 600
    _ctl(daemon, "policy", "shadow", str(loop.winner))
    _replay(daemon, start, 30)
    report = json.loads(_ctl(daemon, "-o", "json", "policy", "shadow", "--report"))
    assert report["status"]["rounds"] > 0 and report["simulated_jobs"] > 0
    assert report["active"]["policy"] == "fifo" and report["candidate"]["policy"].startswith("evolved-")
    _ctl(daemon, "policy", "shadow", "--off")

    bound = round(max(loop.history_p99, 0.05), 3)  # as the guard's text gives it
    deployed, events_before = time.time(), daemon.store.last_event_seq
    _ctl(daemon, "policy", "set", str(loop.winner), "--guard", f"p99_queue_delay_ls<={bound:.3f}s",
         "--window", "60s", "--min-samples", "5")
    _replay(daemon, start + 30 / 600, 40)
    with Client(socket=daemon.config.socket) as client:
        wait_for(lambda: client.policy_status().rollbacks > 0 or client.policy_status().guard.read_at > time.time() - 0.5)
        status = client.policy_status()
        rollbacks = [e for e in client.events(since=events_before) if e.kind == "policy-rollback"]
        if status.rollbacks:
            # It said: the guard was breached, and gpuosd switched back by itself: the judged
            # window's metric was over the bound, and fifo runs again with no guard left.
            last = status.switches[-1]
            assert (last.kind, last.to_policy) == ("rollback", "fifo") and last.from_policy.startswith("evolved-")
            assert status.active.name == "fifo" and not status.HasField("guard") and status.rollbacks == 1
            assert len(rollbacks) == 1 and last.reason in rollbacks[0].message
            said = re.search(r"p99_queue_delay_ls was ([0-9.e+-]+) over the last 60s \((\d+) samples; bound ([0-9.]+)\)",
                             last.reason)
            assert said is not None, last.reason
            value, samples, said_bound = float(said[1]), int(said[2]), float(said[3])
            # >=, not >: the message rounds the value to 4 digits.
            assert said_bound == bound and value >= bound and samples >= 5
        else:
            # It said: the guard held: it judged a window of enough samples within the bound, and
            # the live metric over everything since the deploy is within it too.
            assert status.active.name.startswith("evolved-") and status.rollbacks == 0 and not rollbacks
            guard = status.guard
            assert guard.judged and guard.samples >= 5 and guard.value <= bound and guard.bound == bound
            assert _live_p99(daemon, deployed) <= bound
        client.set_policy("fifo")


def test_a_candidate_that_starves_the_latency_class_is_rolled_back(loop: Loop, tmp_path: Path) -> None:
    daemon = loop.daemon
    bad = tmp_path / "starve.py"
    bad.write_text(STARVE_LATENCY)
    _ctl(daemon, "policy", "set", str(bad), "--guard", "p99_queue_delay_ls<=0.5s", "--window", "30s",
         "--min-samples", "3")
    # The replay finishes only because the rollback lets fifo run the starved jobs.
    _replay(daemon, (HISTORY_JOBS + 70) / 600, 30)
    with Client(socket=daemon.config.socket) as client:
        status = client.policy_status()
        assert status.active.name == "fifo" and status.rollbacks >= 1
        last = status.switches[-1]
        assert (last.kind, last.from_policy) == ("rollback", "starve-latency")
        assert "p99_queue_delay_ls" in last.reason and "bound 0.5" in last.reason
