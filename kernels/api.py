"""The kernels as user functions: every argument checked, one error type, then the implementation.

``vattention_decode``, ``sla_attention`` and ``radial_attention`` here take the same arguments as
the functions of the same name in :mod:`gpuos.kernels.vattention`, :mod:`gpuos.kernels.sla` and
:mod:`gpuos.kernels.radial`, check each of them (rank, the sizes that must agree, dtype, device,
contiguity where the kernel needs it, value ranges) and raise :class:`KernelArgumentError`, whose
message starts with the argument's name, before any kernel runs. Keywords they do not know
(options added to an implementation later) are passed through unchanged, so they keep working
here. Layouts, dtypes and guarantees: ``docs/kernels/README.md``.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from typing import Any

import torch

from gpuos.kernels import radial, sla, vattention
from gpuos.kernels.radial_spec import MASKS
from gpuos.kernels.vattention import VAttentionConfig, VAttentionResult

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)
VATTENTION_MAX_DIM = 256
SLA_SIZES = sla.SUPPORTED_DIMS


class KernelArgumentError(ValueError):
    """A bad argument to a kernel; ``argument`` names it, and the message starts with it."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"{argument}: {problem}")
        self.argument = argument


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def _tensor(name: str, x: object, rank: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise KernelArgumentError(name, f"must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise KernelArgumentError(name, f"must be {layout} (rank {rank}), got shape {tuple(x.shape)}")
    return x


def _dtype(name: str, x: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if x.dtype not in allowed:
        raise KernelArgumentError(name, f"dtype must be one of {_names(allowed)}, got {_names([x.dtype])}")


def _same_dtype(name: str, x: torch.Tensor, like: str, other: torch.Tensor) -> None:
    if x.dtype != other.dtype:
        raise KernelArgumentError(name, f"dtype {_names([x.dtype])} differs from {like}'s {_names([other.dtype])}")


def _same_device(name: str, x: torch.Tensor, like: str, other: torch.Tensor) -> None:
    if x.device != other.device:
        raise KernelArgumentError(name, f"is on {x.device} but {like} is on {other.device}")


def _unit_stride(name: str, x: torch.Tensor) -> None:
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        raise KernelArgumentError(name, f"must be contiguous in its last dimension, got strides {x.stride()}")


def _integer(name: str, value: object, low: int) -> int:
    if isinstance(value, bool):
        raise KernelArgumentError(name, f"must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise KernelArgumentError(name, f"must be an integer, got {type(value).__name__}") from None
    if number < low:
        raise KernelArgumentError(name, f"must be >= {low}, got {number}")
    return number


def _choice(name: str, value: object, allowed: Sequence[Any]) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise KernelArgumentError(name, f"must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")


def _ratio(name: str, value: object, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KernelArgumentError(name, f"must be a number, got {type(value).__name__}")
    ratio = float(value)
    if not (low < ratio if low_open else low <= ratio) or not ratio <= high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise KernelArgumentError(name, f"must be in {interval}, got {value!r}")
    return ratio


def _runnable(x: torch.Tensor) -> None:
    # Triton kernels compile for CUDA; on the CPU only Triton's interpreter runs them.
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise KernelArgumentError("q", f"is on {x.device}: the Triton kernels need a CUDA device (or "
                                       "TRITON_INTERPRET=1 set before Triton is imported, to run them slowly "
                                       "on the CPU)")


def _no_grad(q: torch.Tensor, why: str, *others: torch.Tensor) -> None:
    # A forward-only kernel's output would silently carry no gradient back to its inputs.
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, *others)):
        raise KernelArgumentError("q", f"requires grad, but {why}; call it under torch.no_grad()")


def _out(out: object, like: torch.Tensor, layout: str) -> None:
    if out is None:
        return
    tensor = _tensor("out", out, like.dim(), layout)
    if tensor.shape != like.shape or tensor.dtype != like.dtype or tensor.device != like.device:
        raise KernelArgumentError("out", f"must match q: shape {tuple(like.shape)}, {_names([like.dtype])} on "
                                         f"{like.device}; got {tuple(tensor.shape)}, {_names([tensor.dtype])} on "
                                         f"{tensor.device}")
    _unit_stride("out", tensor)


# ----------------------------------------------------------------------------- vAttention


def _check_bounds(bounds: object, page_table: torch.Tensor, k_cache: torch.Tensor) -> None:
    if not isinstance(bounds, tuple) or len(bounds) != 2:
        raise KernelArgumentError("bounds", "must be a (key_min, key_max) pair of tensors, as page_key_bounds returns")
    batch, max_pages = page_table.shape
    want = (batch, max_pages, k_cache.shape[2], k_cache.shape[3])
    for part in bounds:
        _tensor("bounds", part, 4, "[B, max_pages, Hkv, D]")
        if tuple(part.shape) != want:
            raise KernelArgumentError("bounds", f"must be two {list(want)} tensors (page_table's rows and pages, the "
                                                f"cache's heads and dim), got {tuple(part.shape)}")
        _dtype("bounds", part, (torch.float32,))
        _same_device("bounds", part, "k_cache", k_cache)


def _check_value_bounds(value_bounds: object, page_table: torch.Tensor, v_cache: torch.Tensor) -> None:
    batch, max_pages = page_table.shape
    shapes = ((batch, max_pages, v_cache.shape[2], v_cache.shape[3]), (batch, max_pages, v_cache.shape[2]))
    if not isinstance(value_bounds, tuple) or len(value_bounds) != 2:
        raise KernelArgumentError("value_bounds", "must be a (center, radius) pair of tensors, as page_value_bounds "
                                                  "returns")
    for part, want in zip(value_bounds, shapes, strict=True):
        _tensor("value_bounds", part, len(want), "(center[B, max_pages, Hkv, D], radius[B, max_pages, Hkv])")
        if tuple(part.shape) != want:
            raise KernelArgumentError("value_bounds", f"must be center {list(shapes[0])} and radius {list(shapes[1])} "
                                                      f"(page_table's rows and pages, the cache's heads and dim), "
                                                      f"got {tuple(part.shape)}")
        _dtype("value_bounds", part, (torch.float32,))
        _same_device("value_bounds", part, "v_cache", v_cache)


def vattention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    config: VAttentionConfig | None = None,
    *,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    backend: str = "triton",
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    **kwargs: Any,
) -> VAttentionResult:
    """Verified sparse decode attention of one query token per sequence over a paged KV cache.

    ``q[B, Hq, D]``; ``k_cache, v_cache[num_pages, page_size, Hkv, D]`` contiguous, q's dtype (fp16,
    bf16 or fp32), ``Hq`` a multiple of ``Hkv`` (grouped-query attention), ``D <= 256``;
    ``page_table[B, max_pages]`` (int32/int64; every entry a page of the cache, unused ones
    included, 0 will do); ``seq_lens[B]`` (int32/int64, each in ``1 .. max_pages * page_size``).
    ``bounds``: per-page key minima and maxima as ``page_key_bounds`` returns them, and
    ``value_bounds`` (passed through): per-page value centers and radii as ``page_value_bounds``
    returns them, and ``sketch`` (passed through): the int8 key sketch as ``key_sketch`` returns it,
    all kept by the caller as pages fill (computed from the whole cache when omitted; ``bounds`` is
    read by ``selection="pages"`` only, ``sketch`` by ``selection="sketch"``, the default).
    ``config`` carries the method's knobs and its ``(epsilon, delta)`` promise; see
    :class:`gpuos.kernels.vattention.VAttentionResult` for what comes back.
    """
    q = _tensor("q", q, 3, "[B, Hq, D]")
    k_cache = _tensor("k_cache", k_cache, 4, "[num_pages, page_size, Hkv, D]")
    v_cache = _tensor("v_cache", v_cache, 4, "[num_pages, page_size, Hkv, D]")
    page_table = _tensor("page_table", page_table, 2, "[B, max_pages]")
    seq_lens = _tensor("seq_lens", seq_lens, 1, "[B]")
    batch, heads, dim = q.shape
    num_pages, page_size, kv_heads, cache_dim = k_cache.shape
    _dtype("q", q, FLOAT_DTYPES)
    _same_dtype("k_cache", k_cache, "q", q)
    _same_dtype("v_cache", v_cache, "q", q)
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache), ("page_table", page_table), ("seq_lens", seq_lens)):
        _same_device(name, x, "q", q)
    if v_cache.shape != k_cache.shape:
        raise KernelArgumentError("v_cache", f"shape {tuple(v_cache.shape)} differs from k_cache's {tuple(k_cache.shape)}")
    if min(num_pages, page_size, kv_heads, cache_dim) == 0 or min(batch, heads, dim) == 0:
        raise KernelArgumentError("q" if q.numel() == 0 else "k_cache", "has an empty dimension")
    if cache_dim != dim:
        raise KernelArgumentError("k_cache", f"head dim {cache_dim} differs from q's {dim}")
    if heads % kv_heads:
        raise KernelArgumentError("q", f"has {heads} heads, not a multiple of the cache's {kv_heads} KV heads")
    if dim > VATTENTION_MAX_DIM:
        raise KernelArgumentError("q", f"head dim {dim} is above {VATTENTION_MAX_DIM}")
    _unit_stride("q", q)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not cache.is_contiguous():
            # A copy of the cache on every decoding step would cost more than the attention.
            raise KernelArgumentError(name, "must be contiguous")
    _dtype("page_table", page_table, INDEX_DTYPES)
    _dtype("seq_lens", seq_lens, INDEX_DTYPES)
    if page_table.shape[0] != batch or page_table.shape[1] == 0:
        raise KernelArgumentError("page_table", f"must be [{batch}, max_pages >= 1] (q's batch), got "
                                                f"{tuple(page_table.shape)}")
    if seq_lens.shape[0] != batch:
        raise KernelArgumentError("seq_lens", f"must be [{batch}] (q's batch), got {tuple(seq_lens.shape)}")
    # The call's one device-to-host copy, for the four range checks.
    lo_len, hi_len, lo_page, hi_page = torch.stack([
        seq_lens.min().long(), seq_lens.max().long(), page_table.min().long(), page_table.max().long()]).tolist()
    capacity = page_table.shape[1] * page_size
    if lo_len < 1 or hi_len > capacity:
        raise KernelArgumentError("seq_lens", f"every length must be in 1 .. max_pages * page_size = {capacity}, got "
                                              f"{lo_len} .. {hi_len}")
    if lo_page < 0 or hi_page >= num_pages:
        raise KernelArgumentError("page_table", f"entries must be pages 0 .. {num_pages - 1} of the cache, got "
                                                f"{lo_page} .. {hi_page}")
    if config is not None and not isinstance(config, VAttentionConfig):
        raise KernelArgumentError("config", f"must be a VAttentionConfig or None, got {type(config).__name__}")
    cfg = config or VAttentionConfig()
    if bounds is not None:
        _check_bounds(bounds, page_table, k_cache)
        if cfg.selection != "pages":
            # The implementation ranks pages whenever bounds are given; the other selections rank tokens.
            bounds = None
    if kwargs.get("sketch") is not None:
        problem = vattention.sketch_problem(kwargs["sketch"], page_table, k_cache)
        if problem:
            raise KernelArgumentError("sketch", problem)
    if kwargs.get("value_bounds") is not None:
        _check_value_bounds(kwargs["value_bounds"], page_table, v_cache)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise KernelArgumentError("generator", f"must be a torch.Generator, got {type(generator).__name__}")
        if generator.device != q.device:
            raise KernelArgumentError("generator", f"is on {generator.device} but q is on {q.device}")
    _choice("backend", backend, ("triton", "reference"))
    if backend == "triton":
        _runnable(q)
        _no_grad(q, "vattention_decode's Triton kernels have no backward pass")
    if out is not None and backend == "reference":
        raise KernelArgumentError("out", "is only written by backend='triton' (the reference computes in float64)")
    _out(out, q, "[B, Hq, D]")
    if num_splits is not None:
        _integer("num_splits", num_splits, 1)
    # Everything the implementation's own checks cover is checked above: skip them (a decode step
    # is latency-bound, and their range check is a second device-to-host copy); the longest
    # length read for the range check spares the decode its own read of it.
    return vattention._decode(q, k_cache, v_cache, page_table, seq_lens, cfg, bounds=bounds, generator=generator,
                              backend=backend, out=out, num_splits=num_splits, longest=hi_len, **kwargs)


# ----------------------------------------------------------------------------- SLA and radial


def _check_qkv(q: object, k: object, v: object, dims: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-attention inputs ``[B, H, N, D]`` of one shape, dtype and device, ``D`` in ``dims``."""
    layout = "[batch, heads, N, head_dim]"
    q = _tensor("q", q, 4, layout)
    k = _tensor("k", k, 4, layout)
    v = _tensor("v", v, 4, layout)
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise KernelArgumentError(name, f"shape {tuple(x.shape)} differs from q's {tuple(q.shape)} "
                                            "(self-attention over one sequence, one KV head per query head)")
    if q.shape[2] == 0 or q.shape[0] == 0 or q.shape[1] == 0:
        raise KernelArgumentError("q", f"has an empty dimension: {tuple(q.shape)}")
    _dtype("q", q, FLOAT_DTYPES)
    for name, x in (("k", k), ("v", v)):
        _same_dtype(name, x, "q", q)
        _same_device(name, x, "q", q)
    if q.shape[3] not in dims:
        raise KernelArgumentError("q", f"head dim {q.shape[3]} is not supported; use one of {tuple(dims)}")
    _runnable(q)
    return q, k, v


def sla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj: torch.Tensor | None = None,
    *,
    block: int = 64,
    critical_ratio: float = 0.05,
    negligible_ratio: float = 0.0,
    block_map: sla.BlockMap | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Sparse-linear attention (SLA) of ``q, k, v[B, H, N, D]`` (SDPA's layout; fp16, bf16 or fp32,
    ``D`` in 16, 32, 64, 128; any ``N``), differentiable in q, k, v and proj; returns q's shape and dtype.

    Per query block of ``block`` tokens, the ``critical_ratio`` highest-scoring key blocks (by pooled
    scores) are attended exactly, the ``negligible_ratio`` lowest skipped and the rest go through
    linear attention mapped by ``proj`` (``[D, D]``; ``None`` is zeros: pure block-sparse attention,
    an untrained SLA layer). ``block_map`` fixes the classes instead.
    """
    q, k, v = _check_qkv(q, k, v, SLA_SIZES)
    batch, heads, n, dim = q.shape
    _choice("block", block, SLA_SIZES)
    critical = _ratio("critical_ratio", critical_ratio, 0.0, 1.0, low_open=True)
    negligible = _ratio("negligible_ratio", negligible_ratio, 0.0, 1.0, low_open=False)
    if critical + negligible > 1.0:
        raise KernelArgumentError("negligible_ratio", f"critical_ratio + negligible_ratio must be <= 1, got "
                                                      f"{critical} + {negligible}")
    if proj is None:
        proj = torch.zeros(dim, dim, device=q.device, dtype=torch.float32)
    else:
        proj = _tensor("proj", proj, 2, f"[{dim}, {dim}]")
        if tuple(proj.shape) != (dim, dim):
            raise KernelArgumentError("proj", f"must be [{dim}, {dim}] (q's head dim), got {tuple(proj.shape)}")
        _dtype("proj", proj, FLOAT_DTYPES)
        _same_device("proj", proj, "q", q)
    if block_map is not None:
        if not isinstance(block_map, sla.BlockMap):
            raise KernelArgumentError("block_map", f"must be a BlockMap, got {type(block_map).__name__}")
        blocks = math.ceil(n / block)
        if tuple(block_map.classes.shape) != (batch, heads, blocks, blocks):
            raise KernelArgumentError("block_map", f"must classify [{batch}, {heads}, {blocks}, {blocks}] block pairs "
                                                   f"(N={n} in blocks of {block}), got "
                                                   f"{tuple(block_map.classes.shape)}")
        _same_device("block_map", block_map.order, "q", q)
    return sla.sla_attention(q, k, v, proj, block=block, critical_ratio=critical, negligible_ratio=negligible,
                             block_map=block_map, **kwargs)


def radial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    frames: int,
    tokens_per_frame: int,
    *,
    block: int = 128,
    sink: bool = True,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Softmax attention of a video's tokens under Radial Attention's static mask.

    ``q, k, v[B, H, N, D]`` (SDPA's layout; fp16, bf16 or fp32; ``D`` in 16, 32, 64, 128, 256;
    fp32 with ``D = 256`` needs ``block <= 64``), ``N = frames * tokens_per_frame``, frame-major
    (token ``t`` is spatial position ``t % tokens_per_frame`` of frame ``t // tokens_per_frame``).
    Inputs strided in the head dimension are copied once. ``mask`` (passed through) picks the
    rule, the paper's by default. Returns q's shape and dtype (into ``out`` when given).
    """
    q, k, v = _check_qkv(q, k, v, radial.DIMS)
    frames = _integer("frames", frames, 1)
    tokens_per_frame = _integer("tokens_per_frame", tokens_per_frame, 1)
    n, dim = q.shape[2], q.shape[3]
    if n != frames * tokens_per_frame:
        raise KernelArgumentError("tokens_per_frame", f"frames x tokens_per_frame = {frames} x {tokens_per_frame} = "
                                                      f"{frames * tokens_per_frame}, but q holds N={n} tokens")
    _choice("block", block, radial.BLOCKS)
    if q.dtype == torch.float32 and dim == 256 and block == 128:
        raise KernelArgumentError("block", "fp32 with head dim 256 needs block <= 64 (the tiles would not fit in "
                                           "shared memory)")
    if not isinstance(sink, bool):
        raise KernelArgumentError("sink", f"must be a bool, got {type(sink).__name__}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise KernelArgumentError("scale", f"must be a positive finite number or None, got {scale!r}")
        scale = float(scale)
    _no_grad(q, "radial attention has no backward pass", k, v)
    if "mask" in kwargs:
        _choice("mask", kwargs["mask"], MASKS)
    _out(out, q, "[batch, heads, N, head_dim]")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return radial.radial_attention(q, k, v, frames, tokens_per_frame, block, sink, scale, out, **kwargs)
