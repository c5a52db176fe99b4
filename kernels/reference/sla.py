"""Plain PyTorch reference for sparse-linear attention (SLA), written from the definitions.

Dense and simple, O(N^2) memory: it builds token-level masks from the block classes and runs in
whatever dtype it is given (float64 in the tests), differentiably, so its autograd gradients are
the reference for the kernel's backward pass.

Block classes are int8 per (batch, head, query block, key block): ``CRITICAL`` (2), ``MARGINAL``
(1) or ``NEGLIGIBLE`` (0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpuos.kernels.sla_spec import block_counts

NEGLIGIBLE, MARGINAL, CRITICAL = 0, 1, 2


def pooled_block_scores(q: torch.Tensor, k: torch.Tensor, block: int) -> torch.Tensor:
    """softmax(Qp Kp^T / sqrt(d)) over key blocks, with Qp, Kp the per-block token means and K
    mean-centred over the sequence first; (B, H, N, D) inputs give (B, H, nb, nb)."""
    n, d = q.shape[-2], q.shape[-1]
    owner = torch.arange(n, device=q.device) // block
    n_blocks = int(owner[-1]) + 1
    pool = F.one_hot(owner, n_blocks).to(q.dtype)
    pool = pool / pool.sum(0, keepdim=True)
    qp = pool.T @ q
    kp = pool.T @ (k - k.mean(dim=-2, keepdim=True))
    return torch.softmax(qp @ kp.transpose(-1, -2) / math.sqrt(d), dim=-1)


def block_classes(q: torch.Tensor, k: torch.Tensor, block: int, critical_ratio: float,
                  negligible_ratio: float) -> torch.Tensor:
    """Per query block: the highest-scoring key blocks critical, the lowest negligible, the rest marginal."""
    scores = pooled_block_scores(q, k, block)
    n_blocks = scores.shape[-1]
    critical, negligible = block_counts(n_blocks, critical_ratio, negligible_ratio)
    order = torch.argsort(scores, dim=-1, descending=True)
    by_rank = torch.full_like(order, MARGINAL, dtype=torch.int8)
    by_rank[..., :critical] = CRITICAL
    by_rank[..., n_blocks - negligible:] = NEGLIGIBLE
    return torch.empty_like(by_rank).scatter_(-1, order, by_rank)


def token_masks(classes: torch.Tensor, n: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (B, H, N, N) masks of the critical and of the marginal query-key pairs."""
    owner = torch.arange(n, device=classes.device) // block
    per_token = classes[..., owner, :][..., owner]
    return per_token == CRITICAL, per_token == MARGINAL


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """SLA's phi: a softmax over the head dimension (positive features, rows summing to one)."""
    return torch.softmax(x, dim=-1)


def sparse_linear_parts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        classes: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two branches before the projection: exact softmax attention over the critical pairs,
    and linear attention phi(q).phi(k) over the marginal pairs (zero for rows with none)."""
    n, d = q.shape[-2], q.shape[-1]
    critical, marginal = token_masks(classes, n, block)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    sparse = torch.softmax(scores.masked_fill(~critical, float("-inf")), dim=-1) @ v
    weights = (feature_map(q) @ feature_map(k).transpose(-1, -2)) * marginal
    total = weights.sum(-1, keepdim=True)
    has_marginal = marginal.any(-1, keepdim=True)
    linear = torch.where(has_marginal, (weights @ v) / torch.where(has_marginal, total, 1.0), 0.0)
    return sparse, linear


def sla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor,
        classes: torch.Tensor, block: int) -> torch.Tensor:
    """SLA output: sparse branch plus the linear branch through ``proj`` (d x d, applied as x @ proj^T)."""
    sparse, linear = sparse_linear_parts(q, k, v, classes, block)
    return sparse + linear @ proj.transpose(0, 1)


def dense_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The dense baseline a user has today: PyTorch's scaled_dot_product_attention."""
    return F.scaled_dot_product_attention(q, k, v)
