"""Plain PyTorch references for verified sparse-attention decoding (vAttention).

Layout shared with ``gpuos.kernels.vattention``: one decoding query per head ``q[B, Hq, D]``; a
paged KV cache ``k_cache, v_cache[num_pages, page_size, Hkv, D]``; ``page_table[B, max_pages]``
maps a sequence's logical page to a physical page; ``seq_lens[B]`` says how many tokens each
sequence holds. Query head ``h`` reads KV head ``h // (Hq // Hkv)`` (grouped-query attention).

Index lists name token *positions* in a sequence (0 .. seq_len-1), padded on the right; a count
per (sequence, head) says how many entries are real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kv_head_of(num_q_heads: int, num_kv_heads: int, device: torch.device) -> torch.Tensor:
    """The KV head each query head reads, ``[Hq]``."""
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    return torch.arange(num_q_heads, device=device) // (num_q_heads // num_kv_heads)


def gather_kv(cache: torch.Tensor, page_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of ``cache`` at token ``positions[B, Hq, N]`` for each query head's KV head: ``[B, Hq, N, D]``.

    Positions must be valid (below the sequence length); padded entries should be clamped first.
    """
    num_pages, page_size, num_kv, dim = cache.shape
    batch, heads, n = positions.shape
    pos = positions.long()
    pages = torch.gather(page_table.long(), 1, (pos // page_size).reshape(batch, heads * n)).reshape(pos.shape)
    rows = pages * page_size + pos % page_size
    flat = cache.reshape(num_pages * page_size * num_kv, dim)
    kvh = kv_head_of(heads, num_kv, cache.device).view(1, heads, 1)
    return flat[rows * num_kv + kvh]


def index_attention_state(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    idx: torch.Tensor,
    count: torch.Tensor,
    log_weight: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 softmax state over an index list whose logits are shifted by ``log_weight[B, Hq]``.

    Returns ``(m, l, acc)``: the largest weighted logit ``[B, Hq]``, ``sum exp(s - m)`` and
    ``sum exp(s - m) v`` ``[B, Hq, D]`` over the first ``count`` entries (``m = -inf``, ``l = 0``
    where a list is empty).
    """
    n = idx.shape[-1]
    valid = torch.arange(n, device=idx.device).view(1, 1, n) < count.unsqueeze(-1)
    safe = torch.where(valid, idx.long(), torch.zeros_like(idx, dtype=torch.long))
    k = gather_kv(k_cache, page_table, safe).double()
    v = gather_kv(v_cache, page_table, safe).double()
    s = torch.einsum("bhd,bhnd->bhn", q.double(), k) * scale + log_weight.double().unsqueeze(-1)
    s = s.masked_fill(~valid, float("-inf"))
    m = s.amax(dim=-1)
    p = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)).unsqueeze(-1))
    return m, p.sum(-1), torch.einsum("bhn,bhnd->bhd", p, v)


def merge_states(
    m: torch.Tensor, denom: torch.Tensor, acc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge softmax states along the last dim of ``m``/``denom`` (``acc`` has ``D`` after it)."""
    top = m.amax(dim=-1, keepdim=True)
    scale = torch.exp(m - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    return top.squeeze(-1), (denom * scale).sum(-1), (acc * scale.unsqueeze(-1)).sum(-2)


def index_attention_states(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    lists: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One float64 state per weighted index list ``(idx, count, log_weight)``, stacked last:
    ``m, denom [B, Hq, S]``, ``acc [B, Hq, S, D]``."""
    states = [index_attention_state(q, k_cache, v_cache, page_table, i, c, w, scale) for i, c, w in lists]
    return (torch.stack([s[0] for s in states], -1), torch.stack([s[1] for s in states], -1),
            torch.stack([s[2] for s in states], -2))


def index_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    lists: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    scale: float,
) -> torch.Tensor:
    """Float64 output of attention over several weighted index lists ``(idx, count, log_weight)``.

    With the deterministic set at weight 0 and a uniform sample of ``b`` of the ``n_rest`` other
    keys at ``log(n_rest / b)``, this is the vAttention estimator.
    """
    _, denom, acc = merge_states(*index_attention_states(q, k_cache, v_cache, page_table, lists, scale))
    return acc / denom.unsqueeze(-1)


def dense_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor, seq_lens: torch.Tensor
) -> torch.Tensor:
    """Exact attention of each query over all of its sequence's keys, in float64: ``[B, Hq, D]``."""
    batch, heads, dim = q.shape
    longest = int(seq_lens.max())
    idx = torch.arange(longest, device=q.device).expand(batch, heads, longest)
    count = seq_lens.view(batch, 1).expand(batch, heads)
    zero = torch.zeros(batch, heads, dtype=torch.float64, device=q.device)
    return index_attention(q, k_cache, v_cache, page_table, [(idx, count, zero)], dim**-0.5)


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The dense baseline a user has today: PyTorch SDPA on a contiguous cache.

    ``q[B, Hq, D]``, ``k, v[B, Hkv, L, D]``; returns ``[B, Hq, D]``.
    """
    out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=q.shape[1] != k.shape[1])
    return out.squeeze(2)
