"""vAttention decoding: the Triton kernels against a float64 reference, the plan's structure, and
the paper's CLT budget checked statistically on benign families (the distribution-free Bernstein
budget's guarantee, on adversarial ones: test_vattention_guarantee.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from gpuos.errors import InvalidArgument  # noqa: E402
from gpuos.kernels import vattention as va  # noqa: E402
from gpuos.kernels.context import KernelContext  # noqa: E402
from gpuos.kernels.reference import vattention as ref  # noqa: E402
from gpuos.kernels.registry import get_kernel  # noqa: E402

# Tolerance on |triton - reference| / max|reference| per dtype: fp32 accumulation throughout, so
# what is left is the output's rounding to its dtype.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SMALL = va.VAttentionConfig(epsilon=0.1, delta=0.1, sink=8, local=16, top_k=64, base_sample=16)
# A loose target and the CLT budget, so that heads of a few hundred keys sample rather than compute
# the rest exactly (the plumbing under test is the same for both budgets).
LOOSE = va.VAttentionConfig(epsilon=0.5, delta=0.4, sink=8, local=16, top_k=64, base_sample=16, budget="clt")


@pytest.fixture
def gen() -> torch.Generator:
    seed = torch.seed()
    print(f"seed={seed}")  # shown by pytest when a test fails
    return torch.Generator().manual_seed(seed)


def inputs(gen: torch.Generator, lens: list[int], heads: int = 4, kv_heads: int = 2, dim: int = 32,
           dtype: torch.dtype = torch.float32, value_mean: float = 1.0) -> va.DecodeInputs:
    """Random paged inputs; values share a mean direction, as real ones do, so outputs do not cancel."""
    x = va.random_paged_inputs(lens, heads, kv_heads, dim, 16, torch.float32, "cpu", gen)
    values = x.v_cache + value_mean * torch.randn(dim, generator=gen)
    return va.DecodeInputs(x.q.to(dtype), x.k_cache.to(dtype), values.to(dtype), x.page_table, x.seq_lens)


def decode(x: va.DecodeInputs, cfg: va.VAttentionConfig, gen: torch.Generator | None = None,
           **kw: object) -> va.VAttentionResult:
    return va.vattention_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, cfg, generator=gen, **kw)  # type: ignore[arg-type]


def relative_gap(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


def poisoned_like(q: torch.Tensor) -> torch.Tensor:
    return torch.full_like(q, math.nan)


# ----------------------------------------------------------------------------- kernel vs reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_index_attention_kernel_matches_float64_reference(
    gen: torch.Generator, dtype: torch.dtype, num_splits: int
) -> None:
    # Ragged lengths off the page size, GQA (3 query heads per KV head), empty lists in places,
    # log weights; the lists are per KV head, shared by its query heads.
    x = inputs(gen, [1, 37, 300, 517], heads=6, kv_heads=2, dtype=dtype)
    lists = []
    for width in (40, 200):
        count = torch.minimum(torch.randint(0, width + 1, (4, 2), generator=gen), x.seq_lens.view(4, 1).long())
        idx = (torch.rand(4, 2, width, generator=gen) * x.seq_lens.view(4, 1, 1)).long()
        lists.append((idx, count, torch.rand(4, 2, generator=gen) * 3))
    lists[0][1][:, 0] = 1  # every head attends to at least one key
    out = va.index_attention(x.q, x.k_cache, x.v_cache, x.page_table, lists, out=poisoned_like(x.q),
                             num_splits=num_splits)
    want = ref.index_attention(x.q, x.k_cache, x.v_cache, x.page_table, va.per_query_head(lists, 3), 32**-0.5)
    assert not out.isnan().any()
    assert relative_gap(out, want) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_output_is_the_estimator_of_its_plan(gen: torch.Generator, dtype: torch.dtype) -> None:
    x = inputs(gen, [1, 150, 700, 1000], dtype=dtype, value_mean=2.0)
    result = decode(x, LOOSE, gen, out=poisoned_like(x.q))
    want = ref.index_attention(x.q, x.k_cache, x.v_cache, x.page_table, result.plan.lists(), 32**-0.5)
    assert not result.out.isnan().any()
    assert relative_gap(result.out, want) < TOLERANCE[dtype]
    assert (~result.exact).any(), "no head sampled: the weighted path went untested"


@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 4, 8), (20, 1, 24)])
def test_decode_handles_odd_head_dims_and_large_groups(gen: torch.Generator, heads: int, kv_heads: int,
                                                        dim: int) -> None:
    x = inputs(gen, [5, 300], heads=heads, kv_heads=kv_heads, dim=dim)
    result = decode(x, LOOSE, gen, out=poisoned_like(x.q))
    want = ref.index_attention(x.q, x.k_cache, x.v_cache, x.page_table, result.plan.lists(), dim**-0.5)
    assert not result.out.isnan().any()
    assert relative_gap(result.out, want) < TOLERANCE[torch.float32]


def test_all_keys_in_top_k_is_dense_attention(gen: torch.Generator) -> None:
    x = inputs(gen, [33, 250, 400])
    cfg = va.VAttentionConfig(sink=4, local=4, top_k=512)
    result = decode(x, cfg, gen, out=poisoned_like(x.q))
    assert (result.n_rest == 0).all() and result.exact.all()
    assert torch.equal(result.density, torch.ones_like(result.density))
    dense = ref.dense_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens)
    assert relative_gap(result.out, dense) < TOLERANCE[torch.float32]


def test_single_token_sequence_returns_its_value(gen: torch.Generator) -> None:
    x = inputs(gen, [1, 1], heads=4, kv_heads=1)
    result = decode(x, SMALL, gen, out=poisoned_like(x.q))
    first = x.v_cache[x.page_table[:, 0].long(), 0, 0]  # [B, D]
    torch.testing.assert_close(result.out, first.unsqueeze(1).expand_as(result.out))
    assert (result.sample_size == 0).all() and (result.density == 1).all()


def test_sample_and_deterministic_set_partition_the_sequence(gen: torch.Generator) -> None:
    x = inputs(gen, [90, 333, 500])
    cfg = va.VAttentionConfig(epsilon=0.001, delta=0.4, sink=8, local=16, top_k=64)  # budget reaches n_rest
    result = decode(x, cfg, gen)
    (det, det_count, _), (drawn, drawn_count, _) = result.plan.lists()
    assert result.exact.all()
    for b, length in enumerate(x.seq_lens.tolist()):
        for h in range(x.q.shape[1]):
            seen = torch.cat([det[b, h, : det_count[b, h]], drawn[b, h, : drawn_count[b, h]]])
            assert torch.equal(seen.sort().values, torch.arange(length)), (b, h)


def test_sampled_positions_avoid_the_deterministic_set(gen: torch.Generator) -> None:
    x = inputs(gen, [700, 1000], value_mean=3.0)
    result = decode(x, LOOSE, gen)
    (det_idx, det_count, _), (sample_idx, sample_count, log_weight) = result.plan.lists()
    sampled = (~result.exact).nonzero().tolist()
    assert sampled, "no head sampled"
    for b, h in sampled:
        det = set(det_idx[b, h, : det_count[b, h]].tolist())
        drawn = sample_idx[b, h, : sample_count[b, h]].tolist()
        assert len(drawn) == result.sample_size[b, h]
        assert not det.intersection(drawn) and 0 <= min(drawn) and max(drawn) < int(x.seq_lens[b])
        assert log_weight[b, h] == pytest.approx(math.log(int(result.n_rest[b, h]) / len(drawn)), rel=1e-6)


def test_page_bounds_select_the_page_of_a_dominant_key(gen: torch.Generator) -> None:
    x = inputs(gen, [600, 600], heads=2, kv_heads=1)
    where = [int(torch.randint(40, 560, (1,), generator=gen)) for _ in range(2)]
    for b, pos in enumerate(where):
        page = int(x.page_table[b, pos // 16])
        # Far above what any other page's min/max bound can reach (|k| entries stay below ~5).
        x.k_cache[page, pos % 16, 0] = 30 * x.q[b, 0] / x.q[b, 0].abs().max()
    cfg = va.VAttentionConfig(sink=8, local=16, top_k=16, selection="pages")
    (det_idx, det_count, _), _ = decode(x, cfg, gen).plan.lists()
    for b, pos in enumerate(where):
        assert pos in det_idx[b, 0, : det_count[b, 0]].tolist()


def test_each_query_head_of_a_group_keeps_its_best_page(gen: torch.Generator) -> None:
    # Head 1's keys outscore head 0's everywhere; with two pages to pick, head 0 still gets its own.
    x = inputs(gen, [640], heads=2, kv_heads=1)
    x.k_cache.mul_(0.1)
    x.q.zero_()
    x.q[0, 0, 0], x.q[0, 1, 1] = 10.0, 10.0
    pages = torch.randperm(40, generator=gen)[:6].tolist()
    for logical in pages[:5]:
        x.k_cache[int(x.page_table[0, logical]), 3, 0, 1] = 20.0
    x.k_cache[int(x.page_table[0, pages[5]]), 7, 0, 0] = 5.0
    cfg = va.VAttentionConfig(sink=0, local=0, top_k=32, selection="pages")
    (det_idx, det_count, _), _ = decode(x, cfg, gen).plan.lists()
    chosen = {p // 16 for p in det_idx[0, 0, : det_count[0, 0]].tolist()}
    assert pages[5] in chosen and len(chosen & set(pages[:5])) == 1


def test_heads_of_different_sparsity_get_different_samples(gen: torch.Generator) -> None:
    x = inputs(gen, [1000, 1000], heads=4, kv_heads=4, value_mean=2.0)
    peaked = va.DecodeInputs(x.q * torch.tensor([0.0, 1.0, 3.0, 8.0]).view(1, 4, 1), x.k_cache, x.v_cache,
                             x.page_table, x.seq_lens)
    cfg = va.VAttentionConfig(epsilon=0.1, delta=0.1, sink=8, local=16, top_k=64, selection="exact",
                              budget="clt")
    result = decode(peaked, cfg, gen, out=poisoned_like(x.q))
    assert result.density.unique().numel() > 2
    want = ref.index_attention(peaked.q, x.k_cache, x.v_cache, x.page_table, result.plan.lists(), 32**-0.5)
    assert relative_gap(result.out, want) < TOLERANCE[torch.float32]


def test_bernstein_plan_runs_through_the_kernel(gen: torch.Generator) -> None:
    # Flat heads and exact top-k: the distribution-free budget samples; the Triton output is the
    # float64 estimator of that plan.
    x = inputs(gen, [1500, 2500], value_mean=2.0)
    flat = va.DecodeInputs(x.q * 0.1, x.k_cache, x.v_cache, x.page_table, x.seq_lens)
    cfg = va.VAttentionConfig(epsilon=0.3, delta=0.3, sink=8, local=16, top_k=64, selection="exact")
    result = decode(flat, cfg, gen, out=poisoned_like(x.q))
    assert (~result.exact).all() and (result.sample_size < result.n_rest).all()
    want = ref.index_attention(flat.q, x.k_cache, x.v_cache, x.page_table, result.plan.lists(), 32**-0.5)
    assert relative_gap(result.out, want) < TOLERANCE[torch.float32]


def test_page_value_bounds_hold_every_value(gen: torch.Generator) -> None:
    x = inputs(gen, [37, 300], value_mean=3.0)
    center, radius = va.page_value_bounds(x.v_cache, x.page_table, x.seq_lens)
    assert center.shape == (2, x.page_table.shape[1], 2, 32) and radius.shape == (2, x.page_table.shape[1], 2)
    for b, length in enumerate(x.seq_lens.tolist()):
        pos = torch.arange(length)
        values = x.v_cache[x.page_table[b, pos // 16].long(), pos % 16].double()  # [n, Hkv, D]
        dist = (values - center[b, pos // 16].double()).norm(dim=-1)
        assert (dist <= radius[b, pos // 16].double()).all()
        assert (dist.view(-1) >= radius[b, pos // 16].double().view(-1) * 0.999).any(), "radius not tight"


def test_exact_selection_ignores_page_bounds(gen: torch.Generator) -> None:
    x = inputs(gen, [400])
    cfg = va.VAttentionConfig(sink=8, local=16, top_k=32, selection="exact")
    bounds = va.page_key_bounds(x.k_cache, x.page_table, x.seq_lens)
    with_bounds = decode(x, cfg, torch.Generator().manual_seed(1), bounds=bounds)
    without = decode(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(with_bounds.plan.det_idx, without.plan.det_idx)


def test_config_refuses_bad_budgets() -> None:
    with pytest.raises(ValueError, match="budget"):
        va.VAttentionConfig(budget="hoeffding")
    with pytest.raises(ValueError, match="delta"):
        va.VAttentionConfig(budget="clt", delta=0.5)
    assert va.VAttentionConfig(delta=0.5).budget == "bernstein"  # no Gaussian premise to cap delta
    with pytest.raises(ValueError, match="base_sample"):
        va.VAttentionConfig(base_sample=1)


def test_bad_shapes_are_refused(gen: torch.Generator) -> None:
    x = inputs(gen, [20])
    with pytest.raises(ValueError, match="query heads"):
        va.vattention_decode(x.q[:, :3], x.k_cache, x.v_cache, x.page_table, x.seq_lens)
    with pytest.raises(ValueError, match="share"):
        va.vattention_decode(x.q.half(), x.k_cache, x.v_cache, x.page_table, x.seq_lens)
    with pytest.raises(ValueError, match="tokens"):
        va.vattention_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens * 0)
    box = va.page_key_bounds(x.v_cache, x.page_table, x.seq_lens)  # min/max, not center/radius
    with pytest.raises(ValueError, match="value_bounds"):
        va.vattention_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, value_bounds=box)


# ----------------------------------------------------------------------------- the CLT budget on benign families

EPSILON, DELTA = 0.1, 0.1
# Logit standard deviation per head, from flat to very peaked.
TEMPERATURES = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])


def most_failures_allowed(trials: int, delta: float, alpha: float = 1e-6) -> int:
    """Largest failure count that a true rate of ``delta`` produces with probability >= ``alpha``:
    a correct method fails this check with probability below ``alpha``."""
    tail = 0.0
    for k in range(trials, -1, -1):
        log_p = math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
        tail += math.exp(log_p + k * math.log(delta) + (trials - k) * math.log1p(-delta))
        if tail >= alpha:
            return k
    return trials


def relative_errors(cfg: va.VAttentionConfig, gen: torch.Generator, draws: int, case: str) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """Relative output errors and whether each head sampled, over fresh random decode problems."""
    errors, sampled = [], []
    for _ in range(draws):
        lens = torch.randint(300, 900, (8,), generator=gen).tolist()
        x = va.random_paged_inputs(lens, 8, 4, 16, 16, torch.float32, "cpu", gen, structured=case == "clustered")
        keys, values, q = x.k_cache, x.v_cache + torch.randn(16, generator=gen), x.q * TEMPERATURES.view(1, 8, 1)
        if case == "values_cancel":
            # Flat logits; values alternate +-u around a small mean: the output is a near-cancelling sum.
            u = torch.randn(16, generator=gen)
            sign = (torch.arange(16).view(1, 16, 1, 1) % 2) * 2 - 1
            values, q = sign * u + 0.02 * u + 0.05 * x.v_cache, x.q * 0.05
        result = va.vattention_decode(q, keys.contiguous(), values.contiguous(), x.page_table, x.seq_lens, cfg,
                                      generator=gen, backend="reference")
        dense = ref.dense_decode(q, keys, values, x.page_table, x.seq_lens)
        errors.append((result.out - dense).norm(dim=-1) / dense.norm(dim=-1))
        sampled.append(~result.exact)
    return torch.cat(errors).flatten(), torch.cat(sampled).flatten()


@pytest.mark.parametrize("case,selection,draws", [("flat_to_peaked", "exact", 12), ("values_cancel", "exact", 4),
                                                  ("clustered", "pages", 12)])
def test_share_of_heads_beyond_epsilon_stays_within_delta(
    gen: torch.Generator, case: str, selection: str, draws: int
) -> None:
    cfg = va.VAttentionConfig(epsilon=EPSILON, delta=DELTA, sink=16, local=32, top_k=64, base_sample=32,
                              selection=selection, budget="clt")
    errors, sampled = relative_errors(cfg, gen, draws, case)
    failures = int((errors > EPSILON).sum())
    assert failures <= most_failures_allowed(errors.numel(), DELTA), f"{failures} of {errors.numel()} heads"
    if case != "values_cancel":
        assert sampled.float().mean() > 0.1, "too few heads sampled for the test to mean anything"
        assert errors[sampled].max() > EPSILON / 20, "sampled heads show no error: sampling did not happen"


def test_denominator_only_budget_fails_when_values_cancel(gen: torch.Generator) -> None:
    # The same check catches the known trap, so the guarantee test above is not vacuous.
    cfg = va.VAttentionConfig(epsilon=EPSILON, delta=DELTA, sink=16, local=32, top_k=64, base_sample=32,
                              selection="exact", budget="clt", bound_numerator=False)
    errors, sampled = relative_errors(cfg, gen, 2, "values_cancel")
    assert sampled.all()
    assert int((errors > EPSILON).sum()) > most_failures_allowed(errors.numel(), DELTA)


def test_failure_bound_is_the_binomial_tail() -> None:
    # 1000 trials at rate 0.1: mean 100, sd 9.5; one in a million lies ~4.9 sd out.
    assert 140 <= most_failures_allowed(1000, 0.1) <= 155
    assert most_failures_allowed(10, 0.5) == 10


# ----------------------------------------------------------------------------- the kernel job


def test_spec_validates_params_and_prices_longer_contexts_higher() -> None:
    spec = get_kernel("vattention-decode")
    short = spec.validate({"context": "8192", "batch": "4"})
    long = spec.validate({"context": "131072", "batch": "4"})
    assert spec.cost(long).bytes_per_step > spec.cost(short).bytes_per_step > 0
    assert spec.cost(long).memory_bytes > spec.cost(short).memory_bytes
    with pytest.raises(InvalidArgument, match="no parameter"):
        spec.validate({"contxt": "8192"})
    with pytest.raises(InvalidArgument, match="maximum"):
        spec.validate({"delta": "0.9"})


def test_spec_module_does_not_import_torch() -> None:
    code = "import sys, gpuos.kernels.vattention_spec; assert 'torch' not in sys.modules and 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_job_reports_every_step() -> None:
    spec = get_kernel("vattention-decode")
    params = spec.validate({"batch": "2", "heads": "4", "kv_heads": "2", "dim": "32", "context": "300",
                            "page_size": "16", "steps": "3", "sink": "8", "local": "16", "dtype": "bf16"})
    reports: list[tuple[int, float]] = []
    ctx = KernelContext(device=torch.device("cpu"), on_gpu=False, report=lambda s, t: reports.append((s, t)), seed=7)
    summary = va.run_job(params, ctx)
    assert [s for s, _ in reports] == [0, 1, 2] and all(t > 0 for _, t in reports)
    assert 0 < summary["mean_density"] <= 1 and summary["context"] == 300
