"""The built-in attention kernels as checked functions for user code.

Each function validates its arguments (shapes, dtypes, devices, strides) and then calls the
kernel family's own launcher, so results are those of ``gpuos.kernels.vattention``,
``gpuos.kernels.sla`` and ``gpuos.kernels.radial`` bit for bit. A bad argument raises
:class:`KernelArgumentError`, whose message starts with the argument's name and says what was
expected, e.g. ``q: expected [B, Hq, D] (one decoding query per head), got shape (2, 8, 1, 64)``.

The launchers run Triton kernels: on a CUDA device, or on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1`` set before ``triton`` is first imported; slow, for tests at small shapes).

Usage, with examples: ``docs/kernels/README.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from gpuos.errors import InvalidArgument
from gpuos.kernels import radial as _radial
from gpuos.kernels import sla as _sla
from gpuos.kernels import vattention as _vattention
from gpuos.kernels.radial_spec import MASKS
from gpuos.kernels.sla import BlockMap
from gpuos.kernels.vattention import VAttentionConfig, VAttentionResult, page_key_bounds

__all__ = [
    "KernelArgumentError", "VAttentionConfig", "VAttentionResult", "page_key_bounds",
    "radial_attention", "sla_attention", "vattention_decode",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)
SLA_SIZES = _sla.SUPPORTED_DIMS
RADIAL_DIMS = (16, 32, 64, 128, 256)
RADIAL_BLOCKS = (16, 32, 64, 128)
VATTENTION_MAX_DIM = 256


class KernelArgumentError(InvalidArgument, ValueError):
    """A bad argument to a public kernel function. ``field`` names the argument; it is also a
    ``ValueError``, which is what PyTorch code usually catches."""


def _fail(name: str, problem: str) -> KernelArgumentError:
    return KernelArgumentError(name, problem)


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise _fail(name, f"expected a torch.Tensor, got {type(x).__name__}")
    return x


def _dtype(name: str, x: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if x.dtype not in allowed:
        raise _fail(name, f"expected dtype {_names(allowed)}, got {_names([x.dtype])}")


def _like(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor, dtype: bool = True) -> None:
    """``x`` on ``ref``'s device (and in its dtype when ``dtype``)."""
    if x.device != ref.device:
        raise _fail(name, f"expected device {ref.device} (that of {ref_name}), got {x.device}")
    if dtype and x.dtype != ref.dtype:
        raise _fail(name, f"expected dtype {_names([ref.dtype])} (that of {ref_name}), got {_names([x.dtype])}")


def _runnable(name: str, x: torch.Tensor) -> None:
    # Without the interpreter, a CPU tensor reaches Triton's launcher and fails deep inside it.
    if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise _fail(name, f"is on {x.device}; the Triton kernels need a CUDA device, or TRITON_INTERPRET=1 "
                          "set before triton is imported (the CPU interpreter: slow, for tests)")


def _no_grad(name: str, x: torch.Tensor, function: str) -> None:
    if x.requires_grad and torch.is_grad_enabled():
        raise _fail(name, f"requires grad, but {function} has no backward; call it under torch.no_grad()")


def _unit_last_stride(name: str, x: torch.Tensor) -> None:
    if x.dim() and x.stride(-1) != 1 and x.shape[-1] > 1:
        raise _fail(name, f"expected a contiguous last dimension (stride 1), got strides {x.stride()}")


def _out(out: torch.Tensor | None, q: torch.Tensor) -> None:
    if out is None:
        return
    _tensor("out", out)
    if out.shape != q.shape:
        raise _fail("out", f"expected shape {_shape(q)} (that of q), got {_shape(out)}")
    _like("out", out, "q", q)
    _unit_last_stride("out", out)


# ----------------------------------------------------------------------------- vAttention


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
    out: torch.Tensor | None = None,
) -> VAttentionResult:
    """Verified sparse attention (vAttention) for one decoding step over a paged KV cache.

    Args:
        q: ``[B, Hq, D]``, the step's query per head (rotary embedding applied), fp16, bf16 or
            fp32, ``D <= 256``, last dimension contiguous.
        k_cache, v_cache: ``[num_pages, page_size, Hkv, D]``, q's dtype and device, contiguous.
            ``Hq`` must be a multiple of ``Hkv`` (grouped-query attention: query head ``h`` reads
            KV head ``h // (Hq // Hkv)``).
        page_table: ``[B, max_pages]`` int32 or int64: sequence ``b``'s logical page ``p`` is
            physical page ``page_table[b, p]``; entries past a sequence's last page are unread.
        seq_lens: ``[B]`` int32 or int64, tokens held per sequence, each in
            ``1 .. max_pages * page_size`` (ragged batches allowed).
        config: the method's knobs (``VAttentionConfig``: ``epsilon``, ``delta``, ``sink``,
            ``local``, ``top_k``, ``base_sample``, ``selection``); defaults when None.
        bounds: per-page key minima and maxima ``(lo, hi)``, each ``[B, max_pages, Hkv, D]``
            fp32, as ``page_key_bounds`` computes them; a serving system keeps them up to date as
            pages fill, so that page selection reads the bounds, not the key cache. Computed from
            the cache when None (with ``selection="pages"``).
        generator: the random source of the sample (on q's device), for reproducible draws.
        out: ``[B, Hq, D]`` in q's dtype, written in place when given.

    Returns:
        ``VAttentionResult``: ``out [B, Hq, D]`` in q's dtype and, per query head ``[B, Hq]``,
        ``sample_size``, ``n_rest``, ``exact`` and ``density`` (the share of the sequence attended).

    What the (epsilon, delta) statement covers, and where its premises fail, is in
    ``docs/kernels/vattention.md``; this function adds checks only, no behaviour.
    """
    q = _tensor("q", q)
    if q.dim() != 3:
        raise _fail("q", f"expected [B, Hq, D] (one decoding query per head), got shape {_shape(q)}")
    _dtype("q", q, FLOAT_DTYPES)
    batch, heads, dim = q.shape
    if not 1 <= dim <= VATTENTION_MAX_DIM:
        raise _fail("q", f"expected head dim D in 1 .. {VATTENTION_MAX_DIM}, got {dim}")
    _unit_last_stride("q", q)
    _runnable("q", q)
    _no_grad("q", q, "vattention_decode")
    k_cache = _tensor("k_cache", k_cache)
    if k_cache.dim() != 4 or k_cache.shape[3] != dim or k_cache.shape[2] < 1 or heads % k_cache.shape[2]:
        raise _fail("k_cache", f"expected [num_pages, page_size, Hkv, D={dim}] with Hq={heads} a multiple of "
                               f"Hkv, got shape {_shape(k_cache)}")
    v_cache = _tensor("v_cache", v_cache)
    if v_cache.shape != k_cache.shape:
        raise _fail("v_cache", f"expected shape {_shape(k_cache)} (that of k_cache), got {_shape(v_cache)}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        _like(name, cache, "q", q)
        if not cache.is_contiguous():
            raise _fail(name, "expected a contiguous tensor (a copy of a cache is too costly to make silently)")
    num_pages, page_size, num_kv, _ = k_cache.shape
    page_table = _tensor("page_table", page_table)
    if page_table.dim() != 2 or page_table.shape[0] != batch:
        raise _fail("page_table", f"expected [B={batch}, max_pages], got shape {_shape(page_table)}")
    _dtype("page_table", page_table, INDEX_DTYPES)
    _like("page_table", page_table, "q", q, dtype=False)
    seq_lens = _tensor("seq_lens", seq_lens)
    if seq_lens.shape != (batch,):
        raise _fail("seq_lens", f"expected [B={batch}], got shape {_shape(seq_lens)}")
    _dtype("seq_lens", seq_lens, INDEX_DTYPES)
    _like("seq_lens", seq_lens, "q", q, dtype=False)
    capacity = page_table.shape[1] * page_size
    if int(seq_lens.min()) < 1 or int(seq_lens.max()) > capacity:
        raise _fail("seq_lens", f"expected each in 1 .. max_pages * page_size = {capacity}, got {seq_lens.tolist()}")
    used = torch.arange(page_table.shape[1], device=q.device) * page_size < seq_lens.view(batch, 1)
    pages = page_table[used]
    if pages.numel() and (int(pages.min()) < 0 or int(pages.max()) >= num_pages):
        raise _fail("page_table", f"expected the pages in use within 0 .. {num_pages - 1} (k_cache holds "
                                  f"{num_pages}), got {int(pages.min())} .. {int(pages.max())}")
    if config is not None and not isinstance(config, VAttentionConfig):
        raise _fail("config", f"expected a VAttentionConfig or None, got {type(config).__name__}")
    if bounds is not None:
        want = (batch, page_table.shape[1], num_kv, dim)
        if not isinstance(bounds, tuple | list) or len(bounds) != 2:
            raise _fail("bounds", "expected a pair (lo, hi) as page_key_bounds returns")
        for name, bound in zip(("bounds[0]", "bounds[1]"), bounds, strict=True):
            _tensor(name, bound)
            if _shape(bound) != want:
                raise _fail(name, f"expected [B, max_pages, Hkv, D] = {want}, got shape {_shape(bound)}")
            _dtype(name, bound, (torch.float32,))
            _like(name, bound, "q", q, dtype=False)
        bounds = (bounds[0], bounds[1])
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != q.device.type):
        where = getattr(generator, "device", type(generator).__name__)
        raise _fail("generator", f"expected a torch.Generator on {q.device.type}, got {where}")
    _out(out, q)
    return _vattention.vattention_decode(q, k_cache, v_cache, page_table, seq_lens, config, bounds=bounds,
                                         generator=generator, out=out)


# ----------------------------------------------------------------------------- SLA and radial


def _self_attention_qkv(q: object, k: object, v: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of one ``[B, H, N, D]`` shape, dtype and device."""
    q = _tensor("q", q)
    if q.dim() != 4:
        raise _fail("q", f"expected [B, H, N, D], got shape {_shape(q)}")
    _dtype("q", q, FLOAT_DTYPES)
    k, v = _tensor("k", k), _tensor("v", v)
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise _fail(name, f"expected [B, H, N, D] = {_shape(q)} (that of q), got shape {_shape(x)}")
        _like(name, x, "q", q)
    _runnable("q", q)
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
    block_map: BlockMap | None = None,
) -> torch.Tensor:
    """Sparse-linear attention (SLA) of a diffusion transformer's self-attention.

    Args:
        q, k, v: ``[B, H, N, D]``, one shape, fp16, bf16 or fp32, one device; ``D`` in
            16, 32, 64, 128. Any strides (the kernels take contiguous copies).
        proj: ``[D, D]``, the learnable projection of the linear branch
            (``out = sparse + linear @ proj^T``), floating point, on q's device. None means zeros,
            the paper's initialisation, with which SLA is exactly block-sparse attention.
        block: tokens per block, 16, 32, 64 or 128 (the paper: 64).
        critical_ratio: share of each query block's key blocks attended exactly, in (0, 1]
            (at least one block each).
        negligible_ratio: share skipped, in [0, 1); the rest go to the linear branch.
        block_map: fixed block classes (``gpuos.kernels.sla.BlockMap``), shape
            ``(B, H, ceil(N / block), ceil(N / block))``, instead of classifying from pooled scores.

    Returns:
        ``[B, H, N, D]`` in q's dtype, differentiable in q, k, v and proj (block classes get no
        gradient). Definition, derivations and measured errors: ``docs/kernels/sla.md``.
    """
    q, k, v = _self_attention_qkv(q, k, v)
    dim = q.shape[-1]
    if dim not in SLA_SIZES:
        raise _fail("q", f"expected head dim D in {SLA_SIZES}, got {dim}")
    if q.shape[2] < 1:
        raise _fail("q", "expected at least one token (N >= 1), got N = 0")
    if block not in SLA_SIZES:
        raise _fail("block", f"expected one of {SLA_SIZES}, got {block!r}")
    if not 0 < critical_ratio <= 1:
        raise _fail("critical_ratio", f"expected a share in (0, 1], got {critical_ratio!r}")
    if not 0 <= negligible_ratio < 1:
        raise _fail("negligible_ratio", f"expected a share in [0, 1), got {negligible_ratio!r}")
    if proj is None:
        proj = torch.zeros(dim, dim, device=q.device, dtype=q.dtype)
    proj = _tensor("proj", proj)
    if _shape(proj) != (dim, dim):
        raise _fail("proj", f"expected [D, D] = {(dim, dim)}, got shape {_shape(proj)}")
    if not proj.is_floating_point():
        raise _fail("proj", f"expected a floating-point dtype, got {_names([proj.dtype])}")
    _like("proj", proj, "q", q, dtype=False)
    if block_map is not None:
        if not isinstance(block_map, BlockMap):
            raise _fail("block_map", f"expected a BlockMap or None, got {type(block_map).__name__}")
        blocks = -(-q.shape[2] // block)
        want = (*q.shape[:2], blocks, blocks)
        if _shape(block_map.classes) != want:
            raise _fail("block_map", f"expected classes of shape (B, H, N/block, N/block) = {want}, "
                                     f"got {_shape(block_map.classes)}")
        if block_map.classes.device != q.device:
            raise _fail("block_map", f"expected device {q.device} (that of q), got {block_map.classes.device}")
    return _sla.sla_attention(q, k, v, proj, block=block, critical_ratio=critical_ratio,
                              negligible_ratio=negligible_ratio, block_map=block_map)


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
    mask: str = "paper",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Radial Attention: softmax attention under the static spatio-temporal radial mask.

    Args:
        q, k, v: ``[B, H, N, D]``, one shape, fp16, bf16 or fp32, one device, each with a
            contiguous last dimension; ``N = frames * tokens_per_frame``, tokens frame-major
            (token ``t`` is in frame ``t // tokens_per_frame``); ``D`` in 16, 32, 64, 128, 256.
        frames, tokens_per_frame: the video's (latent) frames and tokens per frame, >= 1.
        block: block size of the sparse layout, 16, 32, 64 or 128 (the paper: 128); fp32 with
            ``D = 256`` needs ``block <= 64``.
        sink: every query also attends to all of frame 0 (the paper's default).
        scale: softmax scale, ``D ** -0.5`` when None.
        mask: which rule builds the mask: ``"paper"`` (the paper's rule exactly) or ``"gpuos"``
            (the block-floored rule gpuos shipped first); ``docs/kernels/radial.md`` says how
            they differ.
        out: ``[B, H, N, D]`` in q's dtype, written in place when given.

    Returns:
        ``[B, H, N, D]`` in q's dtype, equal to softmax attention under the token-level mask
        (``gpuos.kernels.reference.radial.radial_mask``). Forward only: no backward.
    """
    q, k, v = _self_attention_qkv(q, k, v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _unit_last_stride(name, x)
    _no_grad("q", q, "radial_attention")
    dim = q.shape[-1]
    if dim not in RADIAL_DIMS:
        raise _fail("q", f"expected head dim D in {RADIAL_DIMS}, got {dim}")
    for name, value in (("frames", frames), ("tokens_per_frame", tokens_per_frame)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(name, f"expected an int >= 1, got {value!r}")
    if q.shape[2] != frames * tokens_per_frame:
        raise _fail("q", f"expected N = frames x tokens_per_frame = {frames} x {tokens_per_frame} = "
                         f"{frames * tokens_per_frame} tokens, got N = {q.shape[2]}")
    if block not in RADIAL_BLOCKS:
        raise _fail("block", f"expected one of {RADIAL_BLOCKS}, got {block!r}")
    if q.dtype == torch.float32 and dim == 256 and block == 128:
        raise _fail("block", "expected block <= 64 for fp32 inputs with head dim 256 (the tiles would not fit "
                             "in shared memory), got 128")
    if scale is not None and not (isinstance(scale, int | float) and scale > 0):
        raise _fail("scale", f"expected a positive number or None, got {scale!r}")
    if mask not in MASKS:
        raise _fail("mask", f"expected one of {', '.join(MASKS)}, got {mask!r}")
    _out(out, q)
    return _radial.radial_attention(q, k, v, frames, tokens_per_frame, block, sink, scale, out=out, mask=mask)
