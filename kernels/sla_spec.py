"""The ``sla-dit`` kernel job: sparse-linear attention (SLA) over a diffusion transformer's tokens.

Torch-free, like every ``*_spec`` module: the daemon validates ``sla-dit`` jobs and prices them
with this file alone; the kernels live in :mod:`gpuos.kernels.sla`.

The block budget rule (:func:`block_counts`) lives here so that the kernel's classifier, the
float64 reference and the cost model all count critical and negligible blocks the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gpuos.kernels.registry import KernelCost, KernelSpec, Param, register

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def block_counts(n_blocks: int, critical_ratio: float, negligible_ratio: float) -> tuple[int, int]:
    """How many of a query block's ``n_blocks`` key blocks are critical and how many negligible.

    Critical: ``ceil(critical_ratio * n_blocks)``, at least one (every query needs some exact
    attention), at most all. Negligible: ``floor(negligible_ratio * n_blocks)``, taken from what
    the critical blocks leave. The rest are marginal.
    """
    critical = min(n_blocks, max(1, math.ceil(critical_ratio * n_blocks - 1e-9)))
    negligible = min(n_blocks - critical, max(0, math.floor(negligible_ratio * n_blocks + 1e-9)))
    return critical, negligible


def sla_cost(params: Mapping[str, Any]) -> KernelCost:
    """FLOPs and bytes of one SLA forward call (plus backward when ``backward`` is set).

    Critical blocks: two matrix products (QK^T, PV) per block pair, plus two more (the linear
    branch's correction phi(Q)phi(K)^T V for the same blocks, see docs/kernels/sla.md). Linear
    branch: the global state phi(K)^T V, phi(Q) times the state, and the d x d projection.
    Bytes: Q, K, V and the output once, plus K and V again for every block pair walked (as
    requested from memory; many of those re-reads hit in L2 on a GPU).
    """
    batch, heads, n, d, block = (int(params[k]) for k in ("batch", "heads", "seq_len", "dim", "block"))
    elem = DTYPE_BYTES[str(params["dtype"])]
    n_blocks = -(-n // block)
    critical, negligible = block_counts(n_blocks, float(params["critical_ratio"]), float(params["negligible_ratio"]))
    marginal = n_blocks - critical - negligible
    # The linear branch walks the critical and negligible blocks (subtracting them from the
    # global state) or the marginal ones (adding them), whichever is fewer; the critical blocks'
    # tiles are already loaded by the softmax part.
    complement = marginal > negligible
    linear_pairs = critical + negligible if complement else marginal
    tiles = critical + (negligible if complement else marginal)
    pairs = batch * heads * n_blocks
    pair_flops = 2.0 * block * block * d
    flops = pairs * (2 * critical + 2 * linear_pairs) * pair_flops + batch * heads * 3 * 2.0 * n * d * d
    bytes_ = float(batch * heads * (4 * n * d + n_blocks * tiles * 2 * block * d) * elem)
    if params.get("backward"):
        flops *= 2.5
        bytes_ *= 2.5
    memory = batch * heads * (5 * n * d * elem + d * d * 4 + n_blocks * n_blocks * 5)
    return KernelCost(flops_per_step=float(flops), bytes_per_step=float(bytes_), memory_bytes=int(memory))


SLA_SPEC = register(
    KernelSpec(
        name="sla-dit",
        description=(
            "Sparse-linear attention for video diffusion transformers (SLA, arXiv 2509.24006): "
            "exact block-sparse attention on the critical key blocks, linear attention on the "
            "marginal ones, through a learnable projection."
        ),
        params=(
            Param("batch", "int", 1, "sequences per call", 1, 64),
            Param("heads", "int", 12, "attention heads", 1, 128),
            Param("seq_len", "int", 32760, "tokens per sequence (frames x height x width patches)", 1, 1 << 20),
            Param("dim", "int", 128, "head dimension (16, 32, 64 or 128)", 16, 128),
            Param("block", "int", 64, "tokens per query and key block (16, 32, 64 or 128)", 16, 128),
            Param("critical_ratio", "float", 0.05, "share of key blocks attended exactly, per query block", 0.0, 1.0),
            Param("negligible_ratio", "float", 0.0, "share of key blocks skipped, per query block", 0.0, 1.0),
            Param("dtype", "choice", "bf16", "element type of Q, K, V", choices=tuple(DTYPE_BYTES)),
            Param("backward", "bool", False, "also run the backward pass, as fine-tuning does"),
            Param("steps", "int", 10, "kernel calls to run", 1, 1_000_000),
        ),
        cost=sla_cost,
        runner="gpuos.kernels.sla:run_job",
    )
)
