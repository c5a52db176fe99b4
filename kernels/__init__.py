"""gpuos's attention kernels. The user-facing functions are exported lazily, so that importing
``gpuos.kernels`` (as the daemon does for its torch-free job specs) loads neither torch nor Triton:

- :func:`vattention_decode`: verified sparse decode attention over a paged KV cache;
- :func:`sla_attention`: sparse-linear attention for diffusion transformers;
- :func:`radial_attention`: Radial Attention's static video mask;
- :class:`KernelArgumentError`: what any of them raises for a bad argument (a ``ValueError``);
- :class:`VAttentionConfig`, :class:`VAttentionResult`: vAttention's knobs and its result.

Their arguments, layouts and guarantees are in ``docs/kernels/README.md``; the integrations with
diffusers and transformers models are in :mod:`gpuos.kernels.integrations`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuos.kernels.api import KernelArgumentError, radial_attention, sla_attention, vattention_decode
    from gpuos.kernels.vattention import VAttentionConfig, VAttentionResult

_EXPORTS = {
    "vattention_decode": "gpuos.kernels.api",
    "sla_attention": "gpuos.kernels.api",
    "radial_attention": "gpuos.kernels.api",
    "KernelArgumentError": "gpuos.kernels.api",
    "VAttentionConfig": "gpuos.kernels.vattention",
    "VAttentionResult": "gpuos.kernels.vattention",
}

__all__ = [
    "KernelArgumentError", "VAttentionConfig", "VAttentionResult", "radial_attention", "sla_attention",
    "vattention_decode",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gpuos.kernels' has no attribute {name!r}")
    from gpuos.extras import require

    require(f"gpuos.kernels.{name}", "kernels", ("torch", "triton"))
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
