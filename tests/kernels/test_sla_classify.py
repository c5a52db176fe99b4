"""SLA's block classification: the Triton kernels (pooling, logits, per-row selection) against
the PyTorch reference, exactly, under the interpreter."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gpuos.kernels import sla  # noqa: E402
from gpuos.kernels.reference.sla import CRITICAL, MARGINAL, NEGLIGIBLE  # noqa: E402
from gpuos.kernels.sla_spec import block_counts  # noqa: E402


@pytest.fixture
def seed() -> int:
    # Fresh inputs every run; the seed is in every failure message so a failure can be replayed.
    return torch.seed() % (1 << 31)


@pytest.fixture(params=["pairs", "radix select", "sort"])
def selection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every way a row of logits is ranked: the selection kernel's two (rows here are short, so
    the radix select is forced) and torch.sort, which takes rows too long for one program."""
    if request.param == "radix select":
        monkeypatch.setattr(sla, "SELECT_PAIRWISE_MAX", 0)
    if request.param == "sort":
        monkeypatch.setattr(sla, "SELECT_MAX_BLOCKS", 0)
    return str(request.param)


def assert_same_map(actual: sla.BlockMap, expected: sla.BlockMap, context: str) -> None:
    for name in ("classes", "order", "n_critical", "n_marginal"):
        mine, theirs = getattr(actual, name), getattr(expected, name)
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs), f"{name} differ ({context})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("n", "block", "d", "critical", "negligible"), [
    (201, 16, 32, 0.2, 0.3),   # ragged: the last block holds 9 tokens
    (320, 32, 64, 0.1, 0.0),   # whole blocks, no negligible set
    (37, 16, 16, 0.5, 0.5),    # three blocks, every block placed by the counts
    (5, 16, 16, 0.05, 0.0),    # one partial block
])
def test_triton_classes_equal_the_torch_reference(seed: int, device: str, selection: str, dtype: torch.dtype,
                                                  n: int, block: int, d: int, critical: float,
                                                  negligible: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn((2, 2, n, d), generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    actual = sla.classify_blocks(q, k, block, critical, negligible)
    expected = sla.classify_blocks_reference(q, k, block, critical, negligible)
    assert_same_map(actual, expected, f"{selection}, seed {seed}")
    n_blocks = -(-n // block)
    n_crit, n_negl = block_counts(n_blocks, critical, negligible)
    assert bool((actual.n_critical == n_crit).all())
    assert bool((actual.n_marginal == n_blocks - n_crit - n_negl).all())


def test_kernel_logits_match_the_reference(seed: int, device: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    # A large common offset in K: the mean-centring keeps the logits well conditioned.
    q = torch.randn((1, 3, 150, 32), generator=gen).to(device)
    k = (torch.randn((1, 3, 150, 32), generator=gen) + 50.0).to(device)
    actual, expected = sla.pooled_logits(q, k, 16), sla.pooled_logits_reference(q, k, 16)
    assert actual.dtype == torch.float64 and actual.shape == (1, 3, 10, 10)
    err = (actual - expected).abs().max().item()
    assert err <= 1e-12 * expected.abs().max().item(), f"error {err:.3g} (seed {seed})"


def test_equal_scores_rank_by_block_index(device: str, selection: str) -> None:
    # Q = 0: every logit is 0, so the ranks are the block indices: the first blocks are
    # critical, the last negligible, in every row.
    n, block = 7 * 16 + 3, 16
    q = torch.zeros((1, 2, n, 16), device=device)
    k = torch.randn((1, 2, n, 16), generator=torch.Generator().manual_seed(0)).to(device)
    crit, negl = block_counts(8, 0.3, 0.4)
    expected = torch.full((1, 2, 8, 8), MARGINAL, dtype=torch.int8, device=device)
    expected[..., :crit] = CRITICAL
    expected[..., 8 - negl:] = NEGLIGIBLE
    for classify in (sla.classify_blocks, sla.classify_blocks_reference):
        classes = classify(q, k, block, 0.3, 0.4).classes
        assert torch.equal(classes, expected), f"{classify.__name__}, {selection}"


def test_ties_at_the_boundaries_go_to_the_lower_block(device: str, selection: str) -> None:
    # Small integers: every sum is exact whatever the order, so the duplicated key blocks tie
    # exactly. Blocks 2 and 5 are equal and score highest; blocks 0 and 3 are equal and lowest.
    # With one critical and one negligible block per row, 2 is critical and 5 marginal; 3 is
    # negligible and 0 marginal.
    block, d = 16, 16
    gen = torch.Generator().manual_seed(1)
    direction = torch.randint(1, 4, (d,), generator=gen).float()
    q = direction.expand(1, 1, 6 * block, d).contiguous()
    level = (-3.0, 0.0, 3.0, -3.0, 1.0, 3.0)
    # Block j's noise is drawn from seed j % 3: blocks 0 and 3, and 2 and 5, get the same.
    noise = [torch.randint(-1, 2, (block, d), generator=torch.Generator().manual_seed(j % 3)).float()
             for j in range(6)]
    k = torch.cat([noise[j] + level[j] * direction for j in range(6)]).expand(1, 1, 6 * block, d).contiguous()
    q, k = q.to(device), k.to(device)
    expected = torch.tensor([MARGINAL, MARGINAL, CRITICAL, NEGLIGIBLE, MARGINAL, MARGINAL], dtype=torch.int8)
    for classify in (sla.classify_blocks, sla.classify_blocks_reference):
        classes = classify(q, k, block, 1 / 6, 1 / 6).classes
        assert torch.equal(classes[0, 0].cpu(), expected.expand(6, 6)), f"{classify.__name__}, {selection}"


def test_every_block_critical_and_strided_inputs(seed: int, device: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    # (B, N, H, d) storage seen as (B, H, N, d): the pooling kernel reads through the strides.
    q, k = (torch.randn((2, 50, 3, 16), generator=gen).to(device).transpose(1, 2) for _ in range(2))
    assert not q.is_contiguous()
    expected = sla.classify_blocks_reference(q, k, 16, 0.5, 0.2)
    assert_same_map(sla.classify_blocks(q, k, 16, 0.5, 0.2), expected, f"seed {seed}")
    assert bool((sla.classify_blocks(q, k, 16, 1.0).classes == CRITICAL).all())


def test_bad_arguments_are_named(device: str) -> None:
    q = torch.zeros((1, 1, 32, 16), device=device)
    with pytest.raises(ValueError, match="critical_ratio"):
        sla.classify_blocks(q, q, 16, 1.5)
    with pytest.raises(ValueError, match="negligible_ratio"):
        sla.classify_blocks(q, q, 16, 0.1, -0.1)
    with pytest.raises(ValueError, match="block 24"):
        sla.classify_blocks(q, q, 24, 0.1)
    with pytest.raises(ValueError, match="q and k"):
        sla.classify_blocks(q, torch.zeros((1, 1, 16, 16), device=device), 16, 0.1)
    with pytest.raises(ValueError, match="head dimension"):
        sla.classify_blocks(torch.zeros((1, 1, 32, 24)), torch.zeros((1, 1, 32, 24)), 16, 0.1)
