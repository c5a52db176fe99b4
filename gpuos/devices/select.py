"""Choosing the device backend at daemon start: the NVIDIA driver when a GPU answers, else the
simulator, and a sentence saying which and why (the daemon logs it)."""

from __future__ import annotations

from gpuos.devices.backend import DeviceBackend
from gpuos.devices.nvml import NvmlBackend, nvml_gpu_count
from gpuos.devices.sim import SimBackend
from gpuos.errors import BackendError, InvalidArgument

DEFAULT_SIM_GPUS = "2xH100-80GB"
KINDS = ("auto", "sim", "nvml")


def open_backend(kind: str, sim_gpus: str | None = None) -> tuple[DeviceBackend, str]:
    """Open the ``kind`` backend (auto, sim or nvml); the backend and why it was picked.

    ``auto`` takes NVML when the driver starts and reports at least one GPU, and otherwise the
    simulator with ``sim_gpus`` (default ``2xH100-80GB``). ``nvml`` raises BackendError when
    there is no usable GPU, rather than silently simulating.
    """
    spec = sim_gpus or DEFAULT_SIM_GPUS
    if kind == "sim":
        return SimBackend(spec), f"sim ({spec}), as configured"
    if kind == "nvml":
        backend = NvmlBackend()
        return backend, f"nvml ({_summary(backend)}), as configured"
    if kind != "auto":
        raise InvalidArgument("backend", f"{kind!r} is not one of {', '.join(KINDS)}")
    count = nvml_gpu_count()
    if count == 0:
        return SimBackend(spec), f"sim ({spec}): auto found no NVIDIA GPU (NVML absent or reports none)"
    try:
        backend = NvmlBackend()
    except BackendError as exc:
        return SimBackend(spec), f"sim ({spec}): auto saw {count} GPU(s) but NVML failed: {exc}"
    return backend, f"nvml ({_summary(backend)}): auto found {count} NVIDIA GPU(s)"


def _summary(backend: DeviceBackend) -> str:
    names = [d.model for d in backend.devices()]
    return ", ".join(f"{names.count(n)}x{n}" for n in dict.fromkeys(names)) or "no GPUs"
