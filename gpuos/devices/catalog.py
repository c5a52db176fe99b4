"""GPU models gpuos knows by name: SM count, memory and, for MIG-capable parts, NVIDIA's
GPU-instance profiles.

The simulator builds its GPUs from this table, and the NVML backend falls back to it when the
driver cannot report an SM count. MIG tables follow NVIDIA's Multi-Instance GPU User Guide
("Supported MIG Profiles" and the placement figures of "Concepts"): compute slices of seven,
memory slices of eight, how many instances of a profile may coexist and the memory slices an
instance may start at. Media-extension variants (``+me``, ``+gfx``) are left out: gpuos never
asks for them. Instance memory is what ``nvidia-smi mig -lgip`` reports, which is a little less
than the name says because the driver keeps some of each slice; the H100-80GB sizes were read
off that listing, the A100 sizes from the user guide's examples.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuos.mig import MigProfile
from gpuos.units import GiB, MiB

GB = 1000**3


@dataclass(frozen=True)
class GpuModel:
    """One GPU product: what the simulator presents and what NVML lookups fall back to."""

    name: str
    sm_count: int
    memory_bytes: int
    mig_profiles: tuple[MigProfile, ...] = ()
    # Substrings of the NVML product name ("NVIDIA H100 80GB HBM3") that identify this model.
    nvml_names: tuple[str, ...] = ()
    # Host<->device copy bandwidth one way, pinned memory (bytes/s): what suspend-to-host moves
    # memory at. A model figure (the PCIe generation's achievable x16 rate, below), not measured.
    host_link_bytes_per_s: float = 0.0


# Achievable one-way x16 bandwidth with pinned buffers, about 80% of the link's raw rate after
# PCIe protocol overhead (raw: Gen3 15.8, Gen4 31.5, Gen5 63 GB/s per direction; the achievable
# figures are what NVIDIA's bandwidthTest and nvbandwidth typically report). Model figures.
PCIE_GEN3_X16 = 12 * GB
PCIE_GEN4_X16 = 25 * GB
PCIE_GEN5_X16 = 50 * GB


# Start slots (first memory slice) per profile shape, identical on A100 and H100: a 1g instance
# with one memory slice may start at 0..6 (slice 7 has no compute slice of its own), a two-slice
# one at even slots, a 3g at 0 or 4, and a 4g or 7g only at 0.
_ONE_SLICE = (0, 1, 2, 3, 4, 5, 6)
_TWO_SLICES_1G = (0, 2, 4, 6)
_TWO_SLICES_2G = (0, 2, 4)
_HALF = (0, 4)
_WHOLE = (0,)


def _profile(
    name: str, slices: int, memory_mib: int, memory_slices: int, max_count: int, placements: tuple[int, ...]
) -> MigProfile:
    return MigProfile(name, slices, memory_mib * MiB, memory_slices, max_count, placements)


A100_40GB_MIG = (
    _profile("1g.5gb", 1, 4864, 1, 7, _ONE_SLICE),
    _profile("1g.10gb", 1, 9856, 2, 4, _TWO_SLICES_1G),
    _profile("2g.10gb", 2, 9856, 2, 3, _TWO_SLICES_2G),
    _profile("3g.20gb", 3, 20096, 4, 2, _HALF),
    _profile("4g.20gb", 4, 20096, 4, 1, _WHOLE),
    _profile("7g.40gb", 7, 40448, 8, 1, _WHOLE),
)

A100_80GB_MIG = (
    _profile("1g.10gb", 1, 9728, 1, 7, _ONE_SLICE),
    _profile("1g.20gb", 1, 19968, 2, 4, _TWO_SLICES_1G),
    _profile("2g.20gb", 2, 19968, 2, 3, _TWO_SLICES_2G),
    _profile("3g.40gb", 3, 40192, 4, 2, _HALF),
    _profile("4g.40gb", 4, 40192, 4, 1, _WHOLE),
    _profile("7g.80gb", 7, 80384, 8, 1, _WHOLE),
)

H100_80GB_MIG = (
    _profile("1g.10gb", 1, 9984, 1, 7, _ONE_SLICE),
    _profile("1g.20gb", 1, 20096, 2, 4, _TWO_SLICES_1G),
    _profile("2g.20gb", 2, 20096, 2, 3, _TWO_SLICES_2G),
    _profile("3g.40gb", 3, 40448, 4, 2, _HALF),
    _profile("4g.40gb", 4, 40448, 4, 1, _WHOLE),
    _profile("7g.80gb", 7, 81152, 8, 1, _WHOLE),
)

MODELS: tuple[GpuModel, ...] = (
    # H100 SXM5 and PCIe, H100 NVL and H200: PCIe Gen5 x16 to the host (NVIDIA datasheets).
    GpuModel("H100-80GB", 132, 80 * GiB, H100_80GB_MIG, ("H100 80GB", "H100 SXM", "H100"), PCIE_GEN5_X16),
    GpuModel("H100-94GB", 132, 94 * GB, (), ("H100 NVL",), PCIE_GEN5_X16),
    # H200 supports MIG, but its instance sizes have not been checked here; it is offered whole.
    GpuModel("H200-141GB", 132, 141 * GB, (), ("H200",), PCIE_GEN5_X16),
    # A100 SXM4 and PCIe, L40S, A10, L4: PCIe Gen4 x16 (NVIDIA datasheets).
    GpuModel("A100-40GB", 108, 40 * GiB, A100_40GB_MIG, ("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB"),
             PCIE_GEN4_X16),
    GpuModel("A100-80GB", 108, 80 * GiB, A100_80GB_MIG, ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB"),
             PCIE_GEN4_X16),
    GpuModel("L40S", 142, 48 * GB, (), ("L40S",), PCIE_GEN4_X16),
    GpuModel("A10", 72, 24 * GB, (), ("A10",), PCIE_GEN4_X16),
    GpuModel("L4", 58, 24 * GB, (), ("L4",), PCIE_GEN4_X16),
    # T4 and V100 (PCIe and SXM2): PCIe Gen3 x16 to the host.
    GpuModel("T4", 40, 16 * GB, (), ("T4",), PCIE_GEN3_X16),
    GpuModel("V100-16GB", 80, 16 * GiB, (), ("V100-SXM2-16GB", "V100-PCIE-16GB", "V100 16GB"), PCIE_GEN3_X16),
    GpuModel("V100-32GB", 80, 32 * GiB, (), ("V100-SXM2-32GB", "V100-PCIE-32GB", "V100 32GB"), PCIE_GEN3_X16),
)

_BY_NAME = {m.name.upper(): m for m in MODELS}


def model_names() -> list[str]:
    return [m.name for m in MODELS]


def lookup(name: str) -> GpuModel | None:
    """The model called ``name`` (case-insensitive), or None."""
    return _BY_NAME.get(name.strip().upper())


def match_nvml_name(product: str) -> GpuModel | None:
    """The model an NVML product name (``NVIDIA H100 80GB HBM3``) denotes, or None.

    The longest matching hint wins, so ``A100-SXM4-80GB`` is never taken for an ``A10``.
    """
    text = product.upper()
    best: tuple[int, GpuModel] | None = None
    for model in MODELS:
        for hint in model.nvml_names:
            if hint.upper() in text and (best is None or len(hint) > best[0]):
                best = (len(hint), model)
    return best[1] if best else None
