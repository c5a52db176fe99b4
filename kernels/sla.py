"""Sparse-linear attention (SLA, arXiv 2509.24006) in Triton, for diffusion-transformer attention.

For Q, K, V of shape (batch, heads, N, d), tokens are grouped in blocks of ``block``:

1. :func:`classify_blocks` mean-pools Q and the mean-centred K per block and, per query block,
   ranks the key blocks by softmax(Qp Kp^T / sqrt(d)): the top ``critical_ratio`` are critical,
   the bottom ``negligible_ratio`` negligible, the rest marginal (:class:`BlockMap`). Three
   Triton kernels do it (float64 pooling, float64 logits, a per-row selection that breaks ties
   by block index); :func:`classify_blocks_reference` is the same in PyTorch.
2. One Triton kernel per slice of a query block (:func:`kernel_tiles`) computes, in fp32,
   - the exact softmax attention over its critical key blocks (online softmax over a per-query-
     block list of key blocks), and
   - linear attention phi(Q) [sum_marginal phi(K_j)^T V_j] / phi(Q) [sum_marginal phi(K_j)^T 1],
     phi a softmax over the head dimension, where the marginal sums are either the global state
     (from :func:`linear_state`, a second Triton kernel) minus the critical and negligible blocks'
     terms, or the marginal blocks' terms added up, whichever walks fewer blocks; the critical
     blocks' terms reuse the K and V tiles the softmax part has already loaded;
   - and writes sparse + linear @ proj^T (proj is d x d, zero-initialised in
     :class:`SparseLinearAttention`, so an untrained layer is pure block-sparse attention).
3. :func:`sla_attention` is differentiable in q, k, v and proj (:func:`sla_backward`): a Triton
   kernel for dQ over slices of each query block, one for dK and dV over slices of each key block
   (walking the transposed block map), each covering both branches with the same
   global-state-minus-excluded-blocks scheme, and two small PyTorch products for the projection;
   the slices' sizes (:func:`kernel_tiles`) keep d = 128 free of register spills. The block
   classes are piecewise constant in the inputs and get no gradient. Derivations are in
   docs/kernels/sla.md.

Entry points: :func:`sla_attention`, :class:`SparseLinearAttention`, :func:`run_job` (the
``sla-dit`` kernel job, spec in :mod:`gpuos.kernels.sla_spec`) and :func:`bench_cases` for
``bench/kernels.py``: ``bench_cases(device)`` returns ``(label, sparse_fn, dense_fn, flops)``
tuples at Wan2.1-1.3B shapes (32,760 tokens, 12 heads, d = 128, bf16), where ``flops`` is what
dense attention computes, so ``flops / time`` is the dense-equivalent rate of either callable.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from gpuos.kernels import atoms
from gpuos.kernels.context import KernelContext
from gpuos.kernels.reference.sla import CRITICAL, MARGINAL, NEGLIGIBLE, dense_sdpa
from gpuos.kernels.sla_spec import block_counts

SUPPORTED_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The global linear state is summed over this many key blocks per program, then across programs.
STATE_CHUNK_BLOCKS = 16


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class BlockMap:
    """Per (batch, head, query block): which key blocks are critical, marginal, negligible.

    ``classes`` is int8 (B, H, nbq, nbk) with ``CRITICAL``/``MARGINAL``/``NEGLIGIBLE`` values.
    ``order`` (int32, same shape) lists the key blocks critical first, then marginal, then
    negligible, each group in ascending block order; ``n_critical`` and ``n_marginal`` (int32,
    (B, H, nbq)) say where the groups end. Counts may differ between heads and query blocks.
    """

    classes: torch.Tensor
    order: torch.Tensor
    n_critical: torch.Tensor
    n_marginal: torch.Tensor

    @staticmethod
    def from_classes(classes: torch.Tensor, check: bool = True) -> BlockMap:
        """The map of ``classes``; ``check`` refuses query blocks without a critical key block."""
        if classes.dim() != 4:
            raise ValueError(f"block classes must be (batch, heads, q_blocks, k_blocks), got {tuple(classes.shape)}")
        if check and not bool((classes == CRITICAL).any(-1).all()):
            raise ValueError("every query block needs at least one critical key block")
        classes = classes.to(torch.int8)
        order = torch.sort(classes, dim=-1, descending=True, stable=True).indices.to(torch.int32)
        return BlockMap(
            classes=classes,
            order=order.contiguous(),
            n_critical=(classes == CRITICAL).sum(-1, dtype=torch.int32),
            n_marginal=(classes == MARGINAL).sum(-1, dtype=torch.int32),
        )

    def critical_density(self) -> float:
        """Share of (query block, key block) pairs attended exactly."""
        return float(self.n_critical.sum()) / self.classes.numel()


# The pooled-score ranking needs every key block of a row in one program; past this many the
# row is ranked by torch.sort on the score matrix instead (the same order, see _classes_from_scores).
SELECT_MAX_BLOCKS = 8192
# Rows of up to this many key blocks are ranked by comparing every pair, longer ones by a radix select.
SELECT_PAIRWISE_MAX = 64


def _check_classify_inputs(q: torch.Tensor, k: torch.Tensor, block: int, critical_ratio: float,
                           negligible_ratio: float) -> None:
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must share one (batch, heads, N, d) shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    if q.shape[-2] == 0:
        raise ValueError("q and k hold no tokens (N = 0)")
    if q.shape[-1] not in SUPPORTED_DIMS:
        raise ValueError(f"head dimension {q.shape[-1]} is not supported; use one of {SUPPORTED_DIMS}")
    if block not in SUPPORTED_DIMS:
        raise ValueError(f"block {block} is not supported; use one of {SUPPORTED_DIMS}")
    if k.device != q.device:
        raise ValueError(f"q and k must be on one device; got {q.device}, {k.device}")
    for name, ratio in (("critical_ratio", critical_ratio), ("negligible_ratio", negligible_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {ratio}")


def _classes_from_scores(scores: torch.Tensor, critical: int, negligible: int) -> torch.Tensor:
    """Classes from the ranks of ``scores`` (B, H, nbq, nbk) along the key blocks: the first
    ``critical`` of a stable descending sort are critical, the last ``negligible`` negligible;
    equal scores rank by block index (the lower first)."""
    n_blocks = scores.shape[-1]
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(n_blocks, device=scores.device).expand_as(order)
    position = torch.empty_like(order).scatter_(-1, order, ranks)
    classes = torch.full(scores.shape, MARGINAL, dtype=torch.int8, device=scores.device)
    classes[position < critical] = CRITICAL
    classes[position >= n_blocks - negligible] = NEGLIGIBLE
    return classes


def _block_sizes(n: int, block: int, device: torch.device) -> torch.Tensor:
    sizes = torch.full((-(-n // block), 1), float(block), dtype=torch.float64, device=device)
    sizes[-1] = n - (sizes.shape[0] - 1) * block
    return sizes


def pooled_logits_reference(q: torch.Tensor, k: torch.Tensor, block: int) -> torch.Tensor:
    """The pooled scores before the softmax, in PyTorch (float64): Qp Kp^T with Qp the per-block
    means of Q and Kp those of K minus K's sequence mean, (B, H, nb, nb). The reference for
    :func:`pooled_logits`; ``1 / sqrt(d)`` is left out, as it changes no rank."""
    b, h, n, d = q.shape
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    sizes = _block_sizes(n, block, q.device)
    qs = torch.nn.functional.pad(q.double(), (0, 0, 0, pad)).view(b, h, n_blocks, block, d).sum(-2)
    ks = torch.nn.functional.pad(k.double(), (0, 0, 0, pad)).view(b, h, n_blocks, block, d).sum(-2)
    kp = ks / sizes - ks.sum(-2, keepdim=True) / n
    return (qs / sizes) @ kp.transpose(-1, -2)


@triton.jit
def _sla_pool_kernel(
    Q, K, QS, KS, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    H, N, N_BLOCKS, BLOCK: tl.constexpr, D: tl.constexpr, BLOCKS: tl.constexpr,
):
    """Per BLOCKS blocks of one (batch, head): the float64 sums of each block's Q and K rows."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    first = tl.program_id(0) * BLOCKS
    offs_d = tl.arange(0, D)
    offs_n = first * BLOCK + tl.arange(0, BLOCKS * BLOCK)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_n, stride_qn, offs_d, N).to(tl.float64)
    k = _load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_kn, offs_d, N).to(tl.float64)
    blocks = first + tl.arange(0, BLOCKS)
    out = (bh * N_BLOCKS + blocks)[:, None] * D + offs_d[None, :]
    ok = (blocks < N_BLOCKS)[:, None]
    tl.store(QS + out, tl.sum(tl.reshape(q, (BLOCKS, BLOCK, D)), axis=1), mask=ok)
    tl.store(KS + out, tl.sum(tl.reshape(k, (BLOCKS, BLOCK, D)), axis=1), mask=ok)


@triton.jit
def _sla_logits_kernel(
    QS, KS, KMEAN, LOGITS, N, N_BLOCKS,
    BLOCK: tl.constexpr, D: tl.constexpr, TILE: tl.constexpr,
):
    """A (TILE, N_BLOCKS) strip of the pooled logits in float64: the query blocks' means times
    the key blocks' means minus K's sequence mean (KMEAN)."""
    bh = tl.program_id(1)
    offs_i = tl.program_id(0) * TILE + tl.arange(0, TILE)
    offs_d = tl.arange(0, D)
    base = bh * N_BLOCKS * D
    ok_i = offs_i < N_BLOCKS
    # A block's token count: BLOCK but for a shorter last block (and 1 past the end, never stored).
    size_i = tl.maximum(tl.minimum(N - offs_i * BLOCK, BLOCK), 1).to(tl.float64)
    qs = tl.load(QS + base + offs_i[:, None] * D + offs_d[None, :], mask=ok_i[:, None], other=0.0)
    qp = qs / size_i[:, None]
    kmean = tl.load(KMEAN + bh * D + offs_d)
    for j0 in range(0, N_BLOCKS, TILE):
        offs_j = j0 + tl.arange(0, TILE)
        ok_j = offs_j < N_BLOCKS
        size_j = tl.maximum(tl.minimum(N - offs_j * BLOCK, BLOCK), 1).to(tl.float64)
        ks = tl.load(KS + base + offs_j[:, None] * D + offs_d[None, :], mask=ok_j[:, None], other=0.0)
        kp = ks / size_j[:, None] - kmean[None, :]
        logits = tl.dot(qp, tl.trans(kp))
        out = LOGITS + bh * N_BLOCKS * N_BLOCKS + offs_i[:, None] * N_BLOCKS + offs_j[None, :]
        tl.store(out, logits, mask=ok_i[:, None] & ok_j[None, :])


@triton.jit
def _order_key(x):
    # float64 -> uint64 whose unsigned order is the floats' order (-0.0 taken as 0.0, so that
    # equal floats get equal keys): negative floats get every bit flipped, others the sign bit.
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int64, bitcast=True)
    return tl.where(bits < 0, ~bits, bits ^ (-9223372036854775807 - 1)).to(tl.uint64, bitcast=True)


@triton.jit
def _kth_largest(key, kth, ROWS: tl.constexpr):
    # Per row, the kth largest key (0 where a row has fewer than kth nonzero keys), built from
    # the most significant bit down: a bit is set when at least kth keys reach the prefix with it.
    prefix = tl.zeros((ROWS,), dtype=tl.uint64)
    for i in tl.static_range(64):
        candidate = prefix | (1 << (63 - i))
        prefix = tl.where(tl.sum((key >= candidate[:, None]).to(tl.int32), axis=1) >= kth, candidate, prefix)
    return prefix[:, None]


@triton.jit
def _sla_select_kernel(LOGITS, CLASSES, N_ROWS, N_BLOCKS, n_critical, n_negligible,
                       ROWS: tl.constexpr, WIDTH: tl.constexpr, PAIRWISE: tl.constexpr):
    """Classes of ROWS query blocks from their rows of logits. The rank of key block j is the
    number of higher logits plus the number of equal ones at lower indices (its position in a
    stable descending sort); ranks below n_critical are critical, ranks from N_BLOCKS -
    n_negligible on negligible. Short rows (PAIRWISE) count every pair; long ones find the two
    boundary values by a radix select on order-preserving integer keys and rank the blocks tied
    at them by a prefix count."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = tl.arange(0, WIDTH)
    valid = (rows < N_ROWS)[:, None] & (offs < N_BLOCKS)[None, :]
    at = rows[:, None] * N_BLOCKS + offs[None, :]
    # Padding gets key 0, below every float's (the least is -inf's, 2^52 - 1), so it outranks no block.
    key = tl.where(valid, _order_key(tl.load(LOGITS + at, mask=valid, other=0.0)), 0)
    if PAIRWISE:
        # [row, j, i]: does block i rank before block j?
        other = key[:, None, :]
        mine = key[:, :, None]
        before = (other > mine) | ((other == mine) & (offs[None, None, :] < offs[None, :, None]))
        rank = tl.sum(before.to(tl.int32), axis=2)
        critical = rank < n_critical
        negligible = rank >= N_BLOCKS - n_negligible
    else:
        # The n_critical-th highest logit of each row; blocks above it are critical, and of those
        # equal to it the first ones, in index order, while places are left.
        top = _kth_largest(key, n_critical, ROWS)
        tied = (key == top).to(tl.int32)
        rank = tl.sum((key > top).to(tl.int32), axis=1)[:, None] + tl.cumsum(tied, axis=1) - tied
        critical = (key > top) | ((tied == 1) & (rank < n_critical))
        # Rank N_BLOCKS - n_negligible, the highest negligible one: blocks below it are
        # negligible, and of those equal to it the last ones.
        low = _kth_largest(key, N_BLOCKS - n_negligible + 1, ROWS)
        tied = (key == low).to(tl.int32)
        rank = tl.sum((key > low).to(tl.int32), axis=1)[:, None] + tl.cumsum(tied, axis=1) - tied
        negligible = (n_negligible > 0) & ((key < low) | ((tied == 1) & (rank >= N_BLOCKS - n_negligible)))
    classes = tl.where(critical, 2, tl.where(negligible, 0, 1))
    tl.store(CLASSES + at, classes.to(tl.int8), mask=valid)


def pooled_logits(q: torch.Tensor, k: torch.Tensor, block: int) -> torch.Tensor:
    """:func:`pooled_logits_reference` by two Triton kernels (pooling, then the products), on a
    GPU or under the interpreter."""
    b, h, n, d = q.shape
    n_blocks = -(-n // block)
    sums = torch.empty((2, b * h, n_blocks, d), device=q.device, dtype=torch.float64)
    # Blocks of up to 8,192 elements together (one at Wan's block 64, d = 128): fewer programs
    # for short rows, the interpreter's cost being per program.
    blocks = min(triton.next_power_of_2(n_blocks), max(1, 8192 // (block * d)))
    _sla_pool_kernel[(-(-n_blocks // blocks), b * h)](
        q, k, sums[0], sums[1], q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        h, n, n_blocks, BLOCK=block, D=d, BLOCKS=blocks, num_warps=8 if block * d >= 4096 else 4,
    )
    kmean = (sums[1].sum(1) / n).contiguous()
    logits = torch.empty((b, h, n_blocks, n_blocks), device=q.device, dtype=torch.float64)
    tile = 16
    _sla_logits_kernel[(-(-n_blocks // tile), b * h)](
        sums[0], sums[1], kmean, logits, n, n_blocks, BLOCK=block, D=d, TILE=tile, num_warps=4,
    )
    return logits


def classify_blocks(q: torch.Tensor, k: torch.Tensor, block: int, critical_ratio: float,
                    negligible_ratio: float = 0.0) -> BlockMap:
    """Classify key blocks per query block by SLA's pooled scores softmax(Qp Kp^T / sqrt(d)), Qp
    the per-block means of Q and Kp those of K minus K's sequence mean: the top
    ``block_counts(...)[0]`` key blocks of each query block are critical, the bottom
    ``block_counts(...)[1]`` negligible, the rest marginal.

    The ranks come from the logits Qp Kp^T in float64: the softmax and the positive scale keep
    every row's order, and ranking before them keeps the order that fp32 rounding and underflow
    would turn into ties (at long sequences most of a row's softmax is 0). Equal logits rank by
    block index, the lower first, so the classes are a function of the inputs. On a GPU or under
    the Triton interpreter three Triton kernels compute them (pooling, logits, a selection per row);
    elsewhere PyTorch does (:func:`classify_blocks_reference`), with the same result up to
    float64 rounding of the sums.
    """
    _check_classify_inputs(q, k, block, critical_ratio, negligible_ratio)
    if not (q.is_cuda or _interpreted()):
        return classify_blocks_reference(q, k, block, critical_ratio, negligible_ratio)
    b, h, n, _ = q.shape
    n_blocks = -(-n // block)
    critical, negligible = block_counts(n_blocks, critical_ratio, negligible_ratio)
    logits = pooled_logits(q, k, block)
    if n_blocks > SELECT_MAX_BLOCKS:
        classes = _classes_from_scores(logits, critical, negligible)
    else:
        classes = torch.empty(logits.shape, device=q.device, dtype=torch.int8)
        width = max(16, triton.next_power_of_2(n_blocks))
        # Counting pairs costs width^2 comparisons a row, the radix select 2 x 64 x width: pairs
        # for short rows. Programs hold up to 8,192 pairs or 4,096 keys: many rows of a short
        # sequence (the interpreter's cost is per program), one row of a long one.
        pairwise = width <= SELECT_PAIRWISE_MAX
        rows = max(1, 8192 // width**2 if pairwise else 4096 // width)
        n_rows = b * h * n_blocks
        _sla_select_kernel[(-(-n_rows // rows),)](
            logits, classes, n_rows, n_blocks, critical, negligible,
            ROWS=rows, WIDTH=width, PAIRWISE=pairwise, num_warps=min(16, max(4, width // 512)),
        )
    # block_counts gives every row at least one critical block: no need to check (and synchronise).
    return BlockMap.from_classes(classes, check=False)


def classify_blocks_reference(q: torch.Tensor, k: torch.Tensor, block: int, critical_ratio: float,
                              negligible_ratio: float = 0.0) -> BlockMap:
    """:func:`classify_blocks` in PyTorch alone: the reference for the Triton kernels."""
    _check_classify_inputs(q, k, block, critical_ratio, negligible_ratio)
    logits = pooled_logits_reference(q, k, block)
    critical, negligible = block_counts(logits.shape[-1], critical_ratio, negligible_ratio)
    return BlockMap.from_classes(_classes_from_scores(logits, critical, negligible), check=False)


@triton.jit
def _phi(x, ok):
    # SLA's feature map, a softmax over the head dimension (axis 1) in fp32; rows that are not
    # tokens (past the sequence end) get zero features, so they add nothing to any sum.
    x = x.to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=1)[:, None])
    return tl.where(ok[:, None], e / tl.sum(e, axis=1)[:, None], 0.0)


@triton.jit
def _load_rows(base, offs, stride, offs_d, n):
    # Rows ``offs`` of a (n, D) matrix at ``base``; rows past the end read as zeros.
    return tl.load(base + offs[:, None] * stride + offs_d[None, :], mask=(offs < n)[:, None], other=0.0)


@triton.jit
def _linear_walk(n_crit, n_marg, n_blocks):
    # Which blocks the linear branch walks besides the critical ones. With more marginal than
    # negligible blocks: the global state minus the critical and negligible blocks' terms
    # (complement); otherwise the marginal blocks' terms added up. The block order lists the
    # critical, then marginal, then negligible blocks. Returns (complement, start, count, sign).
    n_negl = n_blocks - n_crit - n_marg
    complement = n_marg > n_negl
    start = n_crit + tl.where(complement, n_marg, 0)
    count = tl.where(complement, n_negl, n_marg)
    sign = tl.where(complement, -1.0, 1.0)
    return complement, start, count, sign


@triton.jit
def _fwd_linear_terms(num, den, sign, phiq, k, v, col_ok, COMPUTE: tl.constexpr):
    # The linear numerator and denominator plus sign * one key block's shares, A V and A 1 with
    # A = phi(Q) phi(K)^T; the sign goes on A and A V accumulates into num in place.
    a = tl.dot(phiq, tl.trans(_phi(k, col_ok).to(COMPUTE))) * sign
    return tl.dot(a.to(COMPUTE), v.to(COMPUTE), num), den + tl.sum(a, axis=1)


@triton.jit
def _dq_linear_term(acc, sign, dnum, dden, k, v, col_ok, COMPUTE: tl.constexpr):
    # acc + sign * one key block's share of dphi(Q), (dNum V^T + dDen 1^T) phi(K). The sign goes on
    # the small score tile and the product accumulates into acc, so no second (rows, D) tile lives.
    r = (tl.dot(dnum, tl.trans(v.to(COMPUTE))) + dden[:, None]) * sign
    return tl.dot(r.to(COMPUTE), _phi(k, col_ok).to(COMPUTE), acc)


@triton.jit
def _dkv_linear_terms(dphik, dv, sign, phiq, dnum, dden, phik, v, COMPUTE: tl.constexpr):
    # dphi(K) and dV plus sign * one query block's shares, R^T phi(Q) and A^T dNum, with
    # R = dNum V^T + dDen 1^T and A = phi(Q) phi(K)^T, accumulated in place as in _dq_linear_term.
    # R^T and A^T are computed as such (V dNum^T, phi(K) phi(Q)^T): transposing a product held in
    # registers before the next product costs registers that spill at d = 128.
    r_t = (tl.dot(v, tl.trans(dnum)) + dden[None, :]) * sign
    a_t = tl.dot(phik, tl.trans(phiq)) * sign
    return tl.dot(r_t.to(COMPUTE), phiq, dphik), tl.dot(a_t.to(COMPUTE), dnum, dv)


@triton.jit(do_not_specialize=["pid_offset"])
def _sla_state_kernel(
    K, V, WEIGHT, HS, ZS,
    stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    H, N, N_BLOCKS, N_CHUNKS, pid_offset,
    BLOCK: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr, COMPUTE: tl.constexpr, WEIGHTED: tl.constexpr,
):
    """Partial linear state over CHUNK key blocks: HS = sum phi(K)^T V (D x D), ZS = sum phi(K),
    each row of phi(K) weighted by WEIGHT ((B*H, N)) in ZS when WEIGHTED. Each program writes its
    own partial (summed by the caller), so the grid may run as atoms from ``pid_offset``."""
    chunk = tl.program_id(0) + pid_offset
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, D)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    hs = tl.zeros((D, D), dtype=tl.float32)
    zs = tl.zeros((D,), dtype=tl.float32)
    for j in range(chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, N_BLOCKS)):
        offs_n = j * BLOCK + tl.arange(0, BLOCK)
        phik = _phi(_load_rows(k_base, offs_n, stride_kn, offs_d, N), offs_n < N)
        v = _load_rows(v_base, offs_n, stride_vn, offs_d, N)
        hs += tl.dot(tl.trans(phik.to(COMPUTE)), v.to(COMPUTE))
        if WEIGHTED:
            phik *= tl.load(WEIGHT + bh * N + offs_n, mask=offs_n < N, other=0.0)[:, None]
        zs += tl.sum(phik, axis=0)
    # N_CHUNKS, not tl.num_programs(0): an atom's grid holds only some of the chunks.
    out = bh * N_CHUNKS + chunk
    tl.store(HS + out * D * D + offs_d[:, None] * D + offs_d[None, :], hs)
    tl.store(ZS + out * D + offs_d, zs)


@triton.jit(do_not_specialize=["pid_offset"])
def _sla_fwd_kernel(
    Q, K, V, W, HT, ZT, ORDER, NCRIT, NMARG, OUT, OLIN, ODEN, OSPARSE, LSE,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    H, N, N_QBLOCKS, N_KBLOCKS, sm_scale, pid_offset,
    BLOCK: tl.constexpr, D: tl.constexpr, COMPUTE: tl.constexpr,
    STORE_LINEAR: tl.constexpr, STORE_SPARSE: tl.constexpr, ROWS: tl.constexpr, INNER: tl.constexpr,
):
    """ROWS query rows, a slice of one query block, walking its key blocks INNER rows at a time:
    OUT = sparse + linear @ W^T; optionally the linear branch (OLIN) and its denominators (ODEN,
    (B*H, N), 0 where a row has no marginal block), the sparse branch (OSPARSE, same strides as
    OUT) and its log2-domain row log-sum-exp (LSE, (B*H, N)).
    Programs write disjoint rows, so the grid may run as atoms from ``pid_offset``."""
    pid = tl.program_id(0) + pid_offset
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    qblock = (pid * ROWS) // BLOCK
    offs_m = pid * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < N
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qn, offs_d, N)
    phiq = _phi(q, offs_m >= 0)
    q = q.to(COMPUTE)
    phiq_c = phiq.to(COMPUTE)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    row = bh * N_QBLOCKS + qblock
    n_crit = tl.load(NCRIT + row)
    n_marg = tl.load(NMARG + row)
    order = ORDER + row * N_KBLOCKS
    complement, start, count, sign = _linear_walk(n_crit, n_marg, N_KBLOCKS)

    lin_acc = tl.zeros((ROWS, D), dtype=tl.float32)
    lin_den = tl.zeros((ROWS,), dtype=tl.float32)
    if complement:
        ht = tl.load(HT + bh * D * D + offs_d[:, None] * D + offs_d[None, :])
        zt = tl.load(ZT + bh * D + offs_d)
        lin_acc = tl.dot(phiq_c, ht.to(COMPUTE))
        lin_den = tl.sum(phiq * zt[None, :], axis=1)

    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((ROWS,), dtype=tl.float32)
    acc = tl.zeros((ROWS, D), dtype=tl.float32)
    # A block's first slice always holds a token, so m_i is finite before any all-padding slice.
    for t in range(0, n_crit):
        for part in range(0, BLOCK // INNER):
            offs_n = tl.load(order + t) * BLOCK + part * INNER + tl.arange(0, INNER)
            col_ok = offs_n < N
            k = _load_rows(k_base, offs_n, stride_kn, offs_d, N).to(COMPUTE)
            v = _load_rows(v_base, offs_n, stride_vn, offs_d, N).to(COMPUTE)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = tl.dot(p.to(COMPUTE), v, acc * alpha[:, None])
            m_i = m_new
            if complement:
                lin_acc, lin_den = _fwd_linear_terms(lin_acc, lin_den, -1.0, phiq_c, k, v, col_ok, COMPUTE)
    for t in range(0, count):
        for part in range(0, BLOCK // INNER):
            offs_n = tl.load(order + start + t) * BLOCK + part * INNER + tl.arange(0, INNER)
            k = _load_rows(k_base, offs_n, stride_kn, offs_d, N)
            v = _load_rows(v_base, offs_n, stride_vn, offs_d, N)
            lin_acc, lin_den = _fwd_linear_terms(lin_acc, lin_den, sign, phiq_c, k, v, offs_n < N, COMPUTE)

    sparse = acc / l_i[:, None]
    has_marginal = n_marg > 0
    linear = tl.where(has_marginal, lin_acc / tl.where(has_marginal, lin_den, 1.0)[:, None], 0.0)
    # proj is applied as linear @ W^T: element (i, j) of W^T is W[j, i]. W comes in the
    # products' dtype: an fp32 (D, D) tile here spills registers at d = 128.
    wt = tl.load(W + offs_d[None, :] * D + offs_d[:, None])
    out = sparse + tl.dot(linear.to(COMPUTE), wt)
    o_offs = b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(OUT + o_offs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    if STORE_LINEAR:
        tl.store(OLIN + o_offs, linear.to(OLIN.dtype.element_ty), mask=row_ok[:, None])
        tl.store(ODEN + bh * N + offs_m, tl.where(has_marginal, lin_den, 0.0), mask=row_ok)
    if STORE_SPARSE:
        tl.store(OSPARSE + o_offs, sparse.to(OSPARSE.dtype.element_ty), mask=row_ok[:, None])
        tl.store(LSE + bh * N + offs_m, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit(do_not_specialize=["pid_offset"])
def _sla_bwd_dq_kernel(
    Q, K, V, DO, DLIN, LIN, DEN, LSE, DELTA, HT, ZT, ORDER, NCRIT, NMARG, DQ, PHIQ, DNUM, DDEN,
    N, N_QBLOCKS, N_KBLOCKS, sm_scale, pid_offset,
    BLOCK: tl.constexpr, D: tl.constexpr, COMPUTE: tl.constexpr, ROWS: tl.constexpr, INNER: tl.constexpr,
):
    """dQ for ROWS query rows (a slice of one query block; sparse and linear branches), and the
    linear branch's gradients with respect to its numerator (DNUM) and denominator (DDEN), which
    the dK/dV kernel needs. The key blocks are walked INNER rows at a time.

    Every tensor is contiguous, (B*H, N, D) or (B*H, N). The linear branch's dphi(Q) is the global
    state's term minus the critical and negligible blocks' terms, or the marginal blocks' terms.
    Programs write disjoint rows, so the grid may run as atoms from ``pid_offset``.
    """
    pid = tl.program_id(0) + pid_offset
    bh = tl.program_id(1)
    qblock = (pid * ROWS) // BLOCK
    offs_m = pid * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < N
    base = bh * N * D
    rows = bh * N + offs_m
    q = _load_rows(Q + base, offs_m, D, offs_d, N).to(COMPUTE)
    do = _load_rows(DO + base, offs_m, D, offs_d, N).to(COMPUTE)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)

    row = bh * N_QBLOCKS + qblock
    n_crit = tl.load(NCRIT + row)
    n_marg = tl.load(NMARG + row)
    order = ORDER + row * N_KBLOCKS
    complement, start, count, sign = _linear_walk(n_crit, n_marg, N_KBLOCKS)
    # linear = num / den: dnum = dlin / den, dden = -<dlin, linear> / den.
    has_marginal = n_marg > 0
    dlin = _load_rows(DLIN + base, offs_m, D, offs_d, N)
    lin = _load_rows(LIN + base, offs_m, D, offs_d, N)
    den = tl.where(has_marginal, tl.load(DEN + rows, mask=row_ok, other=1.0), 1.0)
    dnum = tl.where(has_marginal, dlin / den[:, None], 0.0)
    dden = tl.where(has_marginal, -tl.sum(dlin * lin, axis=1) / den, 0.0)
    tl.store(DNUM + base + offs_m[:, None] * D + offs_d[None, :], dnum, mask=row_ok[:, None])
    tl.store(DDEN + rows, dden, mask=row_ok)
    dnum = dnum.to(COMPUTE)

    dphiq = tl.zeros((ROWS, D), dtype=tl.float32)
    if complement:
        ht_t = tl.load(HT + bh * D * D + offs_d[None, :] * D + offs_d[:, None])  # the state, transposed
        zt = tl.load(ZT + bh * D + offs_d)
        dphiq = tl.dot(dnum, ht_t.to(COMPUTE)) + dden[:, None] * zt[None, :]

    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros((ROWS, D), dtype=tl.float32)
    for t in range(0, n_crit):
        for part in range(0, BLOCK // INNER):
            offs_n = tl.load(order + t) * BLOCK + part * INNER + tl.arange(0, INNER)
            col_ok = offs_n < N
            k = _load_rows(K + base, offs_n, D, offs_d, N)
            v = _load_rows(V + base, offs_n, D, offs_d, N)
            kc = k.to(COMPUTE)
            p = tl.exp2(tl.dot(q, tl.trans(kc)) * qk_scale - lse[:, None])
            p = tl.where(col_ok[None, :], p, 0.0)
            ds = p * (tl.dot(do, tl.trans(v.to(COMPUTE))) - delta[:, None])
            dq += tl.dot(ds.to(COMPUTE), kc)
            if complement:
                dphiq = _dq_linear_term(dphiq, -1.0, dnum, dden, k, v, col_ok, COMPUTE)
    for t in range(0, count):
        for part in range(0, BLOCK // INNER):
            offs_n = tl.load(order + start + t) * BLOCK + part * INNER + tl.arange(0, INNER)
            k = _load_rows(K + base, offs_n, D, offs_d, N)
            v = _load_rows(V + base, offs_n, D, offs_d, N)
            dphiq = _dq_linear_term(dphiq, sign, dnum, dden, k, v, offs_n < N, COMPUTE)

    # Through phi = softmax over the head dimension: dq = phi * (dphi - <dphi, phi>). phi(Q) is
    # recomputed here rather than kept through the walk: an fp32 tile held that long spills at d = 128.
    phiq = _phi(_load_rows(Q + base, offs_m, D, offs_d, N), offs_m >= 0)
    dq = dq * sm_scale + phiq * (dphiq - tl.sum(dphiq * phiq, axis=1)[:, None])
    tl.store(DQ + base + offs_m[:, None] * D + offs_d[None, :], dq, mask=row_ok[:, None])
    tl.store(PHIQ + base + offs_m[:, None] * D + offs_d[None, :], phiq.to(PHIQ.dtype.element_ty),
             mask=row_ok[:, None])


@triton.jit(do_not_specialize=["pid_offset"])
def _sla_bwd_dkdv_kernel(
    Q, PHIQ, K, V, DO, LSE, DELTA, DNUM, DDEN, GT, GZ, T_ORDER, T_NCRIT, T_NMARG, DK, DV,
    N, N_QBLOCKS, N_KBLOCKS, sm_scale, pid_offset,
    BLOCK: tl.constexpr, D: tl.constexpr, COMPUTE: tl.constexpr, ROWS: tl.constexpr, INNER: tl.constexpr,
):
    """dK and dV for ROWS key rows (a slice of one key block): the sparse branch over the query
    blocks that hold the key block critical, the linear branch over those that hold it marginal
    (the global state GT = sum phi(Q)^T DNUM, GZ = sum DDEN phi(Q), minus the other query blocks'
    terms, or the marginal ones added up); the query blocks are walked INNER rows at a time.
    Programs write disjoint key rows, so the grid may run as atoms from ``pid_offset``."""
    pid = tl.program_id(0) + pid_offset
    bh = tl.program_id(1)
    kblock = (pid * ROWS) // BLOCK
    offs_n = pid * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, D)
    col_ok = offs_n < N
    base = bh * N * D
    k = _load_rows(K + base, offs_n, D, offs_d, N)
    phik_c = _phi(k, col_ok).to(COMPUTE)
    k = k.to(COMPUTE)
    v = _load_rows(V + base, offs_n, D, offs_d, N).to(COMPUTE)

    col = bh * N_KBLOCKS + kblock
    n_crit = tl.load(T_NCRIT + col)
    order = T_ORDER + col * N_QBLOCKS
    complement, start, count, sign = _linear_walk(n_crit, tl.load(T_NMARG + col), N_QBLOCKS)

    dphik = tl.zeros((ROWS, D), dtype=tl.float32)
    dv = tl.zeros((ROWS, D), dtype=tl.float32)
    if complement:
        gt = tl.load(GT + bh * D * D + offs_d[:, None] * D + offs_d[None, :]).to(COMPUTE)
        gz = tl.load(GZ + bh * D + offs_d)
        dphik = tl.dot(v, tl.trans(gt)) + gz[None, :]
        dv = tl.dot(phik_c, gt)

    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros((ROWS, D), dtype=tl.float32)
    for t in range(0, n_crit):
        for part in range(0, BLOCK // INNER):
            offs_m = tl.load(order + t) * BLOCK + part * INNER + tl.arange(0, INNER)
            row_ok = offs_m < N
            rows = bh * N + offs_m
            qc = _load_rows(Q + base, offs_m, D, offs_d, N).to(COMPUTE)
            do = _load_rows(DO + base, offs_m, D, offs_d, N).to(COMPUTE)
            lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
            p = tl.exp2(tl.dot(qc, tl.trans(k)) * qk_scale - lse[:, None])
            p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
            dv += tl.dot(tl.trans(p.to(COMPUTE)), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(COMPUTE)), qc)
    # The linear branch's walk: with the complement, the critical query blocks again (their
    # terms are subtracted too) and then the negligible ones; otherwise the marginal ones. Kept
    # out of the softmax loop above: both terms live at once spill registers at d = 128.
    extra = tl.where(complement, n_crit, 0)
    for t in range(0, extra + count):
        at = tl.where(t < extra, t, start + t - extra)
        for part in range(0, BLOCK // INNER):
            offs_m = tl.load(order + at) * BLOCK + part * INNER + tl.arange(0, INNER)
            row_ok = offs_m < N
            phiq = _load_rows(PHIQ + base, offs_m, D, offs_d, N).to(COMPUTE)
            dnum = _load_rows(DNUM + base, offs_m, D, offs_d, N).to(COMPUTE)
            dden = tl.load(DDEN + bh * N + offs_m, mask=row_ok, other=0.0)
            dphik, dv = _dkv_linear_terms(dphik, dv, sign, phiq, dnum, dden, phik_c, v, COMPUTE)

    # phi(K) in fp32 is recomputed rather than kept through the walk (see the dQ kernel).
    phik = _phi(_load_rows(K + base, offs_n, D, offs_d, N), col_ok)
    dk = dk * sm_scale + phik * (dphik - tl.sum(dphik * phik, axis=1)[:, None])
    tl.store(DK + base + offs_n[:, None] * D + offs_d[None, :], dk, mask=col_ok[:, None])
    tl.store(DV + base + offs_n[:, None] * D + offs_d[None, :], dv, mask=col_ok[:, None])


def _torch_compute_dtype(dtype: torch.dtype, compute: Any) -> torch.dtype:
    # The torch dtype of tensors that the kernels read in the products' dtype (compute).
    return torch.float32 if compute == tl.float32 else dtype


def _tl_compute_dtype(dtype: torch.dtype) -> Any:
    # The interpreter's tl.dot is wrong on bf16 (and slow on fp16): compute in fp32 there.
    if _interpreted() or dtype == torch.float32:
        return tl.float32
    return tl.float16 if dtype == torch.float16 else tl.bfloat16


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, block: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one (batch, heads, N, d) shape; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q, k, v must share one dtype of fp16, bf16, fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    d = q.shape[-1]
    if d not in SUPPORTED_DIMS:
        raise ValueError(f"head dimension {d} is not supported; use one of {SUPPORTED_DIMS}")
    if block not in SUPPORTED_DIMS:
        raise ValueError(f"block {block} is not supported; use one of {SUPPORTED_DIMS}")
    if proj.shape != (d, d):
        raise ValueError(f"proj must be ({d}, {d}), got {tuple(proj.shape)}")
    if q.shape[-2] == 0:
        raise ValueError("the sequence is empty")


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@dataclass(frozen=True)
class Tiles:
    """Launch shape of the forward and backward kernels: ``rows`` rows per program (query rows
    for the forward and dQ, key rows for dK/dV), a slice of one block, and ``inner`` rows of the
    other side per step of its block walk."""

    rows: int
    inner: int
    num_warps: int
    num_stages: int


def kernel_tiles(d: int, dtype: torch.dtype, backward: bool) -> Tiles:
    """The tiles of the forward (``backward=False``) or backward kernels by head dimension and
    input dtype; the launchers cap them at the block size.

    Chosen from ptxas's register report for sm_90a (Triton 3.9: ``triton.compile`` for
    ``GPUTarget("cuda", 90, 32)``, then the bundled ``ptxas -v --gpu-name sm_90a``, which needs
    no GPU), not from timings, which no GPU was there to take. At d = 128 a whole 64-row block a
    program spilled in every kernel (bf16: forward 44-116 bytes, dQ about 600, dK/dV about
    1,500): 32-row slices walking 32 rows at a time compile without spills, forward 203
    registers, dQ 180, dK/dV 206; fp32, whose tiles are twice the size, takes 16-row slices
    (220, 184, 128 registers), and its forward's shared memory (256 KB at 3 stages, over the
    H100's 227 KB) fits in 2 stages. At d = 64 whole blocks spilled too (4 warps: forward 32 bytes,
    dQ 420, dK/dV 816), and fp32 at d = 32 (dQ 44). ``bench/kernels.py`` prints the registers and
    spills of the kernels it ran, which checks this on a GPU.
    """
    wide = dtype == torch.float32
    if d >= 128:
        rows, inner, warps = (16 if wide else 32), 32, 8
    elif d >= 64:
        rows, inner, warps = 32, 32, (8 if wide else 4)
    elif d >= 32 and wide:
        rows, inner, warps = 32, 32, 4
    else:
        rows, inner, warps = 64, 64, 4
    stages = 2 if d >= 64 and (backward or wide) else 3
    return Tiles(rows=rows, inner=inner, num_warps=warps, num_stages=stages)


def _tile_meta(block: int, d: int, dtype: torch.dtype, backward: bool) -> dict[str, Any]:
    tiles = kernel_tiles(d, dtype, backward)
    return {"ROWS": min(block, tiles.rows), "INNER": min(block, tiles.inner), "num_warps": tiles.num_warps,
            "num_stages": tiles.num_stages}


def linear_state(k: torch.Tensor, v: torch.Tensor, block: int, weight: torch.Tensor | None = None,
                 compute: Any = None, ctx: KernelContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The global linear-attention state per (batch, head): sum phi(K)^T V ((B*H, d, d), fp32)
    and sum phi(K) ((B*H, d), fp32), or sum w phi(K) with per-token weights w ((B*H, N)).
    With ``ctx`` the kernel runs as atoms (``gpuos.kernels.atoms``), as in every launcher here."""
    b, h, n, d = k.shape
    n_blocks = -(-n // block)
    chunks = -(-n_blocks // STATE_CHUNK_BLOCKS)
    hs = torch.empty((b * h, chunks, d, d), device=k.device, dtype=torch.float32)
    zs = torch.empty((b * h, chunks, d), device=k.device, dtype=torch.float32)
    atoms.launch(
        _sla_state_kernel, (chunks, b * h),
        k, v, weight if weight is not None else hs, hs, zs,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        h, n, n_blocks, chunks,
        ctx=ctx, BLOCK=block, D=d, CHUNK=STATE_CHUNK_BLOCKS, COMPUTE=compute or _tl_compute_dtype(k.dtype),
        WEIGHTED=weight is not None,
    )
    return hs.sum(1), zs.sum(1)


def sla_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, block_map: BlockMap,
                block: int, out: torch.Tensor | None = None,
                linear_out: tuple[torch.Tensor, torch.Tensor] | None = None,
                sparse_out: tuple[torch.Tensor, torch.Tensor] | None = None,
                ctx: KernelContext | None = None) -> torch.Tensor:
    """Run the forward kernels into ``out`` (allocated when None); no autograd. With ``ctx`` they
    run as atoms (``gpuos.kernels.atoms``), bit-identical to one launch each.

    ``linear_out``, a pair (fp32 with out's shape and strides, fp32 (B*H, N)), receives the linear
    branch before the projection and its denominators; ``sparse_out``, a pair (like out, fp32
    (B*H, N)), receives the sparse branch and its log2-domain log-sum-exp. The backward pass needs
    both; caller-provided outputs let tests poison them first.
    """
    _check_inputs(q, k, v, proj, block)
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    b, h, n, d = q.shape
    n_blocks = -(-n // block)
    if block_map.classes.shape != (b, h, n_blocks, n_blocks):
        raise ValueError(f"block map is {tuple(block_map.classes.shape)}, expected {(b, h, n_blocks, n_blocks)}")
    if out is None:
        out = torch.empty_like(q)
    if out.shape != q.shape or out.stride(-1) != 1:
        raise ValueError("out must have q's shape and a contiguous last dimension")
    if linear_out is not None and (linear_out[0].shape != q.shape or linear_out[0].stride() != out.stride()
                                   or linear_out[1].shape != (b * h, n)):
        raise ValueError("linear_out must be a tensor with out's shape and strides and a (batch * heads, N) tensor")
    if sparse_out is not None and (sparse_out[0].shape != q.shape or sparse_out[0].stride() != out.stride()
                                   or sparse_out[1].shape != (b * h, n)):
        raise ValueError("sparse_out must be a tensor like out and a (batch * heads, N) tensor")
    ht, zt = linear_state(k, v, block, ctx=ctx)
    compute = _tl_compute_dtype(q.dtype)
    # In the products' dtype, as the kernel uses it (see the kernel on registers).
    w = proj.detach().to(device=q.device, dtype=_torch_compute_dtype(q.dtype, compute)).contiguous()
    meta = _tile_meta(block, d, q.dtype, backward=False)
    atoms.launch(
        _sla_fwd_kernel, (-(-n // meta["ROWS"]), b * h),
        q, k, v, w, ht, zt, block_map.order, block_map.n_critical, block_map.n_marginal,
        out, *(linear_out if linear_out is not None else (out, out)),
        *(sparse_out if sparse_out is not None else (out, out)),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        h, n, n_blocks, n_blocks, 1.0 / math.sqrt(d),
        ctx=ctx, BLOCK=block, D=d, COMPUTE=compute,
        STORE_LINEAR=linear_out is not None, STORE_SPARSE=sparse_out is not None, **meta,
    )
    return out


@dataclass(frozen=True)
class ForwardRecord:
    """What the backward pass needs from the forward pass, all contiguous (B, H, N, D) or (B*H, N), fp32
    but ``sparse`` (the input dtype)."""

    linear: torch.Tensor
    den: torch.Tensor
    sparse: torch.Tensor
    lse: torch.Tensor

    @staticmethod
    def empty_like(q: torch.Tensor) -> ForwardRecord:
        b, h, n, _ = q.shape
        rows = (b * h, n)
        return ForwardRecord(
            linear=torch.empty(q.shape, device=q.device, dtype=torch.float32),
            den=torch.empty(rows, device=q.device, dtype=torch.float32),
            sparse=torch.empty(q.shape, device=q.device, dtype=q.dtype),
            lse=torch.empty(rows, device=q.device, dtype=torch.float32),
        )


def sla_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, grad_out: torch.Tensor,
                 record: ForwardRecord, block_map: BlockMap, block: int,
                 ctx: KernelContext | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of SLA with respect to q, k, v (in their dtype) and proj (fp32); q, k, v contiguous.
    With ``ctx`` the kernels run as atoms (``gpuos.kernels.atoms``), bit-identical to one launch each."""
    b, h, n, d = q.shape
    n_blocks = -(-n // block)
    g = grad_out.contiguous().float()
    dproj = torch.einsum("bhni,bhnj->ij", g, record.linear)
    dlin = (g @ proj.detach().float()).contiguous()
    delta = (g * record.sparse.float()).sum(-1).reshape(b * h, n).contiguous()
    ht, zt = linear_state(k, v, block, ctx=ctx)
    dq, dnum, dk, dv = (torch.empty((b, h, n, d), device=q.device, dtype=torch.float32) for _ in range(4))
    dden = torch.empty((b * h, n), device=q.device, dtype=torch.float32)
    compute = _tl_compute_dtype(q.dtype)
    # phi(Q), written by the dQ kernel in the products' dtype for the dK/dV kernel's linear walk.
    phiq = torch.empty((b, h, n, d), device=q.device, dtype=_torch_compute_dtype(q.dtype, compute))
    shape = (n, n_blocks, n_blocks, 1.0 / math.sqrt(d))
    meta = {"BLOCK": block, "D": d, "COMPUTE": compute, **_tile_meta(block, d, q.dtype, backward=True)}
    programs = -(-n // meta["ROWS"])
    grad_dtype = grad_out.dtype if grad_out.dtype in (torch.float16, torch.bfloat16) else torch.float32
    do = grad_out.contiguous().to(grad_dtype)
    atoms.launch(
        _sla_bwd_dq_kernel, (programs, b * h),
        q, k, v, do, dlin, record.linear, record.den, record.lse, delta, ht, zt,
        block_map.order, block_map.n_critical, block_map.n_marginal, dq, phiq, dnum, dden, *shape,
        ctx=ctx, **meta)
    gt, gz = linear_state(q, dnum, block, weight=dden, compute=tl.float32, ctx=ctx)
    # Per key block, the query blocks that hold it critical, marginal, negligible: the transposed map.
    by_column = BlockMap.from_classes(block_map.classes.transpose(-1, -2), check=False)
    atoms.launch(
        _sla_bwd_dkdv_kernel, (programs, b * h),
        q, phiq, k, v, do, record.lse, delta, dnum, dden, gt, gz,
        by_column.order, by_column.n_critical, by_column.n_marginal, dk, dv, *shape, ctx=ctx, **meta)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dproj


class _SLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor,
                block_map: BlockMap, block: int, kernel_ctx: KernelContext | None) -> torch.Tensor:
        q, k, v = (x.contiguous() for x in (q, k, v))
        record = ForwardRecord.empty_like(q)
        out = sla_forward(q, k, v, proj, block_map, block, linear_out=(record.linear, record.den),
                          sparse_out=(record.sparse, record.lse), ctx=kernel_ctx)
        ctx.save_for_backward(q, k, v, proj, record.linear, record.den, record.sparse, record.lse)
        ctx.block_map = block_map
        ctx.block = block
        ctx.kernel_ctx = kernel_ctx
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, proj, *saved = ctx.saved_tensors
        dq, dk, dv, dproj = sla_backward(q, k, v, proj, grad_out, ForwardRecord(*saved), ctx.block_map, ctx.block,
                                         ctx.kernel_ctx)
        return dq, dk, dv, dproj.to(proj.dtype), None, None, None


def sla_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, *,
                  block: int = 64, critical_ratio: float = 0.05, negligible_ratio: float = 0.0,
                  block_map: BlockMap | None = None, ctx: KernelContext | None = None) -> torch.Tensor:
    """SLA attention of (batch, heads, N, d) q, k, v; differentiable in q, k, v and proj.

    ``block_map`` overrides the classification from pooled scores (``critical_ratio``,
    ``negligible_ratio``). ``proj`` (d x d) maps the linear branch: out = sparse + linear @ proj^T.
    With ``ctx`` the forward and backward kernels run as atoms (``gpuos.kernels.atoms``).
    """
    if block_map is None:
        with torch.no_grad():
            block_map = classify_blocks(q, k, block, critical_ratio, negligible_ratio)
    result: torch.Tensor = _SLAFunction.apply(q, k, v, proj, block_map, block, ctx)
    return result


class SparseLinearAttention(torch.nn.Module):
    """An SLA layer with its learnable d x d projection, zero-initialised as in the paper."""

    def __init__(self, head_dim: int, block: int = 64, critical_ratio: float = 0.05,
                 negligible_ratio: float = 0.0) -> None:
        super().__init__()
        self.block = block
        self.critical_ratio = critical_ratio
        self.negligible_ratio = negligible_ratio
        self.proj = torch.nn.Parameter(torch.zeros(head_dim, head_dim))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sla_attention(q, k, v, self.proj, block=self.block, critical_ratio=self.critical_ratio,
                             negligible_ratio=self.negligible_ratio)


# What a CPU worker runs under the interpreter in a few seconds per step.
CPU_LIMITS = {"batch": 1, "heads": 2, "seq_len": 512, "dim": 64}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def run_job(params: Mapping[str, Any], ctx: KernelContext) -> dict[str, float]:
    """The ``sla-dit`` kernel job: ``steps`` SLA calls (forward, and backward when asked) on
    random inputs. On the CPU the shapes are capped to ``CPU_LIMITS`` and the summary says so."""
    shape = {name: int(params[name]) for name in ("batch", "heads", "seq_len", "dim")}
    capped = not ctx.on_gpu and any(shape[name] > limit for name, limit in CPU_LIMITS.items())
    if not ctx.on_gpu:
        shape = {name: min(value, CPU_LIMITS[name]) for name, value in shape.items()}
    dim = max(d for d in SUPPORTED_DIMS if d <= shape["dim"])
    block = max(d for d in SUPPORTED_DIMS if d <= int(params["block"]))
    dtype = DTYPES[str(params["dtype"])]
    backward = bool(params.get("backward", False))
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    size = (shape["batch"], shape["heads"], shape["seq_len"], dim)
    q, k, v = (torch.randn(size, generator=gen, device=ctx.device, dtype=dtype) for _ in range(3))
    proj = torch.randn((dim, dim), generator=gen, device=ctx.device) / math.sqrt(dim)
    if backward:
        for x in (q, k, v, proj):
            x.requires_grad_(True)
    density = 0.0
    latencies = []
    for step in range(int(params["steps"])):
        start = time.perf_counter()
        block_map = classify_blocks(q.detach(), k.detach(), block, float(params["critical_ratio"]),
                                    float(params["negligible_ratio"]))
        out = sla_attention(q, k, v, proj, block=block, block_map=block_map, ctx=ctx)
        if backward:
            out.backward(torch.ones_like(out))
        if ctx.on_gpu:
            torch.cuda.current_stream(ctx.device).synchronize()  # its own stream: an executor runs others
        latencies.append(time.perf_counter() - start)
        ctx.report(step, latencies[-1])
        density = block_map.critical_density()
    return {
        "mean_latency_ms": 1e3 * sum(latencies) / len(latencies),
        "critical_density": density,
        "batch": float(shape["batch"]),
        "heads": float(shape["heads"]),
        "seq_len": float(shape["seq_len"]),
        "dim": float(dim),
        "block": float(block),
        "cpu_capped": float(capped),
    }


def bench_cases(
    device: str = "cuda", seq_len: int = 32760, heads: int = 12, ratios: tuple[float, ...] = (0.05, 0.10),
) -> list[tuple[str, Callable[[], Any], Callable[[], Any], float]]:
    """SLA vs dense SDPA at Wan2.1-1.3B shapes, for ``bench/kernels.py`` on a GPU.

    Forward cases at each critical share of ``ratios``, with the block map classified once
    outside the timed call (``kernel``) or inside it (``with classification``), and a
    fine-tuning step (forward and backward) at 5%. ``flops`` counts dense attention's work
    (forward 4 N^2 d per head, backward 2.5x that).
    """
    b, h, n, d = 1, heads, seq_len, 128
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn((b, h, n, d), generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3))
    proj = torch.zeros((d, d), device=device)
    dense_flops = 4.0 * b * h * n * n * d
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any], float]] = []
    for ratio in ratios:
        block_map = classify_blocks(q, k, 64, ratio)
        label = f"sla {int(ratio * 100)}% critical, B={b} H={h} N={n} d={d} bf16"

        def kernel(bm: BlockMap = block_map) -> torch.Tensor:
            return sla_forward(q, k, v, proj, bm, 64)

        def end_to_end(r: float = ratio) -> torch.Tensor:
            return sla_forward(q, k, v, proj, classify_blocks(q, k, 64, r), 64)

        def dense() -> torch.Tensor:
            return dense_sdpa(q, k, v)

        cases.append((label + " (kernel)", kernel, dense, dense_flops))
        cases.append((label + " (with classification)", end_to_end, dense, dense_flops))

    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, proj)]
    grad = torch.randn(q.shape, generator=gen, device=device, dtype=q.dtype)
    train_map = classify_blocks(q, k, 64, 0.05)

    def sla_step() -> None:
        sla_attention(*leaves, block=64, block_map=train_map).backward(grad)

    def dense_step() -> None:
        dense_sdpa(*leaves[:3]).backward(grad)

    cases.append((f"sla 5% critical forward+backward, B={b} H={h} N={n} d={d} bf16", sla_step, dense_step,
                  3.5 * dense_flops))
    return cases
