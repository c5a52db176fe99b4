"""Dense decode attention as a kernel job (``sdpa-decode``), cut into atoms of whole sequences.

Each decode call attends one query per head over every key of each sequence with torch's
``scaled_dot_product_attention`` (FlashAttention on a GPU, the math path on the CPU). Its atoms
are slices of the batch: sequences are independent, so a slice computes exactly those rows; the
slice size follows the measured time per sequence so that an atom lasts about
``ctx.atom_seconds`` (the same sizing rule as the Triton kernels, ``gpuos.kernels.atoms``).
Unlike the Triton kernels, a slice may pick a different SDPA backend split than the whole batch
would, so results agree to rounding, not bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from gpuos.kernels import atoms
from gpuos.kernels.context import KernelContext, Pacer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The CPU runs the math path on small shapes: enough to exercise the job, not to measure it.
CPU_LIMITS = {"batch": 2, "heads": 4, "kv_heads": 2, "dim": 32, "context": 256}


def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: KernelContext | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``q[B, Hq, 1, D]`` over ``k, v[B, Hkv, N, D]`` (GQA when
    Hq > Hkv), in atoms of whole sequences when ``ctx`` asks for atoms."""
    batch = q.shape[0]
    target = 0.0 if ctx is None else atoms.target_seconds(ctx.atom_seconds)
    gqa = q.shape[1] != k.shape[1]
    if target <= 0:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    out = torch.empty_like(q)
    start, rows, seconds_per_row = 0, 1, 0.0
    while start < batch:
        stop = min(batch, start + rows)
        began = time.perf_counter()
        out[start:stop] = F.scaled_dot_product_attention(q[start:stop], k[start:stop], v[start:stop], enable_gqa=gqa)
        if ctx is not None and ctx.on_gpu:
            torch.cuda.current_stream(ctx.device).synchronize()
        seconds_per_row = (time.perf_counter() - began) / (stop - start)
        start = stop
        if ctx is not None:
            ctx.between_atoms()
        if start < batch:
            rows = atoms.atom_rows(batch - start, seconds_per_row, target)
    return out


def run_job(params: Mapping[str, Any], ctx: KernelContext) -> dict[str, float]:
    """The ``sdpa-decode`` job: ``steps`` dense decode calls on random inputs, one every
    ``interval_ms`` when that is set (a step that overruns starts the next one at once)."""
    shape = {k: int(params[k]) for k in CPU_LIMITS}
    dtype = DTYPES[str(params["dtype"])]
    if not ctx.on_gpu:
        shape = {k: min(v, CPU_LIMITS[k]) for k, v in shape.items()}
        shape["heads"] = max(shape["kv_heads"], shape["heads"] - shape["heads"] % shape["kv_heads"])
        dtype = torch.float32
    if shape["heads"] % shape["kv_heads"]:
        raise ValueError(f"heads={shape['heads']} is not a multiple of kv_heads={shape['kv_heads']}")
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    b, h, hkv, d, n = shape["batch"], shape["heads"], shape["kv_heads"], shape["dim"], shape["context"]
    q = torch.randn(b, h, 1, d, generator=gen, device=ctx.device).to(dtype)
    k = torch.randn(b, hkv, n, d, generator=gen, device=ctx.device).to(dtype)
    v = torch.randn(b, hkv, n, d, generator=gen, device=ctx.device).to(dtype)
    latencies: list[float] = []
    pacer = Pacer(float(params.get("interval_ms", 0.0)))
    for step in range(int(params["steps"])):
        pacer.wait()
        began = time.perf_counter()
        decode(q, k, v, ctx)
        if ctx.on_gpu:
            torch.cuda.current_stream(ctx.device).synchronize()
        latencies.append(time.perf_counter() - began)
        ctx.report(step, latencies[-1])
    return {
        "mean_latency_s": sum(latencies) / len(latencies),
        "batch": float(b), "heads": float(h), "kv_heads": float(hkv), "dim": float(d), "context": float(n),
        "shapes_capped_for_cpu": float(not ctx.on_gpu),
    }
