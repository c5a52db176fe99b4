"""Small hand-made clusters and jobs for the scheduler tests."""

from __future__ import annotations

from gpuos.jobs import Resources
from gpuos.scheduler import GpuView, JobView, NodeView, Snapshot
from gpuos.scheduler.framework import options, take
from gpuos.units import GiB

MEM = 32 * GiB


def node(name: str, gpus: int = 4, model: str = "G2", cpu: int = 1 << 40) -> NodeView:
    return NodeView(name, tuple(GpuView(i, model, MEM, MEM) for i in range(gpus)), cpu_milli_free=cpu)


def job(id: str, gpus: int = 1, milli: int = 0, **kw: object) -> JobView:
    return JobView(id=id, request=Resources(gpus=gpus, gpu_milli=milli), **kw)  # type: ignore[arg-type]


def place(n: NodeView, j: JobView, now: float = 0.0, **kw: object) -> tuple[NodeView, JobView]:
    """Put ``j`` on the first option of ``n``; the node after, and ``j`` as a running job."""
    gpus = next(options(j, n))
    new, p = take(j, n, gpus)
    from dataclasses import replace

    return new, replace(j, node=n.name, gpus=p.gpus, started_at=now, **kw)  # type: ignore[arg-type]


def snap(nodes: list[NodeView], pending: list[JobView], running: list[JobView] = (), now: float = 0.0) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(now, tuple(nodes), tuple(pending), tuple(running))
