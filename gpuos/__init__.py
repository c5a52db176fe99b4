"""gpuos: an operating-system layer for GPUs.

``gpuos.Client`` talks to a running ``gpuosd``. The package imports lazily so that small
entry points (the job shim, the kernel worker) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gpuos.client import ApiError, Client
    from gpuos.latency import report_latency

__all__ = ["ApiError", "Client", "__version__", "report_latency"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "ApiError"):
        from gpuos import client

        return getattr(client, name)
    if name == "report_latency":
        from gpuos import latency

        return latency.report_latency
    raise AttributeError(f"module 'gpuos' has no attribute {name!r}")
