"""The ``vattention-decode`` kernel job: schema and cost model (torch-free; see ``gpuos.kernels.vattention``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

from gpuos.kernels.registry import KernelCost, KernelSpec, Param, register

ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# Share of the softmax mass a decode head leaves outside its deterministic set, for the cost
# model's guess at the sample size (the real size is decided per head at run time).
REST_MASS_GUESS = 0.5


def expected_keys(params: Mapping[str, Any]) -> float:
    """Keys one KV group attends to per step (besides scoring every key from the sketch, which
    ``cost`` adds): deterministic set, base sample and the CLT sample
    for a head whose rest weights have a coefficient of variation of one (a guess for either
    budget: the real size is decided per head at run time, and the Bernstein budget computes
    the rest exactly where its certificate cannot pass)."""
    context = int(params["context"])
    fixed = min(context, int(params["sink"]) + int(params["local"]) + float(params["heavy_fraction"]) * context)
    rest = context - fixed
    eps = float(params["epsilon"]) / (2 + float(params["epsilon"]))
    z = NormalDist().inv_cdf(1 - float(params["delta"]) / 4)
    sample = min(rest, math.ceil((z * REST_MASS_GUESS / eps) ** 2))
    return fixed + sample + min(rest, int(params["base_sample"]))


def cost(params: Mapping[str, Any]) -> KernelCost:
    batch, heads, kv_heads, dim = (int(params[k]) for k in ("batch", "heads", "kv_heads", "dim"))
    context, page = int(params["context"]), int(params["page_size"])
    elt = ELEMENT_BYTES[str(params["dtype"])]
    keys = expected_keys(params)
    # Per page: key minima and maxima (the sketch's ranges) and value centres and radii, fp32.
    bounds = batch * math.ceil(context / page) * kv_heads * (3 * dim + 1) * 4
    # The int8 key sketch that selection scores every key from: one byte per key dimension.
    sketch = batch * context * kv_heads * dim
    cache = batch * context * kv_heads * dim * 2 * elt
    return KernelCost(
        flops_per_step=4.0 * batch * heads * dim * keys + 2.0 * batch * heads * dim * context,
        # A KV group's query heads share their keys, so each key row is read once per KV head.
        bytes_per_step=float(batch * kv_heads * keys * 2 * dim * elt + sketch + bounds + 2 * batch * heads * dim * elt),
        memory_bytes=int(cache + sketch + bounds + batch * kv_heads * keys * 16),
    )


SPEC = register(
    KernelSpec(
        name="vattention-decode",
        description="Verified sparse-attention decoding (vAttention): exact sink, local and top pages, "
        "sampled rest sized for (epsilon, delta), over a ragged paged KV cache",
        params=(
            Param("batch", "int", 8, "sequences decoded together", 1, 256),
            Param("heads", "int", 32, "query heads", 1, 128),
            Param("kv_heads", "int", 8, "KV heads (query heads must be a multiple)", 1, 128),
            Param("dim", "int", 128, "head dimension", 8, 256),
            Param("context", "int", 32768, "longest sequence; lengths are drawn in [context/2, context]", 1, 1 << 20),
            Param("page_size", "int", 64, "tokens per KV-cache page", 1, 1024),
            Param("dtype", "choice", "bf16", "q and KV-cache dtype (fp32 accumulation)", choices=("bf16", "fp16", "fp32")),
            Param("steps", "int", 10, "decode calls to run", 1, 100000),
            Param("epsilon", "float", 0.05, "relative output error allowed", 1e-4, 0.99),
            Param("delta", "float", 0.05, "probability of exceeding epsilon", 1e-9, 0.4),
            Param("sink", "int", 128, "leading tokens always attended", 0, 1 << 20),
            Param("local", "int", 128, "trailing tokens always attended", 0, 1 << 20),
            Param("heavy_fraction", "float", 0.05, "share of the context picked as top keys", 0.0, 1.0),
            Param("base_sample", "int", 64, "first sample size (bernstein), variance sample (clt)",
                  2, 4096),
            Param("budget", "choice", "bernstein", "sample-size rule: distribution-free (bernstein) or the "
                  "paper's CLT (clt)", choices=("bernstein", "clt")),
            Param("interval_ms", "float", 0.0, "start one step every this many ms, like requests at a "
                  "fixed rate (0: back to back)", 0.0, 60_000.0),
        ),
        cost=cost,
        runner="gpuos.kernels.vattention:run_job",
    )
)
