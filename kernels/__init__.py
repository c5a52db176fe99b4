"""gpuos's built-in GPU kernels.

``import gpuos.kernels`` needs neither torch nor Triton: the daemon reaches the kernel registry
(``gpuos.kernels.registry``) through this package. The public functions below are loaded from
``gpuos.kernels.api`` on first use, which imports torch and Triton then:

- ``vattention_decode``: verified sparse decoding over a paged KV cache (``VAttentionConfig``,
  ``VAttentionResult``, ``page_key_bounds`` go with it);
- ``sla_attention``: sparse-linear attention for diffusion transformers;
- ``radial_attention``: radial (spatio-temporal, O(n log n)) attention for video;
- ``KernelArgumentError``: what each raises on a bad argument.

Integrations with model code live in ``gpuos.kernels.integrations``. Usage: docs/kernels/README.md.
"""

from __future__ import annotations

from typing import Any

_PUBLIC = (
    "KernelArgumentError", "VAttentionConfig", "VAttentionResult", "page_key_bounds",
    "radial_attention", "sla_attention", "vattention_decode",
)

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    # Lazy: importing torch and Triton here would put them on the daemon's import path.
    if name in _PUBLIC:
        from gpuos.kernels import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
