"""Decode inputs for checking vAttention's (epsilon, delta) guarantee: the adversarial families
on which the paper's CLT budget breaks, natural heads at long context, and the exact binomial
tail the checks judge exceedance rates by. Shared by tests/kernels/test_vattention_guarantee.py
and bench/vattention_guarantee.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpuos.kernels import vattention as va

EPSILON = DELTA = 0.1
# A check rejects when a true rate of delta would produce at least this many heads beyond
# epsilon with probability below LEVEL: a correct budget fails it once in a thousand runs.
LEVEL = 1e-3
DIM, HEADS, KV_HEADS, PAGE = 16, 8, 4, 16
FAMILY_CONFIG = va.VAttentionConfig(epsilon=EPSILON, delta=DELTA, sink=16, local=32, top_k=64, base_sample=16)


def binomial_tail(trials: int, rate: float, at_least: int) -> float:
    """P(Binomial(trials, rate) >= at_least), each term from log-gamma in float64."""
    def log_term(k: int) -> float:
        return (math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                + k * math.log(rate) + (trials - k) * math.log1p(-rate))

    return min(1.0, math.fsum(math.exp(log_term(k)) for k in range(max(at_least, 0), trials + 1)))


@dataclass(frozen=True)
class Problem:
    """One batch of decode problems and the selection its family is hard for."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    page_table: torch.Tensor
    seq_lens: torch.Tensor
    selection: str


def _base(gen: torch.Generator, shortest: int = 400, longest: int = 800) -> va.DecodeInputs:
    lens = torch.randint(shortest, longest, (4,), generator=gen).tolist()
    return va.random_paged_inputs(lens, HEADS, KV_HEADS, DIM, PAGE, torch.float32, "cpu", gen)


def _plant(x: va.DecodeInputs, q: torch.Tensor, keys: torch.Tensor, gen: torch.Generator,
           lifts: Callable[[int], torch.Tensor]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Raise the logits of random middle keys of every (sequence, KV head) by ``lifts(extra)``
    (one per key, ``64 + extra`` of them, extra in 2..10): more heavy keys than top_k = 64 holds.
    Returns each group's (KV head, pages, slots) of those keys, in ``lifts`` order."""
    planted = []
    for b, length in enumerate(x.seq_lens.tolist()):
        for h in range(KV_HEADS):
            extra = int(torch.randint(2, 11, (1,), generator=gen))
            pos = 16 + torch.randperm(length - 48, generator=gen)[: 64 + extra]
            pages, slots = x.page_table[b, pos // PAGE].long(), pos % PAGE
            toward = q[b, 2 * h : 2 * h + 2].mean(0)  # both query heads of the group see them high
            keys[pages, slots, h] += lifts(extra).unsqueeze(-1) * math.sqrt(DIM) * toward / toward.norm() ** 2
            planted.append((h, pages, slots))
    return planted


def heavy_beyond_top_k(gen: torch.Generator) -> Problem:
    """Exact top-k, flat light keys, and 2..10 more keys 6 nats up than top-k holds, each with
    its own value: the rest hides a few keys that carry a large share of the mass."""
    x = _base(gen)
    q, keys, values = x.q * 0.5, x.k_cache.clone(), x.v_cache + torch.randn(DIM, generator=gen)
    for h, pages, slots in _plant(x, q, keys, gen, lambda extra: torch.full((64 + extra,), 6.0)):
        values[pages, slots, h] = 3 * torch.randn(len(pages), DIM, generator=gen)
    return Problem(q, keys.contiguous(), values.contiguous(), x.page_table, x.seq_lens, "exact")


def values_cancel(gen: torch.Generator) -> Problem:
    """Exact top-k holds 64 heavy keys with value u; 2..10 keys one nat below them, left in the
    rest, carry -kappa u that cancels 90% of the numerator: the output is small next to its terms."""
    x = _base(gen)
    q, keys, values = x.q * 0.25, x.k_cache.clone(), x.v_cache + torch.randn(DIM, generator=gen)
    u = torch.randn(DIM, generator=gen)

    def lifts(extra: int) -> torch.Tensor:
        return torch.cat([torch.full((64,), 6.0), torch.full((extra,), 5.0)])

    for h, pages, slots in _plant(x, q, keys, gen, lifts):
        kappa = 0.9 * 64 * math.e / (len(pages) - 64)
        values[pages[:64], slots[:64], h] = u
        values[pages[64:], slots[64:], h] = -kappa * u
    return Problem(q, keys.contiguous(), values.contiguous(), x.page_table, x.seq_lens, "exact")


def peaked_isotropic(gen: torch.Generator) -> Problem:
    """Page selection on isotropic keys (page bounds say little) with very peaked heads (logit
    standard deviation 8): the top pages miss heavy keys that the rest then hides."""
    x = _base(gen)
    values = x.v_cache + torch.randn(DIM, generator=gen)
    return Problem(x.q * 8, x.k_cache, values.contiguous(), x.page_table, x.seq_lens, "pages")


def flat_long(gen: torch.Generator) -> Problem:
    """Not adversarial: nearly flat heads (logit standard deviation 0 to 0.3) over 3,000 to 5,000
    keys with exact top-k, where the Bernstein budget samples; its sampled path under the test."""
    x = _base(gen, 3000, 5000)
    q = x.q * torch.rand(1, HEADS, 1, generator=gen) * 0.3
    values = x.v_cache + torch.randn(DIM, generator=gen)
    return Problem(q, x.k_cache, values.contiguous(), x.page_table, x.seq_lens, "exact")


# Draws of 32 heads each: 256 heads, so a budget with more than 16% of heads beyond epsilon
# fails the check. The CLT fails the three adversarial families on 35% to 75% of heads (about
# 90 of 256 at the least, 5 standard deviations above the threshold of 42).
FAMILIES = {"heavy_beyond_top_k": (heavy_beyond_top_k, 8), "values_cancel": (values_cancel, 8),
            "peaked_isotropic": (peaked_isotropic, 8), "flat_long": (flat_long, 4)}
ADVERSARIAL = ["heavy_beyond_top_k", "values_cancel", "peaked_isotropic"]


TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


def gaussian_long(gen: torch.Generator, context: int = 32768, dim: int = 64, structured: bool = False,
                  temperatures: tuple[float, ...] = TEMPERATURES) -> va.DecodeInputs:
    """Natural heads at long context: one sequence, a query head per temperature (the logits'
    standard deviation) over half as many KV heads (pairs of similar heads share one), values
    sharing a mean direction; keys isotropic, or clustered by page with ``structured``."""
    heads = len(temperatures)
    x = va.random_paged_inputs([context], heads, heads // 2, dim, 64, torch.float32, "cpu", gen,
                               structured=structured)
    q = x.q * torch.tensor(temperatures).view(1, heads, 1)
    values = x.v_cache if structured else x.v_cache + torch.randn(dim, generator=gen)
    return va.DecodeInputs(q, x.k_cache, values.contiguous(), x.page_table, x.seq_lens)
