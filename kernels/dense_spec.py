"""The ``sdpa-decode`` kernel job: schema and cost model (torch-free; see ``gpuos.kernels.dense``).

Dense decode attention through torch's scaled-dot-product attention (FlashAttention on a GPU):
the baseline the sparse decoder is measured against, and a latency service for colocation
benchmarks (``interval_ms`` paces its steps like requests arriving at a fixed rate).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpuos.kernels.registry import KernelCost, KernelSpec, Param, register

ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def cost(params: Mapping[str, Any]) -> KernelCost:
    batch, heads, kv_heads, dim, context = (int(params[k]) for k in ("batch", "heads", "kv_heads", "dim", "context"))
    elt = ELEMENT_BYTES[str(params["dtype"])]
    cache = batch * kv_heads * context * dim * 2 * elt
    return KernelCost(
        flops_per_step=4.0 * batch * heads * dim * context,
        bytes_per_step=float(cache + 2 * batch * heads * dim * elt),
        memory_bytes=int(cache + 2 * batch * heads * dim * elt),
    )


SPEC = register(
    KernelSpec(
        name="sdpa-decode",
        description="Dense decode attention (torch SDPA, FlashAttention on a GPU) over a contiguous KV "
        "cache, in atoms of whole sequences; the baseline for vattention-decode",
        params=(
            Param("batch", "int", 8, "sequences decoded together", 1, 256),
            Param("heads", "int", 32, "query heads", 1, 128),
            Param("kv_heads", "int", 8, "KV heads (query heads must be a multiple)", 1, 128),
            Param("dim", "int", 128, "head dimension", 8, 256),
            Param("context", "int", 32768, "tokens in every sequence's KV cache", 1, 1 << 20),
            Param("dtype", "choice", "bf16", "q and KV-cache dtype", choices=tuple(ELEMENT_BYTES)),
            Param("steps", "int", 10, "decode calls to run", 1, 1_000_000),
            Param("interval_ms", "float", 0.0, "start one step every this many ms, like requests at a "
                  "fixed rate (0: back to back)", 0.0, 60_000.0),
        ),
        cost=cost,
        runner="gpuos.kernels.dense:run_job",
    )
)
