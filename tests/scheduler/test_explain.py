"""Why a job waits: each pending job a round leaves unplaced gets the reason a user would act on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gpuos.devices.catalog import H100_80GB_MIG
from gpuos.jobs import TIMESLICE, Resources
from gpuos.mig import Instance
from gpuos.scheduler import GpuView, JobView, NodeView, Policy, Snapshot, get_policy, schedule
from gpuos.scheduler.explain import WaitKind, WaitReason, WaitReasons, explain
from gpuos.scheduler.snapshot import MAX_TIMESLICE_JOBS
from gpuos.units import GiB

from .helpers import job, node, place, snap


def reasons(s: Snapshot, policy: Policy | None = None, limit: int = 1000) -> WaitReasons:
    policy = policy or get_policy("fifo")
    return explain(s, policy, schedule(s, policy), limit=limit)


def why(s: Snapshot, job_id: str, policy: Policy | None = None) -> WaitReason:
    reason = reasons(s, policy).get(job_id)
    assert reason is not None, f"{job_id} has no reason"
    return reason


def ask(id: str, **resources: object) -> JobView:
    return JobView(id=id, request=Resources(**resources))  # type: ignore[arg-type]


def mig_node(*layouts: Sequence[str]) -> NodeView:
    gpus = tuple(
        GpuView(i, "H100-80GB", 80 * GiB, 80 * GiB - sum(p.memory_bytes for p in H100_80GB_MIG if p.name in layout),
                mig_profiles=H100_80GB_MIG, sharing="mig" if layout else "",
                mig_instances=tuple(Instance(name, start) for name, start in zip(layout, (0, 4), strict=False)))
        for i, layout in enumerate(layouts)
    )
    return NodeView("m", gpus)


def test_a_job_whose_gpu_type_has_no_healthy_gpu_says_so() -> None:
    sick = node("a", 2)
    sick = replace(sick, gpus=tuple(replace(g, healthy=False) for g in sick.gpus))
    reason = why(snap([sick, node("b", 2, model="T4")], [ask("j", gpu_types=("G2",))]), "j")
    assert reason.kind == WaitKind.NO_GPU_TYPE
    assert reason.message == "no healthy GPU of type G2 (2 are unhealthy)"


def test_a_job_larger_than_every_gpu_names_the_largest() -> None:
    reason = why(snap([node("a", 2)], [ask("j", memory_bytes=40 * GiB)]), "j")
    assert reason.kind == WaitKind.TOO_LARGE
    assert reason.message == "needs 40.0 GiB per GPU; the largest healthy GPU has 32.0 GiB"


def test_a_job_wanting_more_gpus_than_any_node_has_says_so() -> None:
    reason = why(snap([node("a", 2), node("b", 2)], [ask("j", gpus=4)]), "j")
    assert reason.kind == WaitKind.TOO_LARGE
    assert "needs 4 GPUs on one node" in reason.message and "is 2" in reason.message


def test_a_mig_profile_no_gpu_offers_is_named() -> None:
    reason = why(snap([node("a", 2)], [ask("j", mig_profile="3g.40gb")]), "j")
    assert reason.kind == WaitKind.NO_MIG_PROFILE
    assert "3g.40gb" in reason.message


def test_a_mig_job_with_every_layout_full_says_mig_full() -> None:
    full = mig_node(("3g.40gb", "3g.40gb"), ("3g.40gb", "3g.40gb"))
    reason = why(snap([full], [ask("j", mig_profile="3g.40gb")]), "j")
    assert reason.kind == WaitKind.MIG_FULL
    assert reason.message.startswith("every MIG layout is full: no GPU has room for a 3g.40gb slice")
    assert "GPU 0 has 3g.40gb, 3g.40gb" in reason.message


def test_a_fraction_on_busy_gpus_says_what_it_needs_and_the_most_free() -> None:
    busy, running = place(node("a", 1), job("r", milli=750))  # holds 0.75 GPU and 24 GiB
    pending = ask("j", gpu_milli=500, memory_bytes=16 * GiB)
    reason = why(snap([busy], [pending], [running]), "j")
    assert reason.kind == WaitKind.BUSY
    assert reason.message == "needs 16.0 GiB and 0.5 GPU; the most free on one GPU is 8.0 GiB / 0.25 GPU"


def test_a_whole_gpu_job_on_a_full_node_counts_what_holds_the_gpus() -> None:
    n, first = place(node("a", 2), job("r1"))
    n, second = place(n, job("r2", milli=300))
    reason = why(snap([n], [ask("j")], [first, second]), "j")
    assert reason.kind == WaitKind.BUSY
    assert reason.message == "needs an idle GPU; the most idle on one node is 0; 1 held whole; 1 GPU shared by MPS"


def test_full_time_slice_slots_are_reported() -> None:
    n = node("a", 1)
    running = []
    for k in range(MAX_TIMESLICE_JOBS):
        n, r = place(n, JobView(f"r{k}", Resources(sharing=TIMESLICE, memory_bytes=GiB)))
        running.append(r)
    reason = why(snap([n], [ask("j", sharing=TIMESLICE, memory_bytes=GiB)], running), "j")
    assert reason.kind == WaitKind.BUSY
    assert f"time-slice slots full ({MAX_TIMESLICE_JOBS} jobs) on 1 GPU" in reason.message


def test_a_gpu_shared_another_way_is_named() -> None:
    n, running = place(node("a", 1), JobView("r", Resources(sharing=TIMESLICE, memory_bytes=GiB)))
    reason = why(snap([n], [ask("j", gpu_milli=500)], [running]), "j")
    assert reason.kind == WaitKind.BUSY
    assert reason.message == "every GPU that could take it is in use another way: 1 GPU time-sliced"


class NoGpuZero(Policy):
    name = "no-gpu-zero"

    def fits(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> bool:
        return all(g.index != 0 for g in gpus)


def test_the_policys_filter_refusing_every_fit_is_named() -> None:
    reason = why(snap([node("a", 1)], [ask("j")]), "j", NoGpuZero())
    assert reason.kind == WaitKind.POLICY_FILTER
    assert reason.message == "fits on GPU 0, but policy no-gpu-zero's filter refused it"


class Strict(Policy):
    name = "strict-fifo"
    strict_order = True


def test_strict_order_names_the_job_ahead() -> None:
    n, running = place(node("a", 2), job("r"))
    pending = [job("big", gpus=2, submitted_at=1), job("small", submitted_at=2)]
    found = reasons(snap([n], pending, [running]), Strict())
    assert found.get("big") == WaitReason(WaitKind.BUSY, "needs 2 idle GPUs on one node; the most idle on one "
                                          "node is 1; 1 held whole")
    small = found.get("small")
    assert small is not None and small.kind == WaitKind.STRICT_ORDER
    assert "behind job big" in small.message


def test_the_job_preemptions_are_for_names_its_victims_and_others_see_the_room_held() -> None:
    n, victim = place(node("a", 2), job("be-running", qos="BE"))
    pending = [job("ls", gpus=2, qos="LS", submitted_at=1), job("be", qos="BE", submitted_at=2)]
    found = reasons(snap([n], pending, [victim]), get_policy("priority"))
    assert found.get("ls") == WaitReason(WaitKind.PREEMPTING,
                                         "preempting be-running to make room; waiting for it to stop")
    held = found.get("be")
    assert held is not None and held.kind == WaitKind.HELD and "for job ls" in held.message


def test_a_placed_job_has_no_reason() -> None:
    found = reasons(snap([node("a", 1)], [job("first", submitted_at=1), job("second", submitted_at=2)]))
    assert found.get("first") is None
    assert found.get("second") is not None


def test_jobs_past_the_limit_learn_only_their_queue_position() -> None:
    pending = [job(f"j{k}", gpus=2, submitted_at=k) for k in range(3)]
    found = reasons(snap([node("a", 1)], pending), limit=2)
    assert found.get("j1") is not None and found.get("j1").kind == WaitKind.TOO_LARGE  # type: ignore[union-attr]
    assert found.get("j2") == WaitReason(WaitKind.NOT_EXAMINED, "not examined this round (queue position 3)")


def test_a_job_lacking_cpus_says_how_many_are_free() -> None:
    reason = why(snap([node("a", 1, cpu=2000)], [job("j", cpu_milli=4000)]), "j")
    assert reason.kind == WaitKind.BUSY
    assert reason.message == "needs 4 CPUs (the most free on one node is 2)"
