"""Radial Attention (arXiv 2506.19852) as a block-sparse Triton kernel, and the ``radial-dit`` job.

The static mask and its block layout are defined in :mod:`gpuos.kernels.radial_spec` (built once
per shape and cached); the token-level reference is :mod:`gpuos.kernels.reference.radial`.

- :func:`radial_attention` ``(q, k, v, frames, tokens_per_frame, block=128, sink=True, mask="paper")``:
  ``q, k, v`` of shape ``(batch, heads, frames * tokens_per_frame, dim)`` in bf16, fp16 or fp32;
  returns the attention output (same shape and dtype), equal to softmax attention under the
  token-level radial mask of rule ``mask`` (the paper's Equation 4, or ``"gpuos"``; see
  :mod:`gpuos.kernels.radial_spec`). One program per (query block, batch x head) walks only that
  query block's key blocks with an online softmax in fp32; on block pairs that the layout marks
  partial it applies the token mask, computed from token indices and the per-frame-distance
  window table (both rules are such a table, so one kernel serves both).
- :func:`run_job`: the ``radial-dit`` kernel job's runner.
- :func:`bench_cases` ``(device="cuda")``: for ``bench/kernels.py``, a list of
  ``(label, sparse_call, dense_call, flops)`` at Wan2.1 480p shapes (12 heads, dim 128, bf16,
  1560 tokens per latent frame) for 81 video frames (21 latent, ~32.8K tokens) and 4x that length
  (81 latent frames, ~126K tokens), under the default (paper's) mask; ``sparse_call`` runs this
  kernel, ``dense_call`` runs PyTorch's SDPA on the same inputs, and ``flops`` is what the sparse
  kernel computes (``4 * heads * dim * active blocks * block**2``), for a FLOP rate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import torch
import triton
import triton.language as tl

from gpuos.kernels import atoms
from gpuos.kernels.context import KernelContext
from gpuos.kernels.radial_spec import DEFAULT_MASK, RadialLayout, check_mask, radial_layout
from gpuos.kernels.reference.radial import dense_sdpa

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The head dims and block sizes the kernel's tiles are written for.
DIMS = (16, 32, 64, 128, 256)
BLOCKS = (16, 32, 64, 128)

# Shapes the CPU (Triton interpreter) run is capped at, so that a job step takes about a second.
CPU_CAPS = {"batch": 1, "heads": 2, "dim": 32, "frames": 8, "tokens_per_frame": 48, "block": 32}


@triton.jit
def _attend(acc, m_i, l_i, q, K, V, offs_n, offs_d, stride_kn, stride_vn, frame_q, spatial_q, WIDTHS,
            seq_len, tokens_per_frame, frames, qk_scale, MASKED: tl.constexpr, SINK: tl.constexpr,
            DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax step over the keys ``offs_n``; ``MASKED`` applies the token-level mask."""
    col_ok = offs_n < seq_len
    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    s = tl.where(col_ok[None, :], s, float("-inf"))
    if MASKED:
        frame_k = offs_n // tokens_per_frame
        spatial_k = offs_n - frame_k * tokens_per_frame
        dist = tl.abs(frame_q[:, None] - frame_k[None, :])
        width = tl.load(WIDTHS + dist, mask=dist < frames, other=0)
        if SINK:
            width = tl.where(frame_k[None, :] == 0, tokens_per_frame, width)
        s = tl.where(tl.abs(spatial_q[:, None] - spatial_k[None, :]) < width, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # A row with nothing attended so far keeps m = -inf; shift by 0 there to avoid inf - inf.
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attend_blocks(acc, m_i, l_i, q, K, V, ROW, start, stop, offs_d, stride_kn, stride_vn, frame_q, spatial_q,
                   WIDTHS, seq_len, tokens_per_frame, frames, qk_scale, BLOCK: tl.constexpr,
                   TILE: tl.constexpr, MASKED: tl.constexpr, SINK: tl.constexpr, DOT_F32: tl.constexpr,
                   PRECISION: tl.constexpr):
    """The key blocks ``ROW[start:stop]``, in sub-tiles of ``TILE`` keys."""
    for t in range(start, stop):
        kb = tl.load(ROW + t)
        for sub in tl.static_range(BLOCK // TILE):
            offs_n = kb * BLOCK + sub * TILE + tl.arange(0, TILE)
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, K, V, offs_n, offs_d, stride_kn, stride_vn, frame_q,
                                    spatial_q, WIDTHS, seq_len, tokens_per_frame, frames, qk_scale,
                                    MASKED, SINK, DOT_F32, PRECISION)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["pid_offset"])
def _radial_fwd(
    Q, K, V, Out, KV_INDEX, KV_FULL, KV_COUNT, WIDTHS,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    heads, seq_len, tokens_per_frame, frames, max_blocks, qk_scale, pid_offset,
    SINK: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N_MASKED: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    # Each row of KV_INDEX lists the query block's full key blocks first (KV_FULL of them), then
    # its partial ones; the partial ones run in a separate loop with smaller tiles, so that the
    # token mask's registers do not weigh on the full blocks' loop. Programs are independent, so
    # the grid may run as atoms (slices of query blocks starting at ``pid_offset``).
    qb = tl.program_id(0) + pid_offset
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    offs_m = qb * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_len
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    frame_q = offs_m // tokens_per_frame
    spatial_q = offs_m - frame_q * tokens_per_frame
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    n_full = tl.load(KV_FULL + qb)
    n_all = tl.load(KV_COUNT + qb)
    row = KV_INDEX + qb * max_blocks
    acc, m_i, l_i = _attend_blocks(acc, m_i, l_i, q, K, V, row, 0, n_full, offs_d, stride_kn, stride_vn,
                                   frame_q, spatial_q, WIDTHS, seq_len, tokens_per_frame, frames, qk_scale,
                                   BLOCK, BLOCK_N, False, SINK, DOT_F32, PRECISION)
    acc, m_i, l_i = _attend_blocks(acc, m_i, l_i, q, K, V, row, n_full, n_all, offs_d, stride_kn, stride_vn,
                                   frame_q, spatial_q, WIDTHS, seq_len, tokens_per_frame, frames, qk_scale,
                                   BLOCK, BLOCK_N_MASKED, True, SINK, DOT_F32, PRECISION)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@lru_cache(maxsize=32)
def _device_layout(frames: int, tokens_per_frame: int, block: int, sink: bool, mask: str,
                   device: str) -> tuple[RadialLayout, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cached layout as tensors on ``device``: per query block its key blocks (padded, full ones
    first), how many are full, how many in all; and the window table."""
    layout = radial_layout(frames, tokens_per_frame, block, sink, mask)
    index = torch.zeros(layout.num_blocks, layout.max_blocks_per_row, dtype=torch.int32)
    full = torch.zeros(layout.num_blocks, dtype=torch.int32)
    for qb, (row, flags) in enumerate(zip(layout.key_blocks, layout.partial, strict=True)):
        ordered = [kb for kb, p in zip(row, flags, strict=True) if not p] + [kb for kb, p in zip(row, flags, strict=True) if p]
        index[qb, : len(row)] = torch.tensor(ordered, dtype=torch.int32)
        full[qb] = len(row) - sum(flags)
    counts = torch.tensor([len(row) for row in layout.key_blocks], dtype=torch.int32)
    widths = torch.tensor(layout.widths, dtype=torch.int32)
    return layout, index.to(device), full.to(device), counts.to(device), widths.to(device)


def _tiles(block: int, dim: int, dtype: torch.dtype) -> dict[str, Any]:
    """Sub-tile sizes and launch options, chosen from ptxas's register and spill report for sm_90
    (not from GPU timings: none were available): 64-key tiles on full blocks and 16- or 32-key
    tiles on masked ones keep bf16/fp16 at block 128, dim 128 within 255 registers without spills;
    fp32 uses 3-pass TF32 (close to fp32 accuracy; plain fp32 products spill heavily) with smaller
    tiles and one stage so that its shared memory fits."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if dtype == torch.float32:
        return {"BLOCK_N": min(block, 32 if dim <= 128 else 16), "BLOCK_N_MASKED": min(block, 16), "DOT_F32": True,
                "PRECISION": "tf32x3", "num_warps": 8 if block == 128 or dim >= 128 else 4, "num_stages": 1}
    return {
        "BLOCK_N": min(block, 64), "BLOCK_N_MASKED": min(block, 16 if dim >= 128 else 32),
        # The interpreter's tl.dot is wrong on bf16 (see shared/notes/kernels.md), so it sees fp32.
        "DOT_F32": interpreting and dtype == torch.bfloat16, "PRECISION": "tf32",
        "num_warps": 8 if block == 128 or dim == 256 else 4, "num_stages": 2,
    }


def radial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, tokens_per_frame: int,
                     block: int = 128, sink: bool = True, scale: float | None = None,
                     out: torch.Tensor | None = None, ctx: KernelContext | None = None, *,
                     mask: str = DEFAULT_MASK) -> torch.Tensor:
    """Softmax attention of ``q`` over ``k, v`` under the radial mask of rule ``mask`` (``"paper"``
    or ``"gpuos"``); see the module docstring.

    ``out``, when given, is written in place and returned (same shape, dtype and device as ``q``).
    With ``ctx`` the grid runs as atoms (``gpuos.kernels.atoms``), bit-identical to one launch.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share a (batch, heads, seq, dim) shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    batch, heads, seq, dim = q.shape
    if seq != frames * tokens_per_frame:
        raise ValueError(f"sequence length {seq} != frames ({frames}) x tokens_per_frame ({tokens_per_frame})")
    if q.dtype not in DTYPES.values() or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must all be bf16, fp16 or fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if dim not in DIMS:
        raise ValueError(f"head dim must be one of {DIMS}; got {dim}")
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}; got {block}")
    check_mask(mask)
    if q.dtype == torch.float32 and dim == 256 and block == 128:
        raise ValueError("fp32 inputs with head dim 256 need block <= 64 (the tiles would not fit in shared memory)")
    if k.device != q.device or v.device != q.device:
        raise ValueError("q, k and v must be on the same device")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k and v must be contiguous in the head dimension")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError("out must match q in shape, dtype and device, contiguous in the head dimension")
    layout, index, full, counts, widths = _device_layout(frames, tokens_per_frame, block, sink, mask,
                                                         str(q.device))
    scale = dim**-0.5 if scale is None else scale
    tiles = _tiles(block, dim, q.dtype)
    atoms.launch(
        _radial_fwd, (layout.num_blocks, batch * heads),
        q, k, v, out, index, full, counts, widths,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        heads, seq, tokens_per_frame, frames, layout.max_blocks_per_row, scale * 1.4426950408889634,
        ctx=ctx, SINK=sink, BLOCK=block, HEAD_DIM=dim, **tiles,
    )
    return out


def _job_shape(params: Mapping[str, Any], on_gpu: bool) -> tuple[dict[str, int], bool]:
    shape = {name: int(params[name]) for name in CPU_CAPS}
    if on_gpu:
        return shape, False
    capped = {name: min(value, CPU_CAPS[name]) for name, value in shape.items()}
    return capped, capped != shape


def run_job(params: Mapping[str, Any], ctx: KernelContext) -> dict[str, float]:
    """Run ``steps`` radial attention calls on random inputs, reporting each step's latency.

    On the CPU the shape is capped at :data:`CPU_CAPS` (the summary's ``capped`` says so) since
    the interpreter is slow; the summary gives the shape actually run and the layout's density.
    """
    shape, capped = _job_shape(params, ctx.on_gpu)
    dtype = DTYPES[str(params["dtype"])]
    sink = bool(params["sink"])
    mask = str(params["mask"])
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    seq = shape["frames"] * shape["tokens_per_frame"]
    q, k, v = (torch.randn(shape["batch"], shape["heads"], seq, shape["dim"], device=ctx.device, dtype=dtype,
                           generator=gen) for _ in range(3))
    out = torch.empty_like(q)
    latencies = []
    for step in range(int(params["steps"])):
        start = time.perf_counter()
        radial_attention(q, k, v, shape["frames"], shape["tokens_per_frame"], shape["block"], sink, out=out,
                         ctx=ctx, mask=mask)
        if ctx.on_gpu:
            torch.cuda.current_stream(ctx.device).synchronize()  # its own stream: an executor runs others
        latencies.append(time.perf_counter() - start)
        ctx.report(step, latencies[-1])
    layout = radial_layout(shape["frames"], shape["tokens_per_frame"], shape["block"], sink, mask)
    mean = sum(latencies) / len(latencies)
    flops = 4.0 * shape["batch"] * shape["heads"] * shape["dim"] * layout.active_blocks * shape["block"] ** 2
    return {
        **{name: float(value) for name, value in shape.items()},
        "seq_len": float(seq),
        "capped": float(capped),
        "block_density": layout.density,
        "mean_latency_ms": mean * 1e3,
        "tflops": flops / mean / 1e12 if ctx.on_gpu else 0.0,
    }


BenchCase = tuple[str, Callable[[], torch.Tensor], Callable[[], torch.Tensor], float]


def bench_cases(
    device: str = "cuda", *, heads: int = 12, dim: int = 128, tokens_per_frame: int = 1560, block: int = 128,
    frames: tuple[int, int] = (21, 81), dtype: torch.dtype = torch.bfloat16,
) -> list[BenchCase]:
    """Radial vs dense SDPA at 1x and 4x video length, for ``bench/kernels.py``: by default
    Wan2.1 480p's shapes (81 frames are 21 latent ones, 4x length 81), see the module docstring;
    smaller shapes run it on the CPU."""
    cases = []
    for scale, latent in zip(("1x", "4x"), frames, strict=True):
        q, k, v = (torch.randn(1, heads, latent * tokens_per_frame, dim, device=device, dtype=dtype)
                   for _ in range(3))
        layout = radial_layout(latent, tokens_per_frame, block, True, DEFAULT_MASK)

        def sparse(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v, latent: int = latent) -> torch.Tensor:
            return radial_attention(q, k, v, latent, tokens_per_frame, block, mask=DEFAULT_MASK)

        def dense(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> torch.Tensor:
            return dense_sdpa(q, k, v)

        flops = 4.0 * heads * dim * layout.active_blocks * block**2
        cases.append((f"radial {scale} length ({latent} latent frames x {tokens_per_frame} tokens), {DEFAULT_MASK} "
                      f"mask, block density {layout.density:.1%}", sparse, dense, flops))
    return cases
