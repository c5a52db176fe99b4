"""vAttention's distribution-free (epsilon, delta) guarantee (the Bernstein budget).

Adversarial families where the paper's CLT budget breaks are run through both budgets on the
float64 reference path (which tests/kernels/test_vattention.py shows the Triton path equals):
the share of heads beyond epsilon must pass an exact binomial test against delta under the
Bernstein budget (with the selection each family is hard for, and with the key sketch), and fail
it under the CLT budget (so the check has power). The sketch's score intervals must contain the
scores the budget computes from the real keys, for every cache dtype and on keys built to break
them. The last tests show that the guarantee is not bought by computing everything: on Gaussian
and page-clustered heads at 32K context the default (sketch selection, Bernstein budget) reads a
small share of the keys.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

torch = pytest.importorskip("torch")

from gpuos.kernels import vattention as va  # noqa: E402
from gpuos.kernels.reference import vattention as ref  # noqa: E402
from gpuos.kernels.reference.vattention_inputs import (  # noqa: E402
    ADVERSARIAL,
    DELTA,
    EPSILON,
    FAMILIES,
    FAMILY_CONFIG,
    LEVEL,
    binomial_tail,
    gaussian_long,
)


@pytest.fixture
def gen() -> torch.Generator:
    seed = torch.seed()
    print(f"seed={seed}")  # shown by pytest when a test fails
    return torch.Generator().manual_seed(seed)


def test_binomial_tail_matches_closed_forms() -> None:
    assert binomial_tail(10, 0.5, 10) == pytest.approx(1 / 1024, rel=1e-12)
    assert binomial_tail(10, 0.5, 0) == pytest.approx(1.0, rel=1e-12)
    assert binomial_tail(4, 0.1, 2) == pytest.approx(1 - 0.9**4 - 4 * 0.1 * 0.9**3, rel=1e-12)
    # The rejection thresholds the tests below use: 25 of 128 heads, 42 of 256.
    assert binomial_tail(128, DELTA, 25) < LEVEL < binomial_tail(128, DELTA, 24)
    assert binomial_tail(256, DELTA, 42) < LEVEL < binomial_tail(256, DELTA, 41)


# ----------------------------------------------------------------------------- the bounds alone


def test_each_bound_covers_a_rare_heavy_draw(gen: torch.Generator) -> None:
    # Terms that are 0 except, with probability 3%, at the top of their range: a sample of 32
    # often sees none, so a bound without its range term would miss about 38% of the time.
    trials, n, p, miss = 20_000, 32, 0.03, 0.1
    heavy = torch.rand(trials, n, generator=gen, dtype=torch.float64) < p
    y = heavy.double()  # range [0, 1]
    log_term = torch.tensor(math.log(4 / miss), dtype=torch.float64)
    x = torch.tensor(math.log(1 / miss), dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)

    radius = va.mean_radius(y.var(-1), one, n, log_term)
    assert binomial_tail(trials, miss, int(((y.mean(-1) - p).abs() > radius).sum())) >= LEVEL

    upper = va.second_moment_bound(y.mean(-1), one, n, x)
    assert binomial_tail(trials, miss, int((upper < p).sum())) >= LEVEL

    # Vectors: the heavy draws point along one of 8 random axes, with |X| = 1.
    axis = torch.nn.functional.one_hot(torch.randint(0, 8, (trials, n), generator=gen), 8).double()
    vectors = axis * y.unsqueeze(-1)
    mean = torch.full((8,), p / 8, dtype=torch.float64)
    r = va.vector_mean_radius(torch.tensor(p, dtype=torch.float64), torch.tensor(p / 8, dtype=torch.float64),
                              one, n, x)
    assert binomial_tail(trials, miss, int(((vectors.mean(1) - mean).norm(dim=-1) > r).sum())) >= LEVEL


def test_error_bound_needs_a_positive_denominator() -> None:
    one = torch.tensor([1.0, 1.0], dtype=torch.float64)
    bound = va.output_error_bound(0.1 * one, torch.tensor([0.5, 2.0], dtype=torch.float64), one, 2 * one)
    assert bound[0] == pytest.approx((0.1 + 0.5) / 1.5) and bound[1] == math.inf


def test_certificate_sizes_are_a_fixed_grid() -> None:
    sizes = va.certificate_sizes(16, 300)
    assert sizes[0] == 16 and sizes[-1] < 300 <= math.ceil(sizes[-1] * va.GROWTH) + 1
    assert all(b > a for a, b in zip(sizes, sizes[1:], strict=False))
    assert va.certificate_sizes(16, 16) == []


# ----------------------------------------------------------------------------- the key sketch


def _spoil_keys(keys: torch.Tensor, how: str, gen: torch.Generator) -> torch.Tensor:
    """Keys built to break a careless quantiser's error bound."""
    if how == "outlier_channel":  # one dimension 1,000 times the others, as real models' keys have
        keys = keys.clone()
        keys[..., 0] *= 1000
    elif how == "huge":  # near fp16's largest finite value
        keys = keys.clamp(-6, 6) * 1e4
    elif how == "constant_pages":  # flat ranges: step 0
        keys = keys[:, :1].expand_as(keys).clone()
    elif how == "on_the_grid_edges":  # every value at its page's minimum or maximum
        keys = torch.where(torch.rand(keys.shape, generator=gen) < 0.5, -1.5, 2.5) + 0 * keys
    elif how == "tiny":  # subnormal in fp32; zero in fp16
        keys = keys * 1e-40
    return keys


SPOILS = ("random", "outlier_channel", "huge", "constant_pages", "on_the_grid_edges", "tiny")


@pytest.mark.parametrize("bits", va.SKETCH_BITS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sketch_intervals_contain_the_scores_the_budget_computes(gen: torch.Generator, dtype: torch.dtype,
                                                                 bits: int) -> None:
    dim = 24 if bits == 8 else 13  # odd: the last byte of a 4-bit row holds one code
    widths = []
    for how in SPOILS:
        x = va.random_paged_inputs([37, 300], 4, 2, dim, 16, torch.float32, "cpu", gen)
        keys = _spoil_keys(x.k_cache, how, gen).to(dtype)
        # Slots past a sequence's end hold garbage the sketch must not read.
        for b, length in enumerate(x.seq_lens.tolist()):
            page = int(x.page_table[b, length // 16])
            keys[page, length % 16 :] = math.nan
        q = (x.q * 5).to(dtype)
        sketch = va.key_sketch(keys, x.page_table, x.seq_lens, bits)
        lower, upper = va.sketch_score_bounds(q, sketch, int(x.seq_lens.max()))
        for b, length in enumerate(x.seq_lens.tolist()):
            pos = torch.arange(length)
            k = keys[x.page_table[b, pos // 16].long(), pos % 16].double().repeat_interleave(2, 1)  # [n, Hq, D]
            s = torch.einsum("hd,nhd->hn", q[b].double(), k) * dim**-0.5
            assert (lower[b, :, :length] <= s).all() and (s <= upper[b, :, :length]).all(), how
        if how == "random":
            spread = (upper + lower)[..., :37].std() / 2
            widths.append(float(((upper - lower)[..., :37] / 2).median() / spread))
    # Not vacuous: the half-width is a small share of the scores' spread (1/255 or 1/15 of each
    # page's range per dimension).
    assert widths[0] < (0.05 if bits == 8 else 0.6), widths


def test_sketch_refuses_what_does_not_fit(gen: torch.Generator) -> None:
    x = va.random_paged_inputs([40], 2, 1, 8, 16, torch.float32, "cpu", gen)
    with pytest.raises(ValueError, match="bits"):
        va.key_sketch(x.k_cache, x.page_table, x.seq_lens, bits=2)
    sketch = va.key_sketch(x.k_cache, x.page_table, x.seq_lens)
    stale = dataclasses.replace(sketch, codes=sketch.codes[:, :1])
    with pytest.raises(ValueError, match="sketch must hold codes"):
        va.vattention_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, sketch=stale, backend="reference")
    with pytest.raises(ValueError, match="selection"):
        va.VAttentionConfig(selection="quest")


# ----------------------------------------------------------------------------- adversarial families


def beyond_epsilon(family: str, budget: str, gen: torch.Generator,
                   selection: str | None = None) -> tuple[int, int, float]:
    """Over fresh draws of ``family``: heads beyond epsilon, heads, and the share sampled (with
    the family's own selection unless ``selection`` is given)."""
    make, draws = FAMILIES[family]
    failures, heads, sampled = 0, 0, 0
    for _ in range(draws):
        p = make(gen)
        cfg = dataclasses.replace(FAMILY_CONFIG, selection=selection or p.selection, budget=budget)
        result = va.vattention_decode(p.q, p.k_cache, p.v_cache, p.page_table, p.seq_lens, cfg, generator=gen,
                                      backend="reference")
        dense = ref.dense_decode(p.q, p.k_cache, p.v_cache, p.page_table, p.seq_lens)
        error = (result.out - dense).norm(dim=-1) / dense.norm(dim=-1)
        failures += int((error > EPSILON).sum())
        heads += error.numel()
        sampled += int((~result.exact).sum())
    return failures, heads, sampled / heads


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bernstein_budget_holds_on_adversarial_heads(gen: torch.Generator, family: str) -> None:
    failures, heads, sampled = beyond_epsilon(family, "bernstein", gen)
    print(f"{family}: {failures} of {heads} heads beyond epsilon, {sampled:.0%} sampled")
    assert binomial_tail(heads, DELTA, failures) >= LEVEL, f"{failures} of {heads} heads beyond epsilon"
    if family == "flat_long":
        assert sampled > 0.75, "the sampled path went untested"


@pytest.mark.parametrize("family", ADVERSARIAL)
def test_bernstein_budget_holds_on_adversarial_heads_under_sketch_selection(gen: torch.Generator,
                                                                            family: str) -> None:
    failures, heads, sampled = beyond_epsilon(family, "bernstein", gen, "sketch")
    print(f"{family}, sketch: {failures} of {heads} heads beyond epsilon, {sampled:.0%} sampled")
    assert binomial_tail(heads, DELTA, failures) >= LEVEL, f"{failures} of {heads} heads beyond epsilon"


@pytest.mark.parametrize("family", ADVERSARIAL)
def test_clt_budget_fails_the_same_check(gen: torch.Generator, family: str) -> None:
    failures, heads, _ = beyond_epsilon(family, "clt", gen)
    assert binomial_tail(heads, DELTA, failures) < LEVEL, f"only {failures} of {heads} heads beyond epsilon"


# ----------------------------------------------------------------------------- not vacuous


def test_guarantee_is_not_vacuous_on_gaussian_heads_at_long_context(gen: torch.Generator) -> None:
    # 32K tokens, dim 64, exact top-k of 2048: the Bernstein budget samples every head and reads
    # a small share of the keys (measured 0.15 to 0.17; the CLT budget: bench/vattention_guarantee.py).
    x = gaussian_long(gen)
    cfg = va.VAttentionConfig(epsilon=EPSILON, delta=DELTA, selection="exact")
    result = va.vattention_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, cfg, generator=gen,
                                  backend="reference")
    print(f"density {[round(d, 3) for d in result.density.flatten().tolist()]}")
    assert not result.exact.any()
    assert float(result.density.mean()) < 0.25
    dense = ref.dense_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens)
    failures = int(((result.out - dense).norm(dim=-1) / dense.norm(dim=-1) > EPSILON).sum())
    assert binomial_tail(8, DELTA, failures) >= LEVEL


@pytest.mark.parametrize("dim,structured", [(64, False), (128, True)], ids=["gaussian-dim64", "clustered-dim128"])
def test_default_guarantee_is_not_vacuous_at_long_context(gen: torch.Generator, dim: int, structured: bool) -> None:
    # The defaults (sketch selection, Bernstein budget, epsilon = delta = 0.05, top-k 2,048) at
    # 32K tokens: every head samples (page selection computed every clustered dim-128 head's
    # rest exactly). Measured mean density 0.24 to 0.29 (bench/vattention_guarantee.py).
    x = gaussian_long(gen, dim=dim, structured=structured, temperatures=(0.5, 1.0, 2.0, 3.0, 4.0, 6.0))
    result = va.vattention_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, generator=gen,
                                  backend="reference")
    print(f"density {[round(d, 3) for d in result.density.flatten().tolist()]}")
    assert not result.exact.any()
    assert float(result.density.mean()) < 0.4
    # Sketch codes (1 byte of the 8 a token's fp32 K and V take), page ranges, value bounds and rows.
    assert (result.read_fraction > result.density + 1 / 8).all() and float(result.read_fraction.mean()) < 0.5
    dense = ref.dense_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens)
    failures = int(((result.out - dense).norm(dim=-1) / dense.norm(dim=-1) > 0.05).sum())
    assert binomial_tail(6, 0.05, failures) >= LEVEL
