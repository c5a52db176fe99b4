"""Plain PyTorch reference for Radial Attention: the token-level mask from its definition, and
attention under a boolean mask (float64 softmax, or PyTorch's SDPA), plus the dense baseline.

The mask here is built independently of :func:`gpuos.kernels.radial_spec.radial_layout` and its
window table (from each rule's definition, token by token), so the tests can check the block
layout against it; only the rule names are shared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpuos.kernels.radial_spec import RadialLayout, check_mask


def radial_mask(frames: int, tokens_per_frame: int, block: int = 128, sink: bool = True,
                device: torch.device | str = "cpu", rows: torch.Tensor | None = None,
                mask: str = "paper") -> torch.Tensor:
    """The ``(n, n)`` boolean mask (``True``: the query row attends to the key column), ``n = frames * T``;
    only the query rows ``rows`` (token indices) when given.

    Frame distance ``d``, band ``r = floor(log2(max(d, 1)))``, spatial distance ``x = |s_q - s_k|``.
    ``mask="paper"`` is Equation 4 of the paper (``block`` plays no part): attend when
    ``2**r <= T`` and ``x + 1 <= T / 2**r``, or when ``d mod ceil(2**r / T) == 0`` and ``x == 0``.
    ``mask="gpuos"``: attend when ``x < T / 2**r``; where ``T / 2**r < block`` (and ``r >= 1``)
    attend instead when ``x < block`` and ``d`` is a multiple of ``ceil(block * 2**r / T)``.
    With ``sink`` both also attend to every key of frame 0.
    """
    check_mask(mask)
    t = tokens_per_frame
    idx = torch.arange(frames * t, device=device, dtype=torch.int64)
    frame, spatial = idx // t, idx % t
    query = idx if rows is None else rows.to(device=device, dtype=torch.int64)
    d = (query[:, None] // t - frame[None, :]).abs()
    ds = (query[:, None] % t - spatial[None, :]).abs()
    r = torch.floor(torch.log2(d.clamp(min=1).to(torch.float64))).to(torch.int64)
    scale = torch.ones_like(r) << r
    if mask == "paper":
        # Both sides of each inequality are integers times integers, so no rounding enters.
        diagonal_band = (scale <= t) & ((ds + 1) * scale <= t)
        sparse_diagonal = (d % ((scale + t - 1) // t) == 0) & (ds == 0)
        attended = diagonal_band | sparse_diagonal
    else:
        in_window = ds * scale < t
        narrow = (r >= 1) & (t < block * scale)
        stride = (block * scale + t - 1) // t
        kept_pair = (d % stride == 0) & (ds < block)
        attended = torch.where(narrow, kept_pair, in_window)
    if sink:
        attended |= (frame == 0)[None, :]
    return attended


def block_cover(mask: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block pair of ``mask``: whether any token pair is attended, and whether all are.

    Tokens past the end of the sequence (the last block's padding) count as neither.
    """
    n = mask.shape[0]
    nb = -(-n // block)
    pad = nb * block - n
    anyp = F.pad(mask, (0, pad, 0, pad), value=False).view(nb, block, nb, block)
    allp = F.pad(mask, (0, pad, 0, pad), value=True).view(nb, block, nb, block)
    return anyp.any(dim=3).any(dim=1), allp.all(dim=3).all(dim=1)


def layout_cover(layout: RadialLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block pair, what the kernel's ``layout`` claims: attended, and attended only in part
    (to hold against :func:`block_cover` of the token mask: touched, and touched but not full)."""
    active = torch.zeros(layout.num_blocks, layout.num_blocks, dtype=torch.bool)
    partial = torch.zeros_like(active)
    for qb, (row, flags) in enumerate(zip(layout.key_blocks, layout.partial, strict=True)):
        active[qb, list(row)] = True
        partial[qb, list(row)] = torch.tensor(flags, dtype=torch.bool)
    return active, partial


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                        scale: float | None = None) -> torch.Tensor:
    """Softmax attention in float64 written out: ``softmax(q k^T * scale, masked) v``, shape of ``q``.

    ``q, k, v``: ``(batch, heads, n, dim)``; ``mask``: ``(n, n)`` boolean, every row with a ``True``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return (p / p.sum(dim=-1, keepdim=True)) @ v.double()


def masked_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                scale: float | None = None) -> torch.Tensor:
    """PyTorch's ``scaled_dot_product_attention`` under the same boolean mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def dense_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The dense baseline a user has today (FlashAttention backend on a GPU)."""
    return F.scaled_dot_product_attention(q, k, v)
