"""SLA (sparse-linear attention): the Triton kernels against the float64 reference, under the interpreter."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from gpuos.errors import InvalidArgument  # noqa: E402
from gpuos.kernels import sla  # noqa: E402
from gpuos.kernels.context import KernelContext  # noqa: E402
from gpuos.kernels.reference import sla as ref  # noqa: E402
from gpuos.kernels.registry import get_kernel  # noqa: E402
from gpuos.kernels.sla_spec import block_counts  # noqa: E402

TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture
def seed() -> int:
    # Fresh inputs every run; the seed is in every failure message so a failure can be replayed.
    return torch.seed() % (1 << 31)


def inputs(seed: int, shape: tuple[int, int, int, int], device: str,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    proj = torch.randn((shape[-1], shape[-1]), generator=gen) / math.sqrt(shape[-1])
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v)) + (proj.to(device),)


def run_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, block_map: sla.BlockMap,
               block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's output and linear branch, written into NaN-poisoned buffers."""
    out = torch.full_like(q, float("nan"))
    linear = torch.full(q.shape, float("nan"), device=q.device)
    den = torch.full((q.shape[0] * q.shape[1], q.shape[2]), float("nan"), device=q.device)
    sla.sla_forward(q, k, v, proj, block_map, block, out=out, linear_out=(linear, den))
    return out, linear


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor,
              classes: torch.Tensor, block: int) -> torch.Tensor:
    return ref.sla(q.double(), k.double(), v.double(), proj.double(), classes, block)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, seed: int) -> None:
    assert not torch.isnan(actual).any(), f"unwritten or NaN outputs (seed {seed})"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * max(1.0, scale), f"max error {err:.3g} over scale {scale:.3g} (seed {seed})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_output_matches_float64_reference(seed: int, device: str, dtype: torch.dtype) -> None:
    q, k, v, proj = inputs(seed, (1, 2, 256, 32), device, dtype)
    block_map = sla.classify_blocks(q, k, 32, critical_ratio=0.25)
    out, _ = run_kernel(q, k, v, proj, block_map, 32)
    assert_close(out, reference(q, k, v, proj, block_map.classes, 32), TOLERANCE[dtype], seed)


def test_linear_branch_matches_reference_before_projection(seed: int, device: str) -> None:
    q, k, v, proj = inputs(seed, (2, 1, 192, 16), device)
    block_map = sla.classify_blocks(q, k, 16, critical_ratio=0.2, negligible_ratio=0.3)
    _, linear = run_kernel(q, k, v, proj, block_map, 16)
    _, expected = ref.sparse_linear_parts(q.double(), k.double(), v.double(), block_map.classes, 16)
    assert_close(linear, expected, 1e-5, seed)


def test_sequence_length_not_a_multiple_of_the_block(seed: int, device: str) -> None:
    q, k, v, proj = inputs(seed, (1, 2, 201, 32), device)
    block_map = sla.classify_blocks(q, k, 32, critical_ratio=0.3, negligible_ratio=0.2)
    out, _ = run_kernel(q, k, v, proj, block_map, 32)
    assert_close(out, reference(q, k, v, proj, block_map.classes, 32), TOLERANCE[torch.float32], seed)


def test_single_token_attends_to_itself(seed: int, device: str) -> None:
    q, k, v, proj = inputs(seed, (1, 3, 1, 16), device)
    block_map = sla.classify_blocks(q, k, 16, critical_ratio=0.05)
    out, _ = run_kernel(q, k, v, proj, block_map, 16)
    assert_close(out, v, TOLERANCE[torch.float32], seed)


def test_skipping_most_blocks_adds_up_the_marginal_ones(seed: int, device: str) -> None:
    # More negligible than marginal blocks: the kernel sums the marginal blocks instead of
    # subtracting from the global state; both must give the reference's function.
    q, k, v, proj = inputs(seed, (1, 2, 320, 32), device)
    block_map = sla.classify_blocks(q, k, 32, critical_ratio=0.1, negligible_ratio=0.7)
    assert bool((block_map.n_marginal < 10 - block_map.n_critical - block_map.n_marginal).all())
    out, _ = run_kernel(q, k, v, proj, block_map, 32)
    assert_close(out, reference(q, k, v, proj, block_map.classes, 32), TOLERANCE[torch.float32], seed)


def test_every_block_critical_equals_dense_sdpa(seed: int, device: str) -> None:
    q, k, v, proj = inputs(seed, (1, 2, 100, 32), device)
    block_map = sla.classify_blocks(q, k, 16, critical_ratio=1.0)
    out, _ = run_kernel(q, k, v, proj, block_map, 16)
    assert_close(out, ref.dense_sdpa(q.double(), k.double(), v.double()), TOLERANCE[torch.float32], seed)


def test_zero_projection_equals_block_sparse_attention(seed: int, device: str) -> None:
    q, k, v, _ = inputs(seed, (1, 2, 160, 32), device)
    block_map = sla.classify_blocks(q, k, 32, critical_ratio=0.4)
    out, _ = run_kernel(q, k, v, torch.zeros(32, 32, device=device), block_map, 32)
    owner = torch.arange(160, device=device) // 32
    mask = (block_map.classes == ref.CRITICAL)[..., owner, :][..., owner]
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    assert_close(out, expected, TOLERANCE[torch.float32], seed)


def mixed_heads(seed: int, n_blocks: int, device: str) -> sla.BlockMap:
    """Three heads: one critical block per row, all critical, and a random mix per row."""
    classes = torch.randint(0, 3, (1, 3, n_blocks, n_blocks), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.int8)
    classes[0, 0] = ref.MARGINAL
    classes[0, 0, :, 0] = ref.CRITICAL
    classes[0, 1] = ref.CRITICAL
    classes[0, 2, :, 3] = ref.CRITICAL
    return sla.BlockMap.from_classes(classes.to(device))


def test_heads_with_different_sparsity_patterns(seed: int, device: str) -> None:
    q, k, v, proj = inputs(seed, (1, 3, 128, 16), device)
    block_map = mixed_heads(seed, 8, device)
    assert len(set(block_map.n_critical.flatten().tolist())) > 2
    out, _ = run_kernel(q, k, v, proj, block_map, 16)
    assert_close(out, reference(q, k, v, proj, block_map.classes, 16), TOLERANCE[torch.float32], seed)


def test_classifier_takes_the_top_pooled_scores(seed: int, device: str) -> None:
    q, k, _, _ = inputs(seed, (2, 2, 250, 16), device)
    block_map = sla.classify_blocks(q, k, 16, critical_ratio=0.2, negligible_ratio=0.3)
    scores = ref.pooled_block_scores(q.double(), k.double(), 16)
    critical, negligible = block_counts(16, 0.2, 0.3)
    assert bool((block_map.n_critical == critical).all())
    assert bool((block_map.n_marginal == 16 - critical - negligible).all())
    # Every critical block outscores every marginal one, which outscores every negligible one
    # (up to fp32 rounding of the pooled scores).
    lowest = {c: scores.masked_fill(block_map.classes != c, math.inf).amin(-1) for c in (2, 1)}
    highest = {c: scores.masked_fill(block_map.classes != c, -math.inf).amax(-1) for c in (1, 0)}
    assert bool((lowest[2] >= highest[1] - 1e-6).all()), f"seed {seed}"
    assert bool((lowest[1] >= highest[0] - 1e-6).all()), f"seed {seed}"


@pytest.mark.parametrize("pattern", ["mostly marginal", "mostly negligible", "mixed heads"])
def test_backward_matches_reference_gradients(seed: int, device: str, pattern: str) -> None:
    # Both ways of summing the marginal blocks, by rows (dQ) and by columns (dK, dV), and a
    # partial last block.
    q, k, v, proj = inputs(seed, (1, 3, 72, 16), device)
    if pattern == "mostly marginal":
        block_map = sla.classify_blocks(q, k, 16, critical_ratio=0.3, negligible_ratio=0.2)
    elif pattern == "mostly negligible":
        block_map = sla.classify_blocks(q, k, 16, critical_ratio=0.2, negligible_ratio=0.6)
    else:
        block_map = mixed_heads(seed, 5, device)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, proj)]
    ref_leaves = [x.double().requires_grad_(True) for x in (q, k, v, proj)]
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    sla.sla_attention(*leaves, block=16, block_map=block_map).backward(grad_out)
    ref.sla(*ref_leaves, block_map.classes, 16).backward(grad_out.double())
    for name, mine, theirs in zip("q k v proj".split(), leaves, ref_leaves, strict=True):
        assert mine.grad is not None and theirs.grad is not None
        err = (mine.grad.double() - theirs.grad).abs().max().item()
        assert err <= 1e-4 * max(1.0, theirs.grad.abs().max().item()), f"d{name}: error {err:.3g} (seed {seed})"


@pytest.mark.parametrize(("d", "dtype", "tol"), [(128, torch.float32, 1e-4), (64, torch.float16, 3e-3)],
                         ids=["d128-fp32", "d64-fp16"])
def test_forward_and_backward_in_row_slices_at_wide_heads(seed: int, device: str, d: int, dtype: torch.dtype,
                                                          tol: float) -> None:
    # At d >= 64 each program takes a slice of a 64-token block and walks the other side in
    # slices too (kernel_tiles); a ragged last block and both linear walks per head.
    for backward in (False, True):
        tiles = sla.kernel_tiles(d, dtype, backward)
        assert tiles.rows < 64 and tiles.inner < 64
    q, k, v, proj = inputs(seed, (1, 2, 150, d), device, dtype)
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 3, (1, 2, 3, 3), generator=gen, dtype=torch.int8)
    classes[..., 0] = ref.CRITICAL
    classes[0, 0, :, 1:] = ref.MARGINAL  # head 0: more marginal than negligible blocks everywhere
    classes[0, 1, :, 1:] = ref.NEGLIGIBLE  # head 1: the other way round
    classes[0, 1, 0, 1] = ref.MARGINAL
    block_map = sla.BlockMap.from_classes(classes.to(device))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, proj)]
    ref_leaves = [x.double().requires_grad_(True) for x in (q, k, v, proj)]
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    out = sla.sla_attention(*leaves, block=64, block_map=block_map)
    expected = ref.sla(*ref_leaves, block_map.classes, 64)
    assert_close(out.detach(), expected.detach(), tol, seed)
    out.backward(grad_out.to(dtype))
    expected.backward(grad_out.double())
    for name, mine, theirs in zip("q k v proj".split(), leaves, ref_leaves, strict=True):
        assert mine.grad is not None and theirs.grad is not None
        assert not torch.isnan(mine.grad).any(), f"d{name}: NaN (seed {seed})"
        err = (mine.grad.double() - theirs.grad).abs().max().item()
        scale = max(1.0, theirs.grad.abs().max().item())
        assert err <= tol * scale, f"d{name}: error {err:.3g} (seed {seed})"


def test_zero_initialised_layer_is_block_sparse_and_its_projection_learns(seed: int, device: str) -> None:
    q, k, v, _ = inputs(seed, (1, 2, 64, 16), device)
    layer = sla.SparseLinearAttention(16, block=16, critical_ratio=0.25).to(device)
    out = layer(q, k, v)
    block_map = sla.classify_blocks(q, k, 16, critical_ratio=0.25)
    sparse, _ = ref.sparse_linear_parts(q.double(), k.double(), v.double(), block_map.classes, 16)
    assert_close(out.detach(), sparse, TOLERANCE[torch.float32], seed)
    out.square().sum().backward()
    assert layer.proj.grad is not None and layer.proj.grad.abs().max().item() > 0


def test_launcher_rejects_mismatched_shapes(device: str) -> None:
    q = torch.zeros(1, 1, 32, 16, device=device)
    block_map = sla.classify_blocks(q, q, 16, critical_ratio=0.5)
    with pytest.raises(ValueError, match="head dimension"):
        sla.sla_forward(torch.zeros(1, 1, 32, 24), torch.zeros(1, 1, 32, 24), torch.zeros(1, 1, 32, 24),
                        torch.zeros(24, 24), block_map, 16)
    with pytest.raises(ValueError, match="block map"):
        sla.sla_forward(q, q, q, torch.zeros(16, 16, device=device), block_map, 32)
    with pytest.raises(ValueError, match="critical"):
        sla.BlockMap.from_classes(torch.ones(1, 1, 2, 2, dtype=torch.int8))


def test_run_job_reports_every_step(device: str) -> None:
    spec = get_kernel("sla-dit")
    params = spec.validate({"seq_len": "100", "heads": "2", "dim": "32", "block": "32", "steps": "3",
                            "critical_ratio": "0.3", "dtype": "fp32", "backward": "true"})
    reports: list[tuple[int, float]] = []
    ctx = KernelContext(device=torch.device(device), on_gpu=device == "cuda",
                        report=lambda step, latency: reports.append((step, latency)), seed=7)
    summary = sla.run_job(params, ctx)
    assert [step for step, _ in reports] == [0, 1, 2]
    assert all(latency > 0 for _, latency in reports)
    assert summary["seq_len"] == 100 and summary["critical_density"] == pytest.approx(2 / 4)


def test_bench_cases_run_and_agree_with_dense_shapes(device: str) -> None:
    cases = sla.bench_cases(device, seq_len=96, heads=1)
    assert len(cases) == 5
    for label, sparse_fn, dense_fn, flops in cases:
        result, dense = sparse_fn(), dense_fn()
        assert flops > 0, label
        if result is not None:
            assert result.shape == dense.shape and not torch.isnan(result).any(), label


def test_spec_refuses_out_of_range_parameters() -> None:
    spec = get_kernel("sla-dit")
    with pytest.raises(InvalidArgument, match="critical_ratio"):
        spec.validate({"critical_ratio": "1.5"})
    with pytest.raises(InvalidArgument, match="no parameter"):
        spec.validate({"topk": "0.1"})


def test_cost_grows_with_the_critical_share() -> None:
    spec = get_kernel("sla-dit")
    sparse = spec.cost(spec.validate({"critical_ratio": "0.05"}))
    denser = spec.cost(spec.validate({"critical_ratio": "0.5"}))
    assert denser.flops_per_step > sparse.flops_per_step
    assert denser.bytes_per_step > sparse.bytes_per_step
