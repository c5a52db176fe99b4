"""The trace-driven discrete-event simulator.

``run_simulation(trace, policy)`` replays a trace through the same
:func:`gpuos.scheduler.schedule` the daemon calls and returns a :class:`SimResult`.
``fill_cluster`` runs the FGD paper's fill-up experiment. Models and their numbers are in
docs/scheduler.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from gpuos.scheduler.policy import Policy
from gpuos.scheduler.sim.cluster import NodeSpec, describe, parse_gpus
from gpuos.scheduler.sim.engine import Decide, SimConfig, SimulationError, Simulator, resolve_policy
from gpuos.scheduler.sim.fill import FillResult, fill_cluster
from gpuos.scheduler.sim.metrics import ClassStats, SimResult, summarise
from gpuos.scheduler.sim.traces import Trace, TraceJob, load_trace, with_cluster

__all__ = [
    "ClassStats",
    "FillResult",
    "NodeSpec",
    "SimConfig",
    "SimResult",
    "SimulationError",
    "Trace",
    "TraceJob",
    "fill_cluster",
    "load_trace",
    "parse_gpus",
    "run_simulation",
]


def run_simulation(
    trace: str | Path | Trace,
    policy: str | Policy,
    gpus: str | None = None,
    seed: int = 0,
    config: SimConfig | None = None,
    decide: Decide | None = None,
) -> SimResult:
    """Replay ``trace`` under ``policy`` on the trace's cluster, or on ``gpus`` (a ``--gpus`` spec).

    Deterministic for a given (trace, policy, gpus, seed, config). Raises
    :class:`SimulationError` if a decision breaks the cluster's rules. ``decide``, when given,
    makes each round's decisions in place of ``schedule(snapshot, policy)`` (see Simulator).
    """
    loaded = trace if isinstance(trace, Trace) else load_trace(trace, seed=seed)
    loaded = with_cluster(loaded, gpus)
    instance = resolve_policy(policy, loaded)
    started = time.perf_counter()
    outcome = Simulator(loaded, instance, seed=seed, config=config, decide=decide).run()
    wall = time.perf_counter() - started
    return summarise(outcome, loaded.name, instance.name, describe(loaded.nodes), seed, wall)
