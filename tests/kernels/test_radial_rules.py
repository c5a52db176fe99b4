"""Radial Attention's two mask rules: the paper's Equation 4 on hand-computed cases, the kernel under
each rule against SDPA with that rule's boolean mask, and how a rule is chosen (or refused)."""

from __future__ import annotations

import math

import pytest
import torch

from gpuos.errors import InvalidArgument
from gpuos.kernels.context import KernelContext
from gpuos.kernels.radial import radial_attention, run_job
from gpuos.kernels.radial_spec import MASKS, radial_layout, window_table
from gpuos.kernels.reference.radial import block_cover, layout_cover, masked_sdpa, radial_mask
from gpuos.kernels.reference.radial_compare import attended_pairs, compare, format_table, main, rule_density
from gpuos.kernels.registry import get_kernel


def _attended_spatial(frames: int, tokens_per_frame: int, spatial: int, key_frame: int, mask: str,
                      block: int = 16) -> set[int]:
    """The spatial indices of ``key_frame`` that the query at ``spatial`` in frame 0 attends (no sink)."""
    row = radial_mask(frames, tokens_per_frame, block, sink=False, rows=torch.tensor([spatial]), mask=mask)
    keys = row.view(frames, tokens_per_frame)[key_frame]
    return {int(i) for i in keys.nonzero().flatten()}


# ----------------------------------------------------------------------------- the paper's rule by hand

# T = 12, query at spatial index 6 of frame 0. Equation 4: r = floor(log2 max(d, 1)); attend when
# 2^r <= 12 and |k - l| + 1 <= 12 / 2^r, or when d mod ceil(2^r / 12) == 0 and k == l.
PAPER_T12 = {
    0: set(range(12)),                 # r = 0: |x| + 1 <= 12, the whole frame
    1: set(range(12)),                 # r = 0 as well
    2: set(range(1, 12)),              # r = 1: |x| + 1 <= 6, so |x| <= 5
    3: set(range(1, 12)),
    4: {4, 5, 6, 7, 8},                # r = 2: |x| + 1 <= 3
    7: {4, 5, 6, 7, 8},
    8: {6},                            # r = 3: |x| + 1 <= 1.5, the diagonal only
    15: {6},
    16: {6},                           # r = 4: 16 > 12; ceil(16 / 12) = 2 and 16 mod 2 == 0
    17: set(),                         # 17 mod 2 == 1: dropped
    18: {6},
    32: set(),                         # r = 5: ceil(32 / 12) = 3, 32 mod 3 == 2
    33: {6},                           # 33 mod 3 == 0
}


@pytest.mark.parametrize("distance", sorted(PAPER_T12))
def test_paper_rule_keeps_the_hand_computed_keys_at_each_frame_distance(distance: int) -> None:
    assert _attended_spatial(34, 12, 6, distance, "paper") == PAPER_T12[distance]


def test_paper_rule_floors_a_window_that_is_not_a_whole_number_of_tokens() -> None:
    # T = 10: 10 / 4 = 2.5 allows |x| + 1 <= 2.5, so |x| <= 1 (the gpuos rule's |x| < 2.5 allows 2);
    # 10 / 8 = 1.25 leaves only the diagonal (gpuos: |x| < 1.25, the same).
    assert _attended_spatial(9, 10, 5, 4, "paper") == {4, 5, 6}
    assert _attended_spatial(9, 10, 5, 4, "gpuos", block=2) == {3, 4, 5, 6, 7}
    assert _attended_spatial(9, 10, 5, 8, "paper") == {5}
    assert window_table(9, 10, 16, "paper") == (10, 10, 5, 5, 2, 2, 2, 2, 1)


def test_paper_rule_narrows_below_one_block_where_gpuos_keeps_a_block_on_every_other_distance() -> None:
    # T = 32, block 16, r = 2: 32 / 4 = 8 tokens, under one block.
    paper_4, paper_5 = (_attended_spatial(8, 32, 16, d, "paper") for d in (4, 5))
    assert paper_4 == paper_5 == set(range(9, 24))  # |x| + 1 <= 8 at every distance of the band
    gpuos_4, gpuos_5 = (_attended_spatial(8, 32, 16, d, "gpuos", block=16) for d in (4, 5))
    assert gpuos_4 == set(range(1, 32)) and gpuos_5 == set()  # |x| < 16 on multiples of ceil(64 / 32)


def test_paper_rule_does_not_depend_on_the_block_size() -> None:
    assert torch.equal(radial_mask(40, 6, 4, mask="paper"), radial_mask(40, 6, 128, mask="paper"))
    assert window_table(40, 6, 4, "paper") == window_table(40, 6, 128, "paper")


def test_window_table_matches_the_reference_mask_for_both_rules() -> None:
    frames, tokens_per_frame, block = 70, 12, 8
    for mask in MASKS:
        widths = window_table(frames, tokens_per_frame, block, mask)
        counts = radial_mask(frames, tokens_per_frame, block, sink=False, rows=torch.tensor([0]),
                             mask=mask).view(frames, tokens_per_frame).sum(dim=1)
        # From spatial index 0 a window w holds min(w, T) keys.
        assert counts.tolist() == [min(w, tokens_per_frame) for w in widths], mask


def test_paper_token_count_stays_within_the_papers_bound() -> None:
    # Equation 6: at most 4 s^2 f log2 f attended pairs (attention sink included).
    for frames, tokens_per_frame in ((8, 12), (64, 16), (81, 1560), (256, 48)):
        bound = 4 * tokens_per_frame**2 * frames * math.log2(frames)
        assert attended_pairs(frames, tokens_per_frame, mask="paper") <= bound, (frames, tokens_per_frame)


# ----------------------------------------------------------------------------- block layout and kernel


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("frames,tokens_per_frame,block,sink", [
    (20, 10, 16, True), (9, 36, 16, False), (40, 6, 8, True), (12, 24, 16, True),
])
def test_block_layout_is_exactly_the_blocks_each_rule_touches(mask: str, frames: int, tokens_per_frame: int,
                                                             block: int, sink: bool) -> None:
    touched, full = block_cover(radial_mask(frames, tokens_per_frame, block, sink, mask=mask), block)
    active, partial = layout_cover(radial_layout(frames, tokens_per_frame, block, sink, mask))
    assert torch.equal(active, touched)
    assert torch.equal(partial, touched & ~full)


# Ragged shapes (frames x tokens not a multiple of the block): 12 x 7 has subsampled diagonals
# (2^3 > 7) and windows that are not whole numbers of tokens (7 / 2, 7 / 4); 5 x 30 has wider
# windows (15, and 7.5 tokens) over several blocks.
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("frames,tokens_per_frame", [(12, 7), (5, 30)])
def test_kernel_equals_sdpa_with_the_rules_boolean_mask(device: str, mask: str, frames: int,
                                                       tokens_per_frame: int) -> None:
    block = 16
    gen = torch.Generator().manual_seed(frames * 1000 + tokens_per_frame)
    q, k, v = (torch.randn(1, 2, frames * tokens_per_frame, 16, generator=gen).to(device) for _ in range(3))
    out = torch.full_like(q, float("nan"))
    radial_attention(q, k, v, frames, tokens_per_frame, block, out=out, mask=mask)
    expected = masked_sdpa(q, k, v, radial_mask(frames, tokens_per_frame, block, device=device, mask=mask))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_the_kernel_defaults_to_the_papers_rule(device: str) -> None:
    frames, tokens_per_frame, block = 12, 7, 16
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 1, frames * tokens_per_frame, 16, generator=gen).to(device) for _ in range(3))
    default = radial_attention(q, k, v, frames, tokens_per_frame, block)
    paper, gpuos = (masked_sdpa(q, k, v, radial_mask(frames, tokens_per_frame, block, device=device, mask=mask))
                    for mask in ("paper", "gpuos"))
    torch.testing.assert_close(default, paper, atol=1e-5, rtol=1e-5)
    assert (default - gpuos).abs().max().item() > 1e-2


# ----------------------------------------------------------------------------- choosing a rule


def test_a_bad_mask_is_refused_naming_mask(device: str) -> None:
    q = torch.zeros(1, 1, 32, 16, device=device)
    with pytest.raises(ValueError, match="mask must be one of 'paper', 'gpuos'; got 'Paper'"):
        radial_attention(q, q, q, 2, 16, 16, mask="Paper")
    for build in (lambda: radial_layout(2, 16, 16, True, "dense"), lambda: window_table(2, 16, 16, "dense"),
                  lambda: radial_mask(2, 16, 16, mask="dense"), lambda: attended_pairs(2, 16, mask="dense")):
        with pytest.raises(ValueError, match="mask must be one of"):
            build()


def test_the_job_takes_a_mask_parameter_defaulting_to_the_papers_rule() -> None:
    spec = get_kernel("radial-dit")
    assert spec.validate({})["mask"] == "paper"
    assert spec.validate({"mask": "gpuos"})["mask"] == "gpuos"
    with pytest.raises(InvalidArgument, match="not one of paper, gpuos") as refused:
        spec.validate({"mask": "radial"})
    assert refused.value.field == "params.mask"


def test_the_job_runs_the_rule_it_is_given() -> None:
    ctx = KernelContext(device=torch.device("cpu"), on_gpu=False, report=lambda s, t: None, seed=1)
    raw = {"batch": "1", "heads": "1", "dim": "16", "frames": "8", "tokens_per_frame": "10", "block": "16",
           "dtype": "fp32", "steps": "1"}  # within the CPU caps
    spec = get_kernel("radial-dit")
    for mask in MASKS:
        summary = run_job(spec.validate({**raw, "mask": mask}), ctx)
        assert summary["capped"] == 0.0
        assert summary["block_density"] == radial_layout(8, 10, 16, True, mask).density
    assert radial_layout(8, 10, 16, True, "paper").density != radial_layout(8, 10, 16, True, "gpuos").density


def test_the_job_cost_follows_the_rule() -> None:
    spec = get_kernel("radial-dit")
    paper = spec.cost(spec.validate({"frames": "81"}))
    gpuos = spec.cost(spec.validate({"frames": "81", "mask": "gpuos"}))
    assert paper.flops_per_step > gpuos.flops_per_step > 0  # the paper's diagonals touch more blocks


# ----------------------------------------------------------------------------- the comparison


@pytest.mark.parametrize("sink", [True, False])
def test_comparison_counts_exactly_the_token_pairs_of_the_reference_mask(sink: bool) -> None:
    for frames, tokens_per_frame, block in ((20, 10, 16), (9, 36, 8), (1, 5, 4)):
        for mask in MASKS:
            expected = radial_mask(frames, tokens_per_frame, block, sink, mask=mask).sum().item()
            assert attended_pairs(frames, tokens_per_frame, block, sink, mask) == expected, (frames, mask)


def test_comparison_reports_both_rules_with_the_layouts_figures() -> None:
    rows = compare(20, 10, 16)
    assert [row.mask for row in rows] == list(MASKS)
    for row in rows:
        layout = radial_layout(20, 10, 16, True, row.mask)
        assert row.block_density == layout.density and row.ideal_speedup == 1 / layout.density
        assert row.token_density * 200**2 == pytest.approx(radial_mask(20, 10, 16, mask=row.mask).sum().item())
        assert 0 < row.partial_share < 1
    table = format_table(rows)
    assert "| 20 | 200 | 16 | paper |" in table and "| 20 | 200 | 16 | gpuos |" in table


def test_comparison_cli_prints_a_table_and_refuses_a_bad_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--frames", "6", "--tokens-per-frame", "36", "--block", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"{rule_density(6, 36, 16, mask='paper').block_density:.1%}" in printed
    assert main(["--frames", "0"]) == 2
    assert "frames (0)" in capsys.readouterr().err
