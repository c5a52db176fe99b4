"""Scoring one node per distinct node state decides exactly as scoring every node.

Policies that set ``scores_node_state_only`` let the framework score a single node of each state
(see ``gpuos.scheduler.index.node_state``); the decisions must not change. Random-fit instead
counts options by state and picks one by a hash of the job, uniformly over all options.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gpuos.scheduler import Place, Policy, get_policy
from gpuos.scheduler.framework import schedule
from gpuos.scheduler.index import NodeIndex
from gpuos.scheduler.registry import available
from gpuos.scheduler.sim import SimConfig, Trace, load_trace, resolve_policy
from gpuos.scheduler.sim.engine import Simulator
from gpuos.scheduler.snapshot import Snapshot
from tests.scheduler.helpers import job, node, snap

STATE_SCORED = sorted(
    name for name, cls in available().items() if cls.scores_node_state_only and not cls.first_fit and not cls.picks
)


class Recording(Simulator):
    """A simulator that keeps every placement it applied, with its time."""

    def __init__(self, trace: Trace, policy: Policy, config: SimConfig) -> None:
        super().__init__(trace, policy, config=config)
        self.placed: list[tuple[float, Place]] = []

    def _start(self, place: Place, now: float) -> None:
        self.placed.append((now, place))
        super()._start(place, now)


def replay(trace: Trace, name: str, by_state: bool, config: SimConfig) -> tuple[list[tuple[float, Place]], list[object]]:
    policy = resolve_policy(name, trace)
    policy.scores_node_state_only = by_state
    sim = Recording(trace, policy, config)
    outcome = sim.run()
    ends = [(r.job.id, r.first_start, r.finish, r.preemptions, r.attained) for r in outcome.records]
    return sim.placed, [*ends, outcome.rounds, outcome.timeline.fragmented, outcome.timeline.allocated]


def test_the_built_in_scoring_policies_opt_in_and_the_base_policy_does_not() -> None:
    assert Policy.scores_node_state_only is False
    assert {"best-fit", "binpack", "fgd", "gandiva", "spread"} <= set(STATE_SCORED)


@pytest.mark.parametrize("policy", STATE_SCORED)
def test_scoring_one_node_per_state_places_every_job_as_scoring_every_node(policy: str, data_dir: Path) -> None:
    trace = load_trace(data_dir / "alibaba-gpu-2023" / "openb_pod_list_default.csv")
    config = SimConfig(check_invariants=True)
    shared = replay(trace, policy, True, config)
    assert len(shared[0]) >= 400
    assert shared == replay(trace, policy, False, config)


@pytest.mark.parametrize("policy", STATE_SCORED)
def test_states_shared_under_preemption_and_failures_decide_as_before(policy: str) -> None:
    # Preempting policies reserve nodes mid-round; failures make GPUs unhealthy, a state of its own.
    trace = load_trace("synthetic:bursty?n=200&seed=3&load=1.3")
    config = SimConfig(failures_per_gpu_hour=0.05, repair_seconds=600)
    shared = replay(trace, policy, True, config)
    assert shared == replay(trace, policy, False, config)


def test_random_fit_picks_nodes_in_proportion_to_how_many_share_a_state() -> None:
    # Nine alike nodes and one odd one: a per-state coin would pick the odd one half the time.
    nodes = [node(f"a{i}", gpus=1) for i in range(9)] + [node("odd", gpus=1, model="T4")]
    policy = get_policy("random-fit")
    chosen = Counter(
        d.node for k in range(2000) for d in schedule(snap(nodes, [job(f"j{k}")]), policy) if isinstance(d, Place)
    )
    assert sum(chosen.values()) == 2000
    assert 100 <= chosen["odd"] <= 300
    assert all(100 <= chosen[f"a{i}"] <= 300 for i in range(9))


def test_random_fit_decides_alike_with_and_without_the_simulators_index() -> None:
    nodes = tuple(node(f"n{i}", gpus=4) for i in range(30))
    pending = tuple(job(f"j{k}", milli=250 * (1 + k % 3)) for k in range(40))
    policy = get_policy("random-fit")
    plain = schedule(Snapshot(0.0, nodes, pending), policy)
    indexed = schedule(Snapshot(0.0, nodes, pending, index=NodeIndex(nodes)), policy)
    assert plain == indexed
    assert len({d.node for d in plain if isinstance(d, Place)}) >= 15
