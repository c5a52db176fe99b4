"""The daemon and the simulator make the same decisions for the same jobs on the same GPUs.

Both build a snapshot and call the same framework with the same policy; this checks that what
each feeds the framework (GPU views, sharing modes, MIG layouts, queue order) agrees, by placing
the same mixed batch both ways and comparing where every job landed.
"""

from __future__ import annotations

import pytest

from gpuos.daemon.daemon import Daemon
from gpuos.jobs import TIMESLICE, JobKind, JobSpec, Resources
from gpuos.scheduler.registry import get_policy
from gpuos.scheduler.sim import SimConfig, Trace, TraceJob, parse_gpus
from gpuos.scheduler.sim.engine import Simulator
from gpuos.units import GiB
from tests.conftest import make_config

BATCH = [
    Resources(gpus=1),
    Resources(gpu_milli=250, memory_bytes=10 * GiB),
    Resources(mig_profile="3g.40gb"),
    Resources(gpu_milli=500),
    Resources(sharing=TIMESLICE, memory_bytes=8 * GiB),
    Resources(mig_profile="1g.10gb"),
    Resources(gpus=2),
    Resources(gpu_milli=300, memory_bytes=20 * GiB),
    Resources(mig_profile="3g.40gb"),
    Resources(sharing=TIMESLICE, memory_bytes=8 * GiB),
]


def daemon_placements(short_dir, policy: str) -> list[tuple[tuple[int, ...], str, int]]:  # type: ignore[no-untyped-def]
    daemon = Daemon(make_config(short_dir, policy=policy, sim_gpus="3xH100-80GB"))
    try:
        ids = []
        for i, request in enumerate(BATCH):
            spec = JobSpec(name=f"j{i:02d}", kind=JobKind.PROCESS, resources=request, command=("true",), tenant="t")
            ids.append(daemon.store.submit(spec, owner_uid=0)[0].id)
        # One round, applied to the store only: no process needs to start to compare placements.
        decisions = daemon.controller.decide()
        where = {d.job_id: (d.gpus, d.sharing or "exclusive", d.mig_slot) for d in decisions if hasattr(d, "gpus")}
        return [where.get(i, ((), "pending", -1)) for i in ids]
    finally:
        daemon.store.close()


def simulator_placements(policy: str) -> list[tuple[tuple[int, ...], str, int]]:
    jobs = tuple(
        TraceJob(id=f"j{i:02d}", arrival=0.0, duration=1e6, request=request, tenant="t")
        for i, request in enumerate(BATCH)
    )
    trace = Trace("equivalence", parse_gpus("3xH100-80GB"), jobs)
    sim = Simulator(trace, get_policy(policy), config=SimConfig(horizon=1.0))
    sim.run()
    out = []
    for job in jobs:
        place = sim.records[job.id].place
        out.append(((), "pending", -1) if place is None else (place.gpus, place.sharing or "exclusive", place.mig_slot))
    return out


@pytest.mark.parametrize("policy", ["fifo", "best-fit", "spread", "binpack", "fgd"])
def test_the_daemon_places_a_mixed_batch_as_the_simulator_does(short_dir, policy: str) -> None:  # type: ignore[no-untyped-def]
    assert daemon_placements(short_dir, policy) == simulator_placements(policy)


def running_in_both(short_dir, requests: list[Resources]):  # type: ignore[no-untyped-def]
    """The same jobs started on one H100 in the daemon (their processes sleep) and in the simulator:
    each side's model as it holds them, once all run."""
    from tests.conftest import serve, wait_for

    for daemon in serve(short_dir, sim_gpus="1xH100-80GB"):
        ids = []
        for i, request in enumerate(requests):
            spec = JobSpec(name=f"j{i}", kind=JobKind.PROCESS, resources=request, command=("sleep", "30"), tenant="t")
            ids.append(daemon.store.submit(spec, owner_uid=0)[0].id)
        daemon.controller.wake()
        state = daemon.controller.cluster.state

        def all_run(state=state, ids=ids) -> bool:  # type: ignore[no-untyped-def]
            return all(i in state.running for i in ids)

        assert wait_for(all_run)
        in_daemon = [(state.running[i].place.sharing, state.running[i].share) for i in ids]
    jobs = tuple(TraceJob(id=f"j{i}", arrival=0.0, duration=1e6, request=r, tenant="t") for i, r in enumerate(requests))
    sim = Simulator(Trace("same-world", parse_gpus("1xH100-80GB"), jobs), get_policy("fifo"), config=SimConfig(horizon=1.0))
    sim.run()
    in_sim = [(sim.state.running[j.id].place.sharing, sim.state.running[j.id].share) for j in jobs]
    return in_daemon, in_sim


def test_a_mig_slice_earns_the_same_service_in_both(short_dir) -> None:  # type: ignore[no-untyped-def]
    in_daemon, in_sim = running_in_both(short_dir, [Resources(mig_profile="3g.40gb"), Resources(mig_profile="1g.10gb")])
    assert in_daemon == in_sim
    assert [share for _, share in in_daemon] == [pytest.approx(3 / 7, abs=1e-3), pytest.approx(1 / 7, abs=1e-3)]


def test_time_sharers_earn_the_same_service_in_both(short_dir) -> None:  # type: ignore[no-untyped-def]
    pair = [Resources(sharing=TIMESLICE, gpu_milli=500, memory_bytes=8 * GiB)] * 2
    in_daemon, in_sim = running_in_both(short_dir, pair)
    assert in_daemon == in_sim == [("timeslice", 0.5), ("timeslice", 0.5)]


@pytest.mark.parametrize(("policy", "period"), [("fifo", None), ("tiresias", 60.0)])
def test_rounds_that_time_alone_triggers_follow_the_policys_period_in_both(short_dir, policy: str, period) -> None:  # type: ignore[no-untyped-def]
    from gpuos.scheduler.state import Cadence

    daemon = Daemon(make_config(short_dir, policy=policy, sim_gpus="1xH100-80GB"))
    try:
        cadence = daemon.controller.cadence()
        assert cadence.period == get_policy(policy).period
        due = cadence.next_round(100.0, pending=True, running=True)
        assert due == (None if period is None else 100.0 + period)
        assert Cadence.of(get_policy(policy).period).next_round(100.0, True, True) == due  # the simulator's
    finally:
        daemon.store.close()
