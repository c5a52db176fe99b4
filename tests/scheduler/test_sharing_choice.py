"""A policy chooses how a fraction that pinned no mode shares its GPU (``Policy.share``): MPS at its
share (the default), a time-slice turn, or the smallest MIG slice covering it; the framework turns
the choice into what the job takes, and the model checks and accounts the placement by it."""

from __future__ import annotations

import pytest

from gpuos.jobs import TIMESLICE, Resources
from gpuos.mig import Instance
from gpuos.scheduler import GpuView, JobView, NodeView, Place, Policy, Share, Snapshot, get_policy, schedule
from gpuos.scheduler.sim.cluster import gpu_type
from gpuos.scheduler.state import ClusterState, StateError
from gpuos.units import GiB


class Always(Policy):
    """Shares every fraction it may choose for one way."""

    def __init__(self, share: Share) -> None:
        self.chosen = share
        self.name = f"always-{share.value}"

    def share(self, job: JobView, gpu: GpuView, snap: Snapshot) -> Share:
        return self.chosen


def h100s(count: int = 1) -> ClusterState:
    kind = gpu_type("H100-80GB")
    gpus = tuple(GpuView(i, kind.name, kind.memory, kind.memory, mig_profiles=kind.mig_profiles) for i in range(count))
    return ClusterState([NodeView("n", gpus)])


def place(state: ClusterState, policy: Policy, job_id: str, request: Resources, now: float = 0.0) -> Place:
    """Submit a job, let ``policy`` place it, and apply the placement to the model."""
    state.submit(JobView(job_id, request, submitted_at=now))
    decision = next(d for d in schedule(state.snapshot(now), policy)
                    if isinstance(d, Place) and d.job_id == job_id)
    state.place(decision, now)
    return decision


def test_by_default_a_fraction_is_an_mps_client_at_its_share() -> None:
    got = place(h100s(), get_policy("fifo"), "a", Resources(gpu_milli=250))
    assert (got.sharing, got.milli, got.memory, got.mig_profile) == ("mps", 250, 20 * GiB, "")


@pytest.mark.parametrize(("request_", "profile"), [
    (Resources(gpu_milli=100), "1g.10gb"),  # 1/7 of the compute and 8 GiB
    (Resources(gpu_milli=125, memory_bytes=16 * GiB), "1g.20gb"),  # one slice's compute, two slices' memory
    (Resources(gpu_milli=250), "2g.20gb"),  # a quarter needs two slices of seven
    (Resources(gpu_milli=500), "4g.40gb"),
])
def test_a_fraction_placed_by_mig_takes_the_smallest_profile_that_covers_it(request_: Resources, profile: str) -> None:
    got = place(h100s(), Always(Share.MIG), "a", request_)
    assert (got.sharing, got.mig_profile, got.mig_slot) == ("mig", profile, 0)


def test_a_fraction_placed_by_turns_takes_its_share_as_its_weight_and_its_shares_memory() -> None:
    got = place(h100s(), Always(Share.TIMESLICE), "a", Resources(gpu_milli=250))
    assert (got.sharing, got.milli, got.memory, got.mig_profile) == ("timeslice", 250, 20 * GiB, "")


def test_a_fraction_placed_by_mig_on_a_gpu_without_mig_is_an_mps_client() -> None:
    state = ClusterState([NodeView("n", (GpuView(0, "A10", 24 * GiB, 24 * GiB),))])
    got = place(state, Always(Share.MIG), "a", Resources(gpu_milli=250))
    assert (got.sharing, got.mig_profile) == ("mps", "")


@pytest.mark.parametrize(("pinned", "sharing"), [
    (Resources(gpu_milli=250, sharing="mps"), "mps"),
    (Resources(gpu_milli=250, sharing=TIMESLICE), "timeslice"),
    (Resources(mig_profile="3g.40gb"), "mig"),
    (Resources(gpus=1), ""),
])
@pytest.mark.parametrize("share", list(Share))
def test_a_mode_the_user_pinned_is_never_overridden(pinned: Resources, sharing: str, share: Share) -> None:
    got = place(h100s(), Always(share), "a", pinned)
    assert got.sharing == sharing
    assert got.mig_profile == pinned.mig_profile


def test_chosen_slices_fill_a_gpu_until_nvidia_would_refuse_the_next() -> None:
    state = h100s()
    policy = Always(Share.MIG)
    state.submit(JobView("big", Resources(gpu_milli=500), submitted_at=0.0))  # 4g.40gb at slot 0
    for i in range(4):
        state.submit(JobView(f"small{i}", Resources(gpu_milli=100), submitted_at=1.0 + i))  # 1g.10gb each
    for d in schedule(state.snapshot(0.0), policy):
        assert isinstance(d, Place)
        state.place(d, 0.0)
    gpu = state.gpu("n", 0)
    assert sorted(i.profile for i in gpu.mig_instances) == ["1g.10gb"] * 3 + ["4g.40gb"]
    assert set(state.pending) == {"small3"}  # 4 + 3 of 7 compute slices


def test_a_chosen_slice_earns_service_as_a_job_that_asked_for_it_and_is_freed_whole() -> None:
    state = h100s(2)
    place(state, Always(Share.MIG), "chose", Resources(gpu_milli=250))
    place(state, Always(Share.MIG), "asked", Resources(mig_profile="2g.20gb"))
    assert state.attained("chose", 7.0) == state.attained("asked", 7.0) == pytest.approx(2.0, rel=0.01)  # 2 of 7
    state.finish("chose", 7.0)
    gpu = state.gpu("n", 0)
    assert gpu.mig_instances == (Instance("2g.20gb", 2),) and gpu.mig_slices_used == 2  # "asked"'s is left


def test_a_running_job_shows_what_it_holds_and_waits_again_as_it_asked() -> None:
    state = h100s()
    place(state, Always(Share.MIG), "a", Resources(gpu_milli=250))
    running = state.view("a")
    assert running is not None and running.request.mig_profile == "2g.20gb"
    state.requeue("a", 5.0)
    assert state.pending["a"].request == Resources(gpu_milli=250)


def test_the_model_refuses_a_slice_other_than_the_smallest_that_covers_the_job() -> None:
    state = h100s()
    state.submit(JobView("a", Resources(gpu_milli=100)))
    with pytest.raises(StateError, match="unlike the job asks"):
        state.place(Place("a", "n", (0,), 428, 40 * GiB, "3g.40gb", 0, "mig"), 0.0)


def test_the_model_refuses_a_turn_that_holds_less_memory_than_the_share() -> None:
    state = h100s()
    state.submit(JobView("a", Resources(gpu_milli=250)))
    with pytest.raises(StateError, match="disagrees with the job's demand"):
        state.place(Place("a", "n", (0,), 250, 1 * GiB, sharing="timeslice"), 0.0)


def test_the_model_refuses_to_share_a_pinned_fraction_another_way() -> None:
    state = h100s()
    state.submit(JobView("a", Resources(gpu_milli=100, sharing="mps")))
    with pytest.raises(StateError, match="unlike the job asks"):
        state.place(Place("a", "n", (0,), 142, 10 * GiB, "1g.10gb", 0, "mig"), 0.0)


def test_a_share_answer_that_is_not_a_share_is_an_error() -> None:
    class Stringly(Policy):
        name = "stringly"

        def share(self, job: JobView, gpu: GpuView, snap: Snapshot) -> Share:
            return "mig"  # type: ignore[return-value]

    state = h100s()
    state.submit(JobView("a", Resources(gpu_milli=100)))
    with pytest.raises(ValueError, match="not a Share"):
        schedule(state.snapshot(0.0), Stringly())


def test_a_gpu_taken_by_slices_offers_no_mps_share_and_the_policy_may_pick_another() -> None:
    state = h100s(2)
    place(state, Always(Share.MIG), "a", Resources(gpu_milli=250))
    got = place(state, get_policy("fifo"), "b", Resources(gpu_milli=250))
    assert (got.gpus, got.sharing) == ((1,), "mps")
    assert state.gpu("n", 0).mig_instances == (Instance("2g.20gb", 0),)

