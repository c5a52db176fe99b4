"""Simulated clusters: GPU types, nodes, and the ``--gpus`` spec that describes them.

Spec grammar (comma-separated groups, case-insensitive ``x``)::

    COUNT x MODEL                 one node with COUNT GPUs             16xH100-80GB
    NODES x COUNT x MODEL         NODES nodes with COUNT GPUs each     4x8xA100-80GB
    NODES nodes x COUNT MODEL     the same, in words                   4 nodes x 8 H100-80GB

e.g. ``2x8xH100-80GB,4x2xT4``. Models are those in :data:`GPU_TYPES`; a model not listed may be
written ``NAME-<n>GB`` and gets n GiB of memory and no MIG. Simulated nodes have no CPU or host
memory limit unless a trace's node list gives one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gpuos.devices.catalog import lookup
from gpuos.errors import InvalidArgument
from gpuos.mig import MigProfile
from gpuos.scheduler.snapshot import GpuView, NodeView
from gpuos.units import GiB


@dataclass(frozen=True)
class GpuType:
    name: str
    memory: int
    mig_profiles: tuple[MigProfile, ...] = ()


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: tuple[GpuType, ...]
    cpu_milli: int = 1 << 40
    host_memory: int = 1 << 60


def _mig_table(memory_gib: int) -> tuple[MigProfile, ...]:
    """NVIDIA's A100/H100 GPU-instance profiles (MIG user guide): compute slices of 7, memory
    slices of 8, the start slots each may use, and how many may coexist."""
    per_slice = memory_gib // 8
    rows = [  # (compute slices, memory slices, max count, start slots)
        (1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
        (1, 2, 4, (0, 2, 4, 6)),
        (2, 2, 3, (0, 2, 4)),
        (3, 4, 2, (0, 4)),
        (4, 4, 1, (0,)),
        (7, 8, 1, (0,)),
    ]
    return tuple(
        MigProfile(f"{g}g.{m * per_slice}gb", g, m * memory_gib * GiB // 8, m, count, starts)
        for g, m, count, starts in rows
    )


# The Alibaba trace's types need only a name and memory (its requests are compute shares, and
# memory follows the share). G2 and G3 are undisclosed internal models; their memory is assumed.
GPU_TYPES: dict[str, GpuType] = {
    t.name: t
    for t in (
        GpuType("G2", 32 * GiB),
        GpuType("G3", 32 * GiB),
        GpuType("T4", 16 * GiB),
        GpuType("P100", 16 * GiB),
        GpuType("V100M16", 16 * GiB),
        GpuType("V100M32", 32 * GiB),
        GpuType("A10", 24 * GiB),
        GpuType("L4", 24 * GiB),
        GpuType("A100-40GB", 40 * GiB, _mig_table(40)),
        GpuType("A100-80GB", 80 * GiB, _mig_table(80)),
        GpuType("H100-80GB", 80 * GiB, _mig_table(80)),
        GpuType("H200", 141 * GiB),
    )
}
_ALIASES = {"A10-24GB": "A10", "L4-24GB": "L4", "T4-16GB": "T4", "H100": "H100-80GB", "A100": "A100-80GB"}

_GROUP = re.compile(
    r"^\s*(?:(\d+)\s*(?:nodes?)?\s*[x×]\s*)?(\d+)\s*(?:gpus?)?\s*[x×]?\s*([A-Za-z][A-Za-z0-9.-]*)\s*$", re.I
)


def gpu_type(name: str) -> GpuType:
    """The GPU type called ``name`` (or ``NAME-<n>GB`` for an unlisted one)."""
    canonical = _ALIASES.get(name.upper(), name)
    for key, value in GPU_TYPES.items():
        if key.upper() == canonical.upper():
            return value
    sized = re.match(r"^(.*)-(\d+)GB$", name, re.I)
    if sized:
        return GpuType(name, int(sized.group(2)) * GiB)
    known = ", ".join(GPU_TYPES)
    raise InvalidArgument("gpus", f"unknown GPU model {name!r}; use one of {known}, or NAME-<n>GB")


def parse_gpus(spec: str) -> tuple[NodeSpec, ...]:
    """Nodes described by a ``--gpus`` spec (see the module docstring)."""
    nodes: list[NodeSpec] = []
    for group in spec.split(","):
        match = _GROUP.match(group)
        if not match:
            raise InvalidArgument("gpus", f"{group!r} is not COUNTxMODEL or NODESxCOUNTxMODEL (e.g. 4x8xH100-80GB)")
        count_nodes = int(match.group(1) or 1)
        per_node = int(match.group(2))
        kind = gpu_type(match.group(3))
        if count_nodes < 1 or per_node < 1:
            raise InvalidArgument("gpus", f"{group!r}: node and GPU counts must be at least 1")
        for _ in range(count_nodes):
            nodes.append(NodeSpec(f"node-{len(nodes):04d}", (kind,) * per_node))
    return tuple(nodes)


@dataclass(frozen=True)
class DaemonGpu:
    """One of gpuosd's GPUs as a caller read it (the device backend, the device listing, a
    history export's header): what :func:`daemon_node` makes a simulated GPU of."""

    index: int
    model: str
    memory: int
    # The MIG profiles gpuosd reports for it (what its scheduler places by); None where the
    # source does not say (a history export's header names only model and memory).
    mig_profiles: tuple[MigProfile, ...] | None = None


def daemon_node(gpus: Iterable[DaemonGpu]) -> NodeSpec:
    """gpuosd's GPUs as one simulated node named ``gpuosd``, in index order: their models and
    memory, and the MIG profiles gpuosd reports (the catalog's for the model where unknown).
    The shadow's report, ``gpuosctl replay`` and a history trace all simulate gpuosd on this."""

    def mig(gpu: DaemonGpu) -> tuple[MigProfile, ...]:
        if gpu.mig_profiles is not None:
            return gpu.mig_profiles
        model = lookup(gpu.model)
        return model.mig_profiles if model is not None else ()

    return NodeSpec("gpuosd", tuple(GpuType(g.model, g.memory, mig(g)) for g in sorted(gpus, key=lambda g: g.index)))


def describe(nodes: tuple[NodeSpec, ...]) -> str:
    """A short text for a table header: ``1213 nodes, 6212 GPUs (G2 4392, T4 842, ...)``."""
    counts: dict[str, int] = {}
    for node in nodes:
        for gpu in node.gpus:
            counts[gpu.name] = counts.get(gpu.name, 0) + 1
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{len(nodes)} nodes, {sum(counts.values())} GPUs ({kinds})"


def node_view(spec: NodeSpec, suspend: bool = False, oversubscription: float = 1.0,
              cross_gpu_restore: bool = False) -> NodeView:
    """``spec`` as a policy sees it with nothing placed: every GPU free and healthy; with
    ``suspend``, every GPU can suspend jobs to host memory (and time-shared ones admit limits up
    to ``oversubscription`` x their memory), and with ``cross_gpu_restore`` a suspended job may
    resume on another GPU of its model on the node."""
    return NodeView(
        spec.name,
        tuple(
            GpuView(i, g.name, g.memory, g.memory, uuid=f"{spec.name}/{i}", mig_profiles=g.mig_profiles,
                    suspend=suspend, oversubscription=oversubscription if suspend else 1.0)
            for i, g in enumerate(spec.gpus)
        ),
        spec.cpu_milli,
        spec.host_memory,
        cross_gpu_restore=suspend and cross_gpu_restore,
    )
