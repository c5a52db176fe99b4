"""One world for agents: a small agentic trace (job groups of every mode, budgets, duplicates,
failing members) replayed through gpuosd ends the same groups for the same reasons as the
simulator, stops the same members, absorbs the same duplicates and spends the same GPU-seconds,
within stated tolerances.

The trace is written by hand, already compressed to seconds, so that every decision it tests
has at least 0.5 s of margin against timing noise (a start takes START_LATENCY, a stop ~0.1 s,
the daemon checks budgets each 50 ms tick). The simulator runs it with tests/test_one_world.py's
model of the daemon's latencies.

Both sides count a duplicate for its own group as the job it duplicated, spending nothing: a
duplicate of a success ends its first-success group (``g10``); a duplicate of a job of its own
group is that same work, and counts once (``g11``: a best-of:2 group needs a second real success).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuos.cli.replay import outcome, replay
from gpuos.cli.replay_work import FAIL, FAILED, main
from gpuos.client import Client
from gpuos.groups import GROUP_BUDGET, SIBLING_SUCCEEDED, make_spec
from gpuos.jobs import Resources
from gpuos.scheduler.sim import SimConfig, parse_gpus
from gpuos.scheduler.sim.engine import Outcome, Simulator, resolve_policy
from gpuos.scheduler.sim.metrics import agentic_stats
from gpuos.scheduler.sim.traces import Trace, TraceGroup, TraceJob
from gpuos.scheduler.snapshot import GroupKey
from tests.test_one_world import ROUND_GAP, START_LATENCY, STOP_LATENCY

CLUSTER = "4xH100-80GB"
A, B = "agent-a", "agent-b"
# GPU-seconds, all groups together: a budget stops its members at the next 50 ms
# tick after it is reached, and a stop takes ~0.1 s more; the simulator stops them at the instant.
GPU_SECONDS_ERROR = 0.15

GROUPS = (
    TraceGroup(A, make_spec("g1", "first-success")),
    TraceGroup(A, make_spec("g2", "first-success")),
    TraceGroup(A, make_spec("g3", "best-of:2")),
    TraceGroup(A, make_spec("g4", "all")),
    TraceGroup(A, make_spec("g5", "all", budget=2.4)),
    TraceGroup(A, make_spec("g6", "first-success", budget=1.5)),
    TraceGroup(B, make_spec("g7", "first-success")),
    TraceGroup(A, make_spec("g8", "first-success")),
    TraceGroup(A, make_spec("g9", "all")),
    TraceGroup(A, make_spec("g10", "first-success")),
    TraceGroup(A, make_spec("g11", "best-of:2")),
)


def _job(group: str, k: int, arrival: float, duration: float, succeeds: bool = True, key: str = "",
         tenant: str = A) -> TraceJob:
    return TraceJob(id=f"{group}-m{k}", arrival=arrival, duration=duration, request=Resources(gpus=1), tenant=tenant,
                    estimate=duration, group=group, dedupe_key=key or f"{tenant}/{group}-m{k}", succeeds=succeeds)


JOBS = (
    # g1: m1 succeeds at ~1.1 s and stops m0 (a failure due at ~1.9 s) and m2.
    _job("g1", 0, 0.0, 1.6, succeeds=False), _job("g1", 1, 0.0, 0.8), _job("g1", 2, 0.1, 2.5),
    # g2: every member fails; it stays open.
    _job("g2", 0, 0.2, 0.6, succeeds=False), _job("g2", 1, 0.2, 0.8, succeeds=False),
    # g3: the second success (m1, ~2.8 s) ends it; m2 and m3 (a failure due at 3.4 s or later:
    # a loaded CI machine once let a shorter m3 fail first) stop.
    _job("g3", 0, 1.5, 0.6), _job("g3", 1, 1.5, 1.0), _job("g3", 2, 1.5, 2.0), _job("g3", 3, 1.5, 1.6, False),
    # g4: runs all; m2 duplicates g3-m0, which succeeded; m3 duplicates m0 while it runs.
    _job("g4", 0, 4.0, 0.8), _job("g4", 1, 4.0, 0.6, succeeds=False),
    _job("g4", 2, 4.2, 0.8, key=f"{A}/g3-m0"), _job("g4", 3, 4.3, 0.8, key=f"{A}/g4-m0"),
    # g5: three members reach its 2.4 GPU-seconds at ~6.3 s and all stop.
    _job("g5", 0, 5.5, 3.0), _job("g5", 1, 5.5, 3.0), _job("g5", 2, 5.5, 3.0),
    # g6: two failing members reach its 1.5 GPU-seconds at ~8.75 s.
    _job("g6", 0, 8.0, 1.5, succeeds=False), _job("g6", 1, 8.0, 1.5, succeeds=False),
    # g7 (another tenant, a key agent-a used: no duplicate): m0's success at ~8.8 s ends it,
    # and m1, submitted at 9.5 s, is refused by the ended group.
    _job("g7", 0, 8.0, 0.5, key=f"{A}/g4-m0", tenant=B), _job("g7", 1, 9.5, 0.5, tenant=B),
    # g8: m0 has the key of g2-m0, which failed, so it runs; its success stops m1.
    _job("g8", 0, 9.0, 0.7, key=f"{A}/g2-m0"), _job("g8", 1, 9.0, 1.2, succeeds=False),
    # g9: plain members.
    _job("g9", 0, 10.5, 0.6), _job("g9", 1, 10.5, 0.6),
    # g10: m1 duplicates g3-m0's success, which ends the group at once: m0 stops.
    _job("g10", 0, 11.0, 0.6, succeeds=False), _job("g10", 1, 11.0, 0.6, key=f"{A}/g3-m0"),
    # g11: m1 duplicates its sibling m0 while it runs; m2 succeeds 1.4 s after m0, the 2nd success.
    _job("g11", 0, 12.5, 0.6), _job("g11", 1, 12.6, 0.6, key=f"{A}/g11-m0"), _job("g11", 2, 12.5, 2.0),
)
TRACE = Trace("agentic excerpt", parse_gpus(CLUSTER), JOBS, "hand-written (tests/test_agentic_replay.py)", GROUPS)


def simulated() -> Outcome:
    config = SimConfig(interference=0.0, preemption_cost=0.0, start_latency=START_LATENCY, stop_latency=STOP_LATENCY,
                       round_gap=ROUND_GAP)
    return Simulator(TRACE, resolve_policy("fifo", TRACE), config=config).run()


@pytest.fixture(scope="module")
def worlds() -> Iterator[tuple[Outcome, Outcome]]:
    """(simulator, gpuosd): the trace through both, once for all the tests here."""
    from tests.conftest import serve

    base = Path(tempfile.mkdtemp(prefix="gpuos-t", dir="/tmp"))
    try:
        for daemon in serve(base, sim_gpus=CLUSTER):
            with Client(socket=daemon.config.socket) as client:
                client.set_policy("fifo")
                yield simulated(), outcome(replay(client, TRACE))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def ended(run: Outcome) -> dict[GroupKey, str]:
    return {key: g.ended_reason for key, g in run.groups.items()}


def stopped(run: Outcome) -> Counter[GroupKey]:
    return Counter((r.job.tenant, r.job.group) for r in run.records if r.reason)


def gpu_seconds(run: Outcome) -> float:
    return sum(r.attained for r in run.records)


def test_groups_end_for_the_same_reasons_in_gpuosd_and_the_simulator(worlds: tuple[Outcome, Outcome]) -> None:
    sim, daemon = worlds
    expected = {(A, "g1"): SIBLING_SUCCEEDED, (A, "g2"): "", (A, "g3"): SIBLING_SUCCEEDED, (A, "g4"): "",
                (A, "g5"): GROUP_BUDGET, (A, "g6"): GROUP_BUDGET, (B, "g7"): SIBLING_SUCCEEDED,
                (A, "g8"): SIBLING_SUCCEEDED, (A, "g9"): "", (A, "g10"): SIBLING_SUCCEEDED,
                (A, "g11"): SIBLING_SUCCEEDED}
    assert ended(sim) == expected
    assert ended(daemon) == expected


def test_the_same_members_are_stopped_by_their_groups(worlds: tuple[Outcome, Outcome]) -> None:
    sim, daemon = worlds
    expected = Counter({(A, "g1"): 2, (A, "g3"): 2, (A, "g5"): 3, (A, "g6"): 2, (B, "g7"): 1, (A, "g8"): 1,
                        (A, "g10"): 1})
    assert stopped(daemon) == expected
    assert stopped(sim) == expected  # g11 stops none: its copy of m0 is not a second success


def test_duplicates_are_absorbed_alike_and_never_across_tenants(worlds: tuple[Outcome, Outcome]) -> None:
    sim, daemon = worlds
    expected = {"g4-m2": "g3-m0", "g4-m3": "g4-m0", "g10-m1": "g3-m0", "g11-m1": "g11-m0"}
    for run in (sim, daemon):
        assert {r.job.id: r.duplicate_of for r in run.records if r.duplicate_of} == expected
        assert all(r.attained == 0 for r in run.records if r.duplicate_of)
    # A duplicate ends with its original's outcome, on both sides.
    assert {r.job.id: r.succeeded for r in daemon.records if r.duplicate_of} == {j: True for j in expected}


def test_gpu_seconds_agree_within_the_stated_error(worlds: tuple[Outcome, Outcome]) -> None:
    sim, daemon = worlds
    assert abs(gpu_seconds(daemon) - gpu_seconds(sim)) <= GPU_SECONDS_ERROR * gpu_seconds(sim), (
        gpu_seconds(sim), gpu_seconds(daemon))


def test_agentic_stats_read_a_replay_as_they_read_a_simulation(worlds: tuple[Outcome, Outcome]) -> None:
    sim, daemon = worlds
    a, b = agentic_stats(sim.records), agentic_stats(daemon.records)
    assert (a.duplicates, len(a.groups)) == (b.duplicates, len(b.groups)) == (4, 11)
    assert a.groups_succeeded == b.groups_succeeded == 8


def test_a_replayed_member_that_fails_exits_nonzero_after_its_work(tmp_path: Path) -> None:
    assert main(["0.02", str(tmp_path / "c.json"), FAIL]) == FAILED
    assert main(["0.02", str(tmp_path / "d.json")]) == 0
