"""Verified sparse-attention decoding (vAttention, arXiv 2510.05688) over a paged KV cache.

For one decoding query per head, attention is computed exactly over a deterministic set (sink
tokens, a local window, and the pages whose Quest-style key bounds promise the highest scores)
and estimated over the remaining ``n_rest`` keys from a uniform sample of ``b`` of them, each
sampled logit shifted by ``log(n_rest / b)``. ``b`` comes from the user's ``(epsilon, delta)``
through a CLT bound, so that the output's relative error exceeds ``epsilon`` with probability at
most ``delta`` (derivation, and where its premises fail, in ``docs/kernels/vattention.md``); when
``b`` would reach ``n_rest`` the rest is computed exactly. The query heads of a KV group share
one plan (each key row is read once per group) sized for the most demanding head.

Layout (see ``gpuos.kernels.reference.vattention``): ``q[B, Hq, D]``, ``k_cache, v_cache
[num_pages, page_size, Hkv, D]`` in fp16, bf16 or fp32, ``page_table[B, max_pages]`` and
``seq_lens[B]`` (ragged). The kernels accumulate in fp32; the budget's statistics are float64.

Public API:

- ``vattention_decode(q, k_cache, v_cache, page_table, seq_lens, config)`` -> ``VAttentionResult``
  (output, per-head sample size, density, which heads were computed exactly, and the index plan).
- ``page_key_bounds(k_cache, page_table, seq_lens)``: per-page key minima and maxima, which a
  serving system keeps up to date as pages fill; pass them in to keep selection off the cache.
- ``run_job(params, ctx)``: the ``vattention-decode`` kernel job.
- ``bench_cases()``: the issue's GPU decode shapes for ``bench/kernels.py``; each ``BenchCase``
  has a ``label`` and a ``build()`` that allocates that case's inputs (build one case at a time:
  the large ones take gigabytes) and returns a ``BenchRun``: zero-argument ``sparse`` and
  ``dense`` callables, the bytes each reads from HBM per call, and the achieved density.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch
import triton
import triton.language as tl

from gpuos.kernels import atoms
from gpuos.kernels.context import KernelContext, Pacer
from gpuos.kernels.reference import vattention as ref

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class VAttentionConfig:
    """Method knobs. ``top_k`` is in tokens and rounds up to whole pages."""

    epsilon: float = 0.05
    delta: float = 0.05
    sink: int = 128
    local: int = 128
    top_k: int = 2048
    base_sample: int = 64
    # "pages": top pages by Quest key bounds (reads only the bounds); "exact": the top_k highest
    # scoring tokens over all keys (reads the whole key cache: the reference's choice).
    selection: str = "pages"
    # False budgets from the denominator alone: the known trap (fails when values cancel).
    bound_numerator: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")
        # Below z^2 = 1.5365 the rank-one Gaussian tail bound on the numerator no longer holds.
        if not 0 < self.delta <= 0.4:
            raise ValueError(f"delta must be in (0, 0.4], got {self.delta}")
        if self.selection not in ("pages", "exact"):
            raise ValueError(f"selection must be 'pages' or 'exact', got {self.selection!r}")
        if min(self.sink, self.local, self.top_k) < 0 or self.base_sample < 2:
            raise ValueError("sink, local and top_k must be >= 0 and base_sample >= 2")

    @property
    def z(self) -> float:
        """Normal quantile: each of the two sums gets delta/2, split over both tails."""
        return NormalDist().inv_cdf(1 - self.delta / 4)

    @property
    def per_sum_epsilon(self) -> float:
        """Relative error allowed on each sum so that (e + e) / (1 - e) = epsilon."""
        return self.epsilon / (2 + self.epsilon)


@dataclass(frozen=True)
class SparsePlan:
    """Which positions each KV head's query group attends to: the deterministic list at weight 1
    and the sampled list at weight ``exp(log_weight)``; lists ``[B, Hkv, N]`` padded, counts and
    weights ``[B, Hkv]``. The heads of a group share both lists, so each key is read once."""

    det_idx: torch.Tensor
    det_count: torch.Tensor
    sample_idx: torch.Tensor
    sample_count: torch.Tensor
    log_weight: torch.Tensor
    group: int

    def kv_lists(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The lists per KV head, as ``index_attention`` takes them."""
        zero = torch.zeros_like(self.log_weight)
        return [(self.det_idx, self.det_count, zero), (self.sample_idx, self.sample_count, self.log_weight)]

    def lists(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The lists per query head, as the reference takes them."""
        return per_query_head(self.kv_lists(), self.group)


Lists = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def per_query_head(lists: Lists, group: int) -> Lists:
    """Index lists per KV head ``[B, Hkv, ...]`` repeated for each of its ``group`` query heads."""
    return [(i.repeat_interleave(group, 1), c.repeat_interleave(group, 1), w.repeat_interleave(group, 1))
            for i, c, w in lists]


@dataclass(frozen=True)
class VAttentionResult:
    """``out[B, Hq, D]`` in q's dtype; per query head ``[B, Hq]`` (equal within a KV group):
    ``sample_size``, the keys attended outside the deterministic set (all ``n_rest`` of them
    where ``exact``), and ``density``, the share of the sequence attended (deterministic +
    sampled keys, not counting the base sample)."""

    out: torch.Tensor
    sample_size: torch.Tensor
    n_rest: torch.Tensor
    exact: torch.Tensor
    density: torch.Tensor
    plan: SparsePlan


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit(do_not_specialize=["pid_offset"])
def _index_attention_partial(
    q_ptr, k_ptr, v_ptr, pt_ptr, idx_ptr, cnt_ptr, logw_ptr, m_ptr, l_ptr, acc_ptr,
    stride_qb, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_pt,
    num_kv, group, idx_len, split_len, split_base, total_splits, scale, pid_offset,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr, DOT_FP32: tl.constexpr,
):
    # One program: one (sequence, KV head), all query heads of its group, and one split of the
    # group's index list, so each key and value row is read once per group. Writes each query
    # head's split state (max logit, sum of exp, exp-weighted sum of values) in fp32. The splits
    # are merged by a later launch (_combine_splits), so the grid may run as atoms from pid_offset.
    bk = tl.program_id(0) + pid_offset
    split = tl.program_id(1)
    b = bk // num_kv
    kvh = bk % num_kv
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    gmask = offs_g < group
    dmask = offs_d < HEAD_DIM
    head = kvh * group + offs_g
    q = tl.load(q_ptr + b * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    logw = tl.load(logw_ptr + bk)
    start = split * split_len
    stop = tl.minimum(start + split_len, tl.load(cnt_ptr + bk))
    m_i = tl.full([BLOCK_G], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for n0 in range(start, stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < stop
        pos = tl.load(idx_ptr + bk * idx_len + offs_n, mask=nmask, other=0)
        page = tl.load(pt_ptr + b * stride_pt + pos // PAGE_SIZE, mask=nmask, other=0)
        row = page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE
        tile_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(k_ptr + row[:, None] * stride_kr + kvh * stride_kh + offs_d[None, :], mask=tile_mask, other=0.0)
        v = tl.load(v_ptr + row[:, None] * stride_vr + kvh * stride_vh + offs_d[None, :], mask=tile_mask, other=0.0)
        if DOT_FP32:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(nmask[None, :], s * scale + logw, -float("inf"))
        # Every tile holds at least one valid entry, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        if DOT_FP32:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    slot = (b * num_kv * group + head) * total_splits + split_base + split
    tl.store(m_ptr + slot, m_i, mask=gmask)
    tl.store(l_ptr + slot, l_i, mask=gmask)
    tl.store(acc_ptr + slot[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=gmask[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["pid_offset"])
def _combine_splits(
    m_ptr, l_ptr, acc_ptr, out_ptr, num_heads, num_splits, stride_ob, stride_oh, pid_offset,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Stage two of the split-K decode: merge every split's state and normalise.
    bh = tl.program_id(0) + pid_offset
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    smask = offs_s < num_splits
    dmask = offs_d < HEAD_DIM
    m = tl.load(m_ptr + bh * num_splits + offs_s, mask=smask, other=-float("inf"))
    l_s = tl.load(l_ptr + bh * num_splits + offs_s, mask=smask, other=0.0)
    top = tl.max(m, axis=0)
    top = tl.where(top == -float("inf"), 0.0, top)
    w = tl.exp(m - top)
    acc = tl.load(
        acc_ptr + (bh * num_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
        mask=smask[:, None] & dmask[None, :], other=0.0,
    )
    o = tl.sum(acc * w[:, None], axis=0) / tl.sum(l_s * w, axis=0)
    out = out_ptr + (bh // num_heads) * stride_ob + (bh % num_heads) * stride_oh + offs_d
    tl.store(out, o.to(out_ptr.dtype.element_ty), mask=dmask)


State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _split_len(longest: int, rows: int, num_splits: int | None, block_n: int, on_gpu: bool) -> int:
    if num_splits is None:
        # Enough programs to fill an H100's 132 SMs twice over; one split per 4K keys under
        # the interpreter, where programs run one after another.
        num_splits = max(1, min(triton.cdiv(longest, block_n), triton.cdiv(264, rows))) if on_gpu else 1
    per = triton.cdiv(max(longest, 1), max(num_splits, 1))
    return triton.cdiv(per, block_n) * block_n


def _triton_partials(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
    lists: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], scale: float, num_splits: int | None,
    ctx: KernelContext | None = None,
) -> State:
    """Split-K states ``m, l [B, Hq, S]`` and ``acc [B, Hq, S, D]`` over all ``lists`` (per KV head)."""
    batch, heads, dim = q.shape
    num_kv = k_cache.shape[2]
    on_gpu = q.is_cuda
    block_n = 64 if on_gpu else 128
    plans = []
    total = 0
    for idx, count, logw in lists:
        split_len = _split_len(idx.shape[-1], batch * num_kv, num_splits, block_n, on_gpu)
        splits = triton.cdiv(max(idx.shape[-1], 1), split_len)
        plans.append((idx.contiguous(), count.to(torch.int32).contiguous(), logw.float().contiguous(), split_len,
                      splits, total))
        total += splits
    m = torch.empty(batch, heads, total, device=q.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(batch, heads, total, dim, device=q.device, dtype=torch.float32)
    block_d = max(16, triton.next_power_of_2(dim))  # tl.dot's smallest inner size
    pt = page_table.to(torch.int32).contiguous()
    for idx, count, logw, split_len, splits, base in plans:
        atoms.launch(
            _index_attention_partial, (batch * num_kv, splits),
            q, k_cache, v_cache, pt, idx.to(torch.int32), count, logw, m, l_sum, acc,
            q.stride(0), q.stride(1), k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
            pt.stride(0), num_kv, heads // num_kv, idx.shape[-1], split_len, base, total, scale,
            ctx=ctx, PAGE_SIZE=k_cache.shape[1], HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_N=block_n,
            # tl.dot needs 16 rows; the interpreter's low-precision dot is wrong, so use fp32 there.
            BLOCK_G=max(16, triton.next_power_of_2(heads // num_kv)), DOT_FP32=not on_gpu or q.dtype == torch.float32,
        )
    return m, l_sum, acc


def _triton_combine(state: State, out: torch.Tensor, ctx: KernelContext | None = None) -> None:
    m, l_sum, acc = state
    batch, heads, splits, dim = acc.shape
    atoms.launch(
        _combine_splits, (batch * heads,),
        m, l_sum, acc, out, heads, splits, out.stride(0), out.stride(1),
        ctx=ctx, HEAD_DIM=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_S=triton.next_power_of_2(splits),
    )


def index_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
    lists: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], *, out: torch.Tensor | None = None,
    num_splits: int | None = None, ctx: KernelContext | None = None,
) -> torch.Tensor:
    """Triton attention over weighted index lists ``(idx[B, Hkv, N], count[B, Hkv], log_weight[B, Hkv])``
    shared by each KV head's query group: the same function as ``reference.vattention.index_attention``
    given the lists repeated per query head. ``out`` in q's dtype. With ``ctx`` the kernels run as
    atoms (``gpuos.kernels.atoms``), bit-identical to one launch each."""
    out = torch.empty_like(q) if out is None else out
    state = _triton_partials(q, k_cache, v_cache, page_table, lists, q.shape[-1] ** -0.5, num_splits, ctx)
    _triton_combine(state, out, ctx)
    return out


def _reference_partials(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
    lists: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], scale: float, num_splits: int | None,
    ctx: KernelContext | None = None,
) -> State:
    per_head = per_query_head(lists, q.shape[1] // k_cache.shape[2])
    return ref.index_attention_states(q, k_cache, v_cache, page_table, per_head, scale)


# ----------------------------------------------------------------------------- selection and budget


def page_key_bounds(
    k_cache: torch.Tensor, page_table: torch.Tensor, seq_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise minimum and maximum of each logical page's keys, ``[B, max_pages, Hkv, D]`` fp32.

    Slots past a sequence's end are left out; pages wholly past it get zeros (never selected).
    """
    page_size = k_cache.shape[1]
    lows, highs = [], []
    for b in range(page_table.shape[0]):
        keys = k_cache[page_table[b].long()].float()
        slot = torch.arange(keys.shape[0] * page_size, device=keys.device).view(-1, page_size, 1, 1)
        valid = slot < seq_lens[b]
        lo = keys.masked_fill(~valid, math.inf).amin(1)
        hi = keys.masked_fill(~valid, -math.inf).amax(1)
        lows.append(torch.where(torch.isinf(lo), 0.0, lo))
        highs.append(torch.where(torch.isinf(hi), 0.0, hi))
    return torch.stack(lows), torch.stack(highs)


@dataclass(frozen=True)
class _Selection:
    det_idx: torch.Tensor
    det_count: torch.Tensor
    taken_shifted: torch.Tensor  # middle offsets taken by top pages, minus their rank; sorted, padded
    mid_lo: torch.Tensor  # [B, 1]
    n_rest: torch.Tensor  # [B, Hkv]


def _group_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` items per KV group from per-query-head ``scores[B, Hkv, G, N]`` (-inf: not eligible):
    each head's best ``k // G`` first, so no head's heavy keys are crowded out by another's, then
    the best by the group's highest score. Returns ``(taken [B, Hkv, k] bool, index)``."""
    group, n = scores.shape[2], scores.shape[3]
    k = min(k, n)
    best = scores.amax(2)
    quota = min(k // group, n)
    if quota:
        own = scores.topk(quota, dim=-1)
        mine = torch.zeros_like(best, dtype=torch.bool).scatter_(-1, own.indices.flatten(2), True)
        best = torch.where(mine & (best > -math.inf), math.inf, best)
    top, index = best.topk(k, dim=-1)
    return top > -math.inf, index


def _top_pages(
    q: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor], mid_lo: torch.Tensor, mid_hi: torch.Tensor,
    page_size: int, top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per KV head, the middle tokens of the pages with the highest Quest bounds for any query
    head of its group, and which of them are real."""
    batch, heads, dim = q.shape
    lo, hi = bounds
    num_pages, num_kv = lo.shape[1], lo.shape[2]
    # Quest bound: q . k <= sum_d max(q_d min_d, q_d max_d) for every key in the page.
    qg = q.float().view(batch, num_kv, heads // num_kv, dim)
    upper = (torch.einsum("bkgd,bpkd->bkgp", qg.clamp(min=0), hi)
             + torch.einsum("bkgd,bpkd->bkgp", qg.clamp(max=0), lo))
    start = torch.arange(num_pages, device=q.device) * page_size
    in_middle = (start < mid_hi) & (start + page_size > mid_lo)
    upper = upper.masked_fill(~in_middle.view(batch, 1, 1, num_pages), -math.inf)
    taken, pages = _group_top(upper, triton.cdiv(top_k, page_size))
    tok = (pages.unsqueeze(-1) * page_size + torch.arange(page_size, device=q.device)).flatten(2)
    ok = taken.repeat_interleave(page_size, dim=-1)
    return tok, ok & (tok >= mid_lo.unsqueeze(-1)) & (tok < mid_hi.unsqueeze(-1))


def _top_tokens(
    q: torch.Tensor, k_cache: torch.Tensor, page_table: torch.Tensor, mid_lo: torch.Tensor, mid_hi: torch.Tensor,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per KV head, the ``top_k`` middle tokens with the highest exact score for any query head of
    its group (reads every key)."""
    batch, heads, dim = q.shape
    num_kv = k_cache.shape[2]
    longest = int(mid_hi.max())
    pos = torch.arange(longest, device=q.device).expand(batch, num_kv, longest)
    keys = ref.gather_kv(k_cache, page_table, pos).float()
    scores = torch.einsum("bkgd,bknd->bkgn", q.float().view(batch, num_kv, heads // num_kv, dim), keys)
    middle = (pos >= mid_lo.unsqueeze(-1)) & (pos < mid_hi.unsqueeze(-1))
    taken, tok = _group_top(scores.masked_fill(~middle.unsqueeze(2), -math.inf), top_k)
    return tok, taken


def _select(
    q: torch.Tensor, k_cache: torch.Tensor, page_table: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None, seq_lens: torch.Tensor, cfg: VAttentionConfig,
) -> _Selection:
    batch, num_kv = q.shape[0], k_cache.shape[2]  # one selection per KV head
    dev = q.device
    length = seq_lens.long().view(batch, 1)
    mid_lo = length.clamp(max=cfg.sink)
    mid_hi = torch.maximum(length - cfg.local, mid_lo)
    big = torch.iinfo(torch.int64).max // 2

    sink = torch.arange(cfg.sink, device=dev).expand(batch, num_kv, cfg.sink)
    local = mid_hi.unsqueeze(-1) + torch.arange(cfg.local, device=dev)
    candidates = [(sink, sink < mid_lo.unsqueeze(-1)), (local.expand(batch, num_kv, cfg.local),
                                                         (local < length.unsqueeze(-1)).expand(batch, num_kv, cfg.local))]
    mid_tok = torch.empty(batch, num_kv, 0, dtype=torch.long, device=dev)
    mid_ok = torch.empty(batch, num_kv, 0, dtype=torch.bool, device=dev)
    if int(mid_hi.max()) > 0:
        if bounds is not None:
            mid_tok, mid_ok = _top_pages(q, bounds, mid_lo, mid_hi, k_cache.shape[1], cfg.top_k)
        else:
            mid_tok, mid_ok = _top_tokens(q, k_cache, page_table, mid_lo, mid_hi, cfg.top_k)
        candidates.append((mid_tok, mid_ok))
    pos = torch.cat([c[0] for c in candidates], -1)
    ok = torch.cat([c[1] for c in candidates], -1)
    det_count = ok.sum(-1)
    det_idx = torch.where(ok, pos, big).sort(-1).values[..., : max(int(det_count.max()), 1)]
    det_idx = torch.where(det_idx == big, 0, det_idx)

    taken = torch.where(mid_ok, mid_tok - mid_lo.unsqueeze(-1), big).sort(-1).values
    rank = torch.arange(taken.shape[-1], device=dev)
    taken_shifted = torch.where(taken == big, big, taken - rank).contiguous()
    n_rest = (mid_hi - mid_lo) - mid_ok.sum(-1)
    return _Selection(det_idx, det_count, taken_shifted, mid_lo, n_rest)


def _rest_positions(j: torch.Tensor, sel: _Selection) -> torch.Tensor:
    """Map ``j`` in ``[0, n_rest)`` to the j-th middle position that no top page took."""
    if sel.taken_shifted.shape[-1] == 0:
        return sel.mid_lo.unsqueeze(-1) + j
    return sel.mid_lo.unsqueeze(-1) + j + torch.searchsorted(sel.taken_shifted, j.contiguous(), right=True)


def _budget(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
    det: State, sel: _Selection, cfg: VAttentionConfig, scale: float, generator: torch.Generator | None,
) -> torch.Tensor:
    """Sample size per KV head ``[B, Hkv]``: the largest any query head of the group needs, from a
    base sample shared by the group (float64 statistics); ``>= n_rest`` means exact."""
    batch, num_kv = q.shape[0], k_cache.shape[2]
    j = (torch.rand(batch, num_kv, cfg.base_sample, device=q.device, generator=generator, dtype=torch.float64)
         * sel.n_rest.unsqueeze(-1)).long()
    j = torch.minimum(j, (sel.n_rest - 1).clamp(min=0).unsqueeze(-1))
    return _need(q, k_cache, v_cache, page_table, det, sel, cfg, scale, _rest_positions(j, sel))


def _need(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
    det: State, sel: _Selection, cfg: VAttentionConfig, scale: float, pos: torch.Tensor,
) -> torch.Tensor:
    """The CLT budget per KV group from the rest keys at ``pos[B, Hkv, n]`` (see the docs)."""
    batch, heads, _ = q.shape
    num_kv = k_cache.shape[2]
    group = heads // num_kv
    k = ref.gather_kv(k_cache, page_table, pos).double().repeat_interleave(group, dim=1)
    v = ref.gather_kv(v_cache, page_table, pos).double().repeat_interleave(group, dim=1)
    n_rest = sel.n_rest.double().repeat_interleave(group, dim=1)
    s = torch.einsum("bhd,bhnd->bhn", q.double(), k) * scale
    m_det, l_det, acc_det = (t.double() for t in ref.merge_states(*det))
    m_ref = torch.maximum(m_det, s.amax(-1))
    shift = torch.exp(m_det - m_ref)
    w = torch.exp(s - m_ref.unsqueeze(-1))
    wv = w.unsqueeze(-1) * v
    denom = l_det * shift + n_rest * w.mean(-1)
    numer = acc_det * shift.unsqueeze(-1) + n_rest.unsqueeze(-1) * wv.mean(-2)
    e, z = cfg.per_sum_epsilon, cfg.z
    need = (z * n_rest * w.std(-1) / (e * denom)) ** 2
    if cfg.bound_numerator:
        spread = wv.var(-2).sum(-1).sqrt()
        need = torch.maximum(need, (z * n_rest * spread / (e * numer.norm(dim=-1))) ** 2)
    need = torch.nan_to_num(need, nan=math.inf).clamp(min=cfg.base_sample).view(batch, num_kv, group).amax(-1)
    rest = sel.n_rest
    return torch.where((rest <= cfg.base_sample) | (need >= rest), rest, need.ceil().clamp(max=rest.double()).long())


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
    ctx: KernelContext | None = None,
) -> VAttentionResult:
    """vAttention decode of ``q[B, Hq, D]`` against a paged cache (layout in the module docstring).

    ``backend="triton"`` runs the split-K Triton kernels; ``"reference"`` the same plan in float64
    PyTorch (its ``out`` is float64). ``bounds`` defaults to ``page_key_bounds`` of the cache.
    ``out`` (``[B, Hq, D]``, q's dtype) is written in place when given. With ``ctx`` the Triton
    kernels run as atoms (``gpuos.kernels.atoms``), bit-identical to one launch each.
    """
    cfg = config or VAttentionConfig()
    _check(q, k_cache, v_cache, page_table, seq_lens, backend)
    batch, heads, dim = q.shape
    scale = dim**-0.5
    if bounds is None and cfg.selection == "pages":
        bounds = page_key_bounds(k_cache, page_table, seq_lens)
    partials = _triton_partials if backend == "triton" else _reference_partials
    num_kv = k_cache.shape[2]
    sel = _select(q, k_cache, page_table, bounds, seq_lens, cfg)
    zero = torch.zeros(batch, num_kv, device=q.device, dtype=torch.float32)
    det = partials(q, k_cache, v_cache, page_table, [(sel.det_idx, sel.det_count, zero)], scale, num_splits, ctx)

    size = _budget(q, k_cache, v_cache, page_table, det, sel, cfg, scale, generator)
    exact = size >= sel.n_rest
    width = max(int(size.max()), 1)
    uniform = torch.rand(batch, num_kv, width, device=q.device, generator=generator, dtype=torch.float64)
    j = torch.where(exact.unsqueeze(-1), torch.arange(width, device=q.device),
                    (uniform * sel.n_rest.unsqueeze(-1)).long())
    j = torch.minimum(j, (sel.n_rest - 1).clamp(min=0).unsqueeze(-1))
    sample_idx = _rest_positions(j, sel)
    log_weight = torch.where(exact, 0.0, torch.log(sel.n_rest.double() / size.clamp(min=1).double())).float()
    plan = SparsePlan(sel.det_idx, sel.det_count, sample_idx, size, log_weight, heads // num_kv)

    rest = partials(q, k_cache, v_cache, page_table, [(sample_idx, size, log_weight)], scale, num_splits, ctx)
    state = tuple(torch.cat([a, b], dim=2) for a, b in zip(det, rest, strict=True))
    if backend == "triton":
        if out is None:
            out = torch.empty_like(q)
        _triton_combine((state[0], state[1], state[2]), out, ctx)
    else:
        _, l_sum, acc = ref.merge_states(*state)
        result = acc / l_sum.unsqueeze(-1)
        out = result if out is None else out.copy_(result)
    density = (sel.det_count + size).double() / seq_lens.double().view(batch, 1)

    def per_head(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(heads // num_kv, dim=1)

    return VAttentionResult(out, per_head(size), per_head(sel.n_rest), per_head(exact), per_head(density), plan)


def _check(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
    seq_lens: torch.Tensor, backend: str,
) -> None:
    if backend not in ("triton", "reference"):
        raise ValueError(f"backend must be 'triton' or 'reference', got {backend!r}")
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"want q[B, Hq, D] and k, v caches [pages, page_size, Hkv, D]; got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    batch, heads, dim = q.shape
    if k_cache.shape[3] != dim or heads % k_cache.shape[2]:
        raise ValueError(f"head dim {dim} / {heads} query heads do not fit a cache of {tuple(k_cache.shape)}")
    if q.dtype not in DTYPES.values() or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q and caches must share one of fp16, bf16, fp32; got {q.dtype}, {k_cache.dtype}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or q.stride(2) != 1:
        raise ValueError("caches must be contiguous and q's last dim unit-stride")
    if page_table.dim() != 2 or page_table.shape[0] != batch or seq_lens.shape != (batch,):
        raise ValueError(f"want page_table[{batch}, max_pages] and seq_lens[{batch}]")
    if int(seq_lens.min()) < 1 or int(seq_lens.max()) > page_table.shape[1] * k_cache.shape[1]:
        raise ValueError("every sequence needs 1 .. max_pages * page_size tokens")
    if dim > 256:
        raise ValueError(f"head dim {dim} is above 256")


# ----------------------------------------------------------------------------- jobs and benchmarks


@dataclass(frozen=True)
class DecodeInputs:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    page_table: torch.Tensor
    seq_lens: torch.Tensor


def random_paged_inputs(
    seq_lens: list[int], heads: int, kv_heads: int, dim: int, page_size: int, dtype: torch.dtype,
    device: torch.device | str, generator: torch.Generator | None = None, spare_pages: int = 1,
    structured: bool = False,
) -> DecodeInputs:
    """Random q and a paged cache holding ``seq_lens`` tokens, its pages in shuffled order, made on
    ``device`` (``generator`` must live there too).

    ``structured`` makes them look more like a model's: keys cluster by page (neighbouring tokens
    have similar keys, so page bounds are informative) and values share a mean direction.
    """
    pages_per = [triton.cdiv(n, page_size) for n in seq_lens]
    total = sum(pages_per) + spare_pages
    max_pages = max(pages_per) + spare_pages
    perm = torch.randperm(total, generator=generator, device=device)
    table = torch.zeros(len(seq_lens), max_pages, dtype=torch.int32, device=device)
    first = 0
    for b, count in enumerate(pages_per):
        table[b, :count] = perm[first : first + count]
        first += count

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    keys, values = rand(total, page_size, kv_heads, dim), rand(total, page_size, kv_heads, dim)
    if structured:
        keys = rand(total, 1, kv_heads, dim) + 0.3 * keys
        values = values + rand(kv_heads, dim)
    return DecodeInputs(rand(len(seq_lens), heads, dim), keys, values, table,
                        torch.tensor(seq_lens, dtype=torch.int32, device=device))


CPU_LIMITS = {"batch": 2, "heads": 4, "kv_heads": 2, "dim": 64, "context": 2048}


def run_job(params: Mapping[str, Any], ctx: KernelContext) -> dict[str, float]:
    """The ``vattention-decode`` job: ``steps`` decode calls on random ragged paged inputs.

    On the CPU (Triton interpreter) shapes are capped at ``CPU_LIMITS`` and bf16 runs as fp16.
    """
    shape = {k: int(params[k]) for k in CPU_LIMITS}
    dtype = DTYPES[str(params["dtype"])]
    if not ctx.on_gpu:
        shape = {k: min(v, CPU_LIMITS[k]) for k, v in shape.items()}
        shape["heads"] = max(shape["kv_heads"], shape["heads"] - shape["heads"] % shape["kv_heads"])
        dtype = torch.float16 if dtype == torch.bfloat16 else dtype
    if shape["heads"] % shape["kv_heads"]:
        raise ValueError(f"heads={shape['heads']} is not a multiple of kv_heads={shape['kv_heads']}")
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    context = shape["context"]
    # Ragged batch: lengths uniform in [context / 2, context].
    lens = torch.randint(max(context // 2, 1), context + 1, (shape["batch"],), generator=gen, device=ctx.device)
    inputs = random_paged_inputs(lens.tolist(), shape["heads"], shape["kv_heads"], shape["dim"],
                                 int(params["page_size"]), dtype, ctx.device, gen, structured=True)
    cfg = VAttentionConfig(epsilon=float(params["epsilon"]), delta=float(params["delta"]), sink=int(params["sink"]),
                           local=int(params["local"]), top_k=int(float(params["heavy_fraction"]) * context),
                           base_sample=int(params["base_sample"]))
    bounds = page_key_bounds(inputs.k_cache, inputs.page_table, inputs.seq_lens)
    latencies, densities = [], []
    pacer = Pacer(float(params.get("interval_ms", 0.0)))
    for step in range(int(params["steps"])):
        pacer.wait()
        began = time.perf_counter()
        result = vattention_decode(inputs.q, inputs.k_cache, inputs.v_cache, inputs.page_table, inputs.seq_lens,
                                   cfg, bounds=bounds, generator=gen, ctx=ctx)
        if ctx.on_gpu:
            torch.cuda.current_stream(ctx.device).synchronize()  # its own stream: an executor runs others
        latencies.append(time.perf_counter() - began)
        densities.append(float(result.density.mean()))
        ctx.report(step, latencies[-1])
    return {
        "mean_latency_s": sum(latencies) / len(latencies),
        "mean_density": sum(densities) / len(densities),
        "batch": float(shape["batch"]), "heads": float(shape["heads"]), "kv_heads": float(shape["kv_heads"]),
        "dim": float(shape["dim"]), "context": float(context), "shapes_capped_for_cpu": float(not ctx.on_gpu),
    }


@dataclass(frozen=True)
class BenchRun:
    """One benchmark case, built: zero-argument callables for the sparse and the dense decode,
    the bytes each reads from HBM per call, and the sparse call's mean density."""

    sparse: Callable[[], Any]
    dense: Callable[[], Any]
    sparse_bytes: float
    dense_bytes: float
    density: float


@dataclass(frozen=True)
class BenchCase:
    label: str
    build: Callable[[], BenchRun]


def bench_cases(
    contexts: tuple[int, ...] = (8192, 32768, 131072), batches: tuple[int, ...] = (1, 8, 64),
    max_tokens: int = 1 << 21, page_size: int = 64, dtype: torch.dtype = torch.bfloat16,
    temperature: float = 3.0, device: str = "cuda",
) -> list[BenchCase]:
    """Llama-3.1-8B decode shapes (32 q heads, 8 KV heads, dim 128), structured random inputs
    whose logits have standard deviation about ``temperature`` (peaked, as decode heads are),
    top pages covering 5% of the context, epsilon = delta = 0.05.

    Cases with more than ``max_tokens`` cached tokens (batch x context) are left out: the dense
    baseline needs a contiguous copy of the cache. Page bounds are built once, outside the timed
    call, as a serving system maintains them. ``sparse_bytes`` counts the K/V rows that the plan
    of one warm-up call reads (deterministic set, base sample, sample) and the page bounds.
    """

    def make(batch: int, context: int) -> BenchCase:
        def build() -> BenchRun:
            x = random_paged_inputs([context] * batch, 32, 8, 128, page_size, dtype, device, structured=True)
            q = (x.q.float() * temperature).to(dtype)
            cfg = VAttentionConfig(top_k=context // 20)
            bounds = page_key_bounds(x.k_cache, x.page_table, x.seq_lens)
            args = (q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, cfg)
            row = 128 * q.element_size()
            warm = vattention_decode(*args, bounds=bounds)
            read = (warm.plan.det_count + warm.plan.sample_count + cfg.base_sample).sum().item() * 2 * row
            read += bounds[0].numel() * 2 * 4  # min and max in fp32
            k = x.k_cache[x.page_table.long()].flatten(1, 2)[:, :context].transpose(1, 2).contiguous()
            v = x.v_cache[x.page_table.long()].flatten(1, 2)[:, :context].transpose(1, 2).contiguous()
            return BenchRun(lambda: vattention_decode(*args, bounds=bounds), lambda: ref.sdpa_decode(q, k, v),
                            float(read), float(2 * batch * context * 8 * row), float(warm.density.mean()))

        return BenchCase(f"vattention-decode B={batch} ctx={context}", build)

    return [make(b, c) for c in contexts for b in batches if b * c <= max_tokens]
