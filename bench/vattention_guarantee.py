"""vAttention's (epsilon, delta) promise per input family: the distribution-free Bernstein budget
against the paper's CLT budget, on the CPU (float64 reference path, no Triton kernel runs).

    python bench/vattention_guarantee.py [--draws 32] [--seed 0] [--quick]

For each family, selection and budget: heads decoded, the share whose relative output error
(Euclidean norm) exceeds epsilon, the exact binomial tail P(Binomial(heads, delta) >= that
count) (below 1e-3: the promise is broken), the share of heads sampled rather than computed
exactly, the mean density (share of the sequence's keys attended) and the mean share of a dense
decode's K and V bytes the call reads (``VAttentionResult.read_fraction``: the selection's
input, value bounds or base sample, and the rows of the deterministic set and the sample).
Families:

- the adversarial ones of tests/kernels/test_vattention_guarantee.py (epsilon = delta = 0.1,
  dim 16, 400..800 tokens, fp32 caches): heavy keys beyond top-k and values that cancel (exact
  top-k), peaked isotropic heads (page selection), each also under sketch selection; and its
  flat_long family (3,000..5,000 tokens);
- natural heads at long context (``gaussian_long``: logit standard deviations 0.5..6, values
  sharing a mean direction, fp16 caches), dim 64 and 128, top-k of 2,048 by exact scores and by
  the int8 key sketch (the default), at epsilon = delta = 0.1 and at the defaults 0.05;
- keys clustered by page, dim 128, 32K tokens, fp16, top 5% of them by page bounds or by the
  sketch (the kernel benchmark's inputs), where the range of the rest's scores decides what the
  Bernstein budget can certify.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gpuos.kernels import vattention as va  # noqa: E402
from gpuos.kernels.reference import vattention as ref  # noqa: E402
from gpuos.kernels.reference.vattention_inputs import (  # noqa: E402
    FAMILIES,
    FAMILY_CONFIG,
    binomial_tail,
    gaussian_long,
)


@dataclass(frozen=True)
class Row:
    family: str
    selection: str
    budget: str
    epsilon: float
    heads: int
    beyond: int
    sampled: float
    density: float
    read: float
    seconds: float

    def line(self) -> str:
        tail = binomial_tail(self.heads, self.epsilon, self.beyond)  # the families use delta = epsilon
        share = self.beyond / self.heads
        cells = (self.family, self.selection, self.budget, str(self.heads), f"{share:.1%}", f"{tail:.1e}",
                 f"{self.sampled:.0%}", f"{self.density:.3f}", f"{self.read:.3f}", f"{self.seconds:.1f}")
        return "| " + " | ".join(cells) + " |"


Case = Callable[[torch.Generator], tuple[va.DecodeInputs, str]]


def run(family: str, make: Case, base: va.VAttentionConfig, budget: str, epsilon: float, draws: int,
        gen: torch.Generator, selection: str | None) -> Row:
    beyond = heads = 0
    sampled = density = read = 0.0
    began = time.perf_counter()
    chosen = ""
    for _ in range(draws):
        x, own = make(gen)
        chosen = selection or own
        cfg = dataclasses.replace(base, epsilon=epsilon, delta=epsilon, selection=chosen, budget=budget)
        result = va.vattention_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, cfg, generator=gen,
                                      backend="reference")
        dense = ref.dense_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens)
        error = (result.out - dense).norm(dim=-1) / dense.norm(dim=-1)
        beyond += int((error > epsilon).sum())
        heads += error.numel()
        sampled += float((~result.exact).double().sum())
        density += float(result.density.double().sum())
        read += float(result.read_fraction.double().sum())
    seconds = time.perf_counter() - began
    return Row(family, chosen, budget, epsilon, heads, beyond, sampled / heads, density / heads, read / heads,
               seconds)


def adversarial(name: str) -> Case:
    make = FAMILIES[name][0]

    def case(gen: torch.Generator) -> tuple[va.DecodeInputs, str]:
        p = make(gen)
        return va.DecodeInputs(p.q, p.k_cache, p.v_cache, p.page_table, p.seq_lens), p.selection

    return case


def natural(context: int, dim: int, selection: str, structured: bool,
            temperatures: tuple[float, ...] | None = None) -> Case:
    def case(gen: torch.Generator) -> tuple[va.DecodeInputs, str]:
        kw = {} if temperatures is None else {"temperatures": temperatures}
        x = gaussian_long(gen, context, dim, structured, **kw)
        half = va.DecodeInputs(x.q.half(), x.k_cache.half(), x.v_cache.half(), x.page_table, x.seq_lens)
        return half, selection

    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=32, help="draws per adversarial family (32 heads each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a quarter of the draws, no dim-128 rows")
    args = parser.parse_args()
    draws = max(1, args.draws // 4) if args.quick else args.draws
    gen = torch.Generator().manual_seed(args.seed)
    # (family, inputs, config, epsilon = delta, draws, selection: None for the family's own)
    cases: list[tuple[str, Case, va.VAttentionConfig, float, int, str | None]] = []
    for name in FAMILIES:
        n = draws if name != "flat_long" else max(1, draws // 2)
        cases.append((name, adversarial(name), FAMILY_CONFIG, 0.1, n, None))
        if name != "flat_long":
            cases.append((name, adversarial(name), FAMILY_CONFIG, 0.1, n, "sketch"))
    long_draws = max(1, draws // 4)
    for dim in (64,) if args.quick else (64, 128):
        for eps in (0.1, 0.05):
            for selection in ("exact", "sketch"):
                cases.append((f"gaussian 32K dim {dim}", natural(32768, dim, selection, False),
                              va.VAttentionConfig(), eps, long_draws, None))
    for temps, label in (((0.25, 0.5, 0.75, 1.0), "sd 0.25..1"), ((2.0, 3.0, 4.0, 6.0), "sd 2..6")):
        for selection in ("pages", "sketch"):
            cases.append((f"clustered 32K dim 128, {label}", natural(32768, 128, selection, True, temps),
                          va.VAttentionConfig(top_k=32768 // 20), 0.05, long_draws, None))
    print(f"vAttention guarantee, CPU float64 reference path, seed {args.seed}, torch {torch.__version__}")
    print()
    header = ("family", "selection", "budget", "heads", "beyond epsilon", "P(Bin(heads, delta) >= count)",
              "sampled", "density", "KV bytes read", "s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for family, make, base, eps, n, selection in cases:
        for budget in ("bernstein", "clt"):
            row = run(f"{family}, eps=delta={eps}", make, base, budget, eps, n, gen, selection)
            print(row.line(), flush=True)


if __name__ == "__main__":
    main()
