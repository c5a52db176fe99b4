"""Helpers for policies that preempt: what a node looks like without some jobs, and the fewest
victims that make room for a job.

Pure functions of the snapshot, shared by every preemptive policy so each stays a few lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gpuos.jobs import Resources
from gpuos.scheduler.framework import demand, options
from gpuos.scheduler.snapshot import JobView, NodeView, Snapshot


def release(node: NodeView, job_id: str, request: Resources, gpus: Sequence[int], cpu_milli: int = 0,
            host_memory: int = 0, mig_slot: int = -1) -> NodeView:
    """``node`` after the job ``job_id`` (holding ``request`` on ``gpus``) leaves it.

    ``mig_slot`` names the MIG instance the job held; -1 removes any instance of its profile
    (enough for a feasibility check, where the slot is not known).
    """
    freed = {}
    for index in gpus:
        gpu = node.gpus[index]
        milli, memory = demand(request, gpu)
        instances = gpu.mig_instances
        slices = 0
        if request.mig_profile:
            slices = next((p.slices for p in gpu.mig_profiles if p.name == request.mig_profile), 0)
            match = [i for i in instances if i.profile == request.mig_profile and mig_slot in (-1, i.start)]
            if match:
                instances = tuple(i for i in instances if i is not match[0])
        jobs = tuple(j for j in gpu.jobs if j != job_id)
        freed[index] = replace(
            gpu,
            milli_free=gpu.milli_free + milli,
            memory_free=gpu.memory_free + memory,
            mig_slices_used=gpu.mig_slices_used - slices,
            jobs=jobs,
            sharing=gpu.sharing if jobs else "",
            mig_instances=instances,
        )
    return replace(
        node,
        gpus=tuple(freed.get(g.index, g) for g in node.gpus),
        cpu_milli_free=node.cpu_milli_free + cpu_milli,
        host_memory_free=node.host_memory_free + host_memory,
    )


def victims_to_fit(job: JobView, snap: Snapshot, eligible: Callable[[JobView], bool],
                   preference: Callable[[JobView], Any]) -> tuple[str, ...]:
    """The fewest eligible running jobs, taken in ``preference`` order on one node, whose
    departure lets ``job`` fit there; empty if no node can be freed enough."""
    by_node: dict[str, list[JobView]] = {}
    for running in snap.running:
        if running.node and eligible(running):
            by_node.setdefault(running.node, []).append(running)
    best: tuple[str, ...] = ()
    for node in snap.nodes:
        candidates = by_node.get(node.name)
        if not candidates:
            continue
        candidates.sort(key=preference)
        chosen: list[str] = []
        current = node
        for victim in candidates:
            if best and len(chosen) + 1 >= len(best):
                break
            current = release(current, victim.id, victim.request, victim.gpus, victim.cpu_milli, victim.host_memory)
            chosen.append(victim.id)
            if next(options(job, current), None) is not None:
                if not best or len(chosen) < len(best):
                    best = tuple(chosen)
                break
    return best
