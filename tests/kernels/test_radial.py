"""Radial Attention: the Triton kernel against float64 references, and the static mask against its definition."""

from __future__ import annotations

import math

import pytest
import torch

from gpuos.errors import InvalidArgument
from gpuos.kernels.context import KernelContext
from gpuos.kernels.radial import CPU_CAPS, radial_attention, run_job
from gpuos.kernels.radial_spec import estimated_active_blocks, radial_layout
from gpuos.kernels.reference.radial import (
    attention_reference,
    block_cover,
    dense_sdpa,
    layout_cover,
    masked_sdpa,
    radial_mask,
)
from gpuos.kernels.registry import get_kernel

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _qkv(batch: int, heads: int, seq: int, dim: int, dtype: torch.dtype,
         device: str) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seq, dim, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    return seed, q, k, v


def _poisoned_run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, tokens_per_frame: int,
                  block: int, sink: bool = True) -> torch.Tensor:
    out = torch.full_like(q, float("nan"))
    returned = radial_attention(q, k, v, frames, tokens_per_frame, block, sink, out=out)
    assert returned is out
    return out


# Shapes: frames x tokens_per_frame not a multiple of the block; frames narrower than a block.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("frames,tokens_per_frame,block", [(5, 36, 16), (9, 7, 16)])
def test_kernel_matches_float64_reference_under_the_radial_mask(device: str, dtype: torch.dtype, frames: int,
                                                                tokens_per_frame: int, block: int) -> None:
    seed, q, k, v = _qkv(1, 2, frames * tokens_per_frame, 32, dtype, device)
    out = _poisoned_run(q, k, v, frames, tokens_per_frame, block)
    mask = radial_mask(frames, tokens_per_frame, block, device=device)
    reference = attention_reference(q, k, v, mask)
    assert not out.isnan().any(), f"unwritten outputs (seed {seed})"
    error = (out.double() - reference).abs().max().item()
    assert error < TOLERANCE[dtype], f"max error {error:.3g} (seed {seed})"


def test_kernel_matches_sdpa_with_the_same_boolean_mask_on_strided_inputs(device: str) -> None:
    frames, tokens_per_frame, block = 6, 20, 16
    # (batch, seq, heads, dim) storage, as DiT blocks hold it, seen as (batch, heads, seq, dim).
    seed, *stored = _qkv(2, frames * tokens_per_frame, 2, 16, torch.float32, device)
    q, k, v = (x.transpose(1, 2) for x in stored)
    out = _poisoned_run(q, k, v, frames, tokens_per_frame, block)
    expected = masked_sdpa(q, k, v, radial_mask(frames, tokens_per_frame, block, device=device))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{m} (seed {seed})")


def test_kernel_without_the_sink_matches_the_reference(device: str) -> None:
    frames, tokens_per_frame, block = 8, 12, 16
    seed, q, k, v = _qkv(1, 1, frames * tokens_per_frame, 32, torch.float32, device)
    out = _poisoned_run(q, k, v, frames, tokens_per_frame, block, sink=False)
    reference = attention_reference(q, k, v, radial_mask(frames, tokens_per_frame, block, sink=False, device=device))
    assert (out.double() - reference).abs().max().item() < 1e-5, f"seed {seed}"


def test_single_frame_is_dense_attention(device: str) -> None:
    seed, q, k, v = _qkv(1, 2, 40, 32, torch.float32, device)
    out = _poisoned_run(q, k, v, 1, 40, 16)
    expected = dense_sdpa(q.double(), k.double(), v.double())
    assert (out.double() - expected).abs().max().item() < 1e-5, f"seed {seed}"


@pytest.mark.parametrize("frames,tokens_per_frame,block,sink", [
    (6, 20, 16, True), (9, 7, 16, True), (12, 40, 8, False), (33, 16, 16, True), (20, 64, 16, True),
])
def test_block_layout_is_exactly_the_blocks_the_token_mask_touches(frames: int, tokens_per_frame: int,
                                                                  block: int, sink: bool) -> None:
    touched, full = block_cover(radial_mask(frames, tokens_per_frame, block, sink), block)
    active, partial = layout_cover(radial_layout(frames, tokens_per_frame, block, sink))
    assert torch.equal(active, touched)
    assert torch.equal(partial, touched & ~full)


def test_attended_keys_per_query_grow_logarithmically_with_frames() -> None:
    # Each band r >= 1 (frame distances 2^r .. 2^(r+1)-1, on either side) holds at most
    # 2T + 2^r keys per query while its window is at least a block, and at most
    # (2^r / stride + 1) frames x (2 block - 1) keys once subsampled; doubling the frames adds one band.
    tokens_per_frame, block = 32, 8
    per_band = 2 * (2 * tokens_per_frame + 2 * block + tokens_per_frame)
    counts = {}
    for frames in (2, 4, 8, 16, 32, 64):
        counts[frames] = radial_mask(frames, tokens_per_frame, block).sum(dim=1)
    for frames in (2, 4, 8, 16, 32):
        grown = counts[2 * frames].max().item() - counts[frames].max().item()
        assert 0 < grown <= per_band, f"{frames} -> {2 * frames} frames: max keys per query grew by {grown}"
    largest = counts[64].max().item()
    assert largest <= 4 * tokens_per_frame + per_band * math.log2(64)
    # Keys per query over keys in the video: well under half of what it was at 8 frames.
    assert largest / (64 * tokens_per_frame) < 0.5 * counts[8].max().item() / (8 * tokens_per_frame)


def test_density_falls_as_the_video_lengthens() -> None:
    # The gpuos rule's blocks: the paper's keeps a diagonal in every frame pair until 2^r > T, so
    # its block density falls more slowly (tests/kernels/test_radial_rules.py).
    tokens_per_frame, block = 48, 16
    token_density = [radial_mask(f, tokens_per_frame, block, mask="gpuos").float().mean().item()
                     for f in (4, 8, 16, 32)]
    block_density = [radial_layout(f, tokens_per_frame, block, mask="gpuos").density for f in (4, 8, 16, 32, 64)]
    assert token_density == sorted(token_density, reverse=True) and token_density[-1] < token_density[0] / 2
    assert block_density == sorted(block_density, reverse=True) and block_density[-1] < block_density[0] / 3


def test_mask_is_symmetric_apart_from_the_first_frame_sink() -> None:
    frames, tokens_per_frame, block = 20, 12, 8
    without_sink = radial_mask(frames, tokens_per_frame, block, sink=False)
    assert torch.equal(without_sink, without_sink.T)
    with_sink = radial_mask(frames, tokens_per_frame, block)
    rest = slice(tokens_per_frame, None)
    assert torch.equal(with_sink[rest, rest], with_sink[rest, rest].T)
    assert with_sink[:, :tokens_per_frame].all()
    assert not with_sink[:tokens_per_frame].all()  # the first frame's queries are not global


def test_mask_depends_only_on_frame_distance_and_spatial_indices() -> None:
    frames, tokens_per_frame, block = 24, 10, 8
    t = tokens_per_frame
    mask = radial_mask(frames, t, block, sink=False).view(frames, t, frames, t)
    for shift in (1, 5):
        assert torch.equal(mask[shift:, :, shift:, :], mask[:-shift, :, :-shift, :])


def test_own_and_adjacent_frames_are_attended_fully() -> None:
    frames, tokens_per_frame, block = 10, 16, 8
    t = tokens_per_frame
    mask = radial_mask(frames, t, block, sink=False).view(frames, t, frames, t)
    for i in range(frames):
        for j in range(max(0, i - 1), min(frames, i + 2)):
            assert mask[i, :, j, :].all(), (i, j)
    assert not mask[0, :, 2, :].all()


def test_spatial_window_halves_as_frame_distance_doubles_until_one_block() -> None:
    frames, tokens_per_frame, block = 17, 256, 16
    t = tokens_per_frame
    centre = torch.tensor([t // 2])
    keys = radial_mask(frames, t, block, sink=False, rows=centre).view(frames, t)
    keys_at = {d: keys[d].sum().item() for d in (2, 4, 8, 16)}
    for d in (2, 4, 8):
        # Window T / 2^r each side of the query: 2 ceil(T / 2^r) - 1 keys, so about half per doubling.
        assert abs(keys_at[2 * d] - keys_at[d] / 2) <= 1, keys_at
    assert keys_at[16] >= 2 * block - 1


def test_frame_pairs_below_one_block_are_subsampled() -> None:
    # The gpuos rule (the paper's narrows the diagonal below one block; test_radial_rules.py).
    frames, tokens_per_frame, block = 64, 32, 16
    t = tokens_per_frame
    mask = radial_mask(frames, t, block, sink=False, mask="gpuos").view(frames, t, frames, t)
    attended_frames = mask[0, t // 2].any(dim=1)
    for lo in (4, 8, 16, 32):  # bands where T / 2^r < block
        band = attended_frames[lo: 2 * lo]
        assert 0 < band.sum().item() < lo, f"band {lo}..{2 * lo - 1}: {band.tolist()}"
        kept = mask[0, t // 2, lo: 2 * lo].sum(dim=1)
        assert set(kept.tolist()) <= {0, 2 * block - 1}  # a kept pair gets a one-block window


def test_wan_480p_density_falls_enough_at_four_times_the_length() -> None:
    # Wan2.1 480p: 30 x 52 tokens per latent frame; 81 video frames are 21 latent frames.
    tokens_per_frame = 30 * 52
    one_x = radial_layout(21, tokens_per_frame, 128)
    four_x = radial_layout(81, tokens_per_frame, 128)
    print(f"Wan 480p block density: 21 latent frames {one_x.density:.1%}, 81 latent frames {four_x.density:.1%}")
    assert four_x.density < one_x.density < 1.0
    assert 1 / four_x.density > 1.8  # room for the 1.8x-over-dense target at 4x length


def test_run_job_reports_every_step() -> None:
    reports: list[tuple[int, float]] = []
    ctx = KernelContext(device=torch.device("cpu"), on_gpu=False, report=lambda s, t: reports.append((s, t)), seed=3)
    params = get_kernel("radial-dit").validate({
        "batch": "1", "heads": "1", "dim": "16", "frames": "3", "tokens_per_frame": "16", "block": "16",
        "dtype": "fp16", "steps": "3",
    })
    summary = run_job(params, ctx)
    assert [s for s, _ in reports] == [0, 1, 2] and all(t > 0 for _, t in reports)
    assert summary["seq_len"] == 48 and summary["capped"] == 0.0
    assert summary["block_density"] == radial_layout(3, 16, 16).density


def test_run_job_caps_gpu_sized_shapes_on_the_cpu() -> None:
    reports: list[int] = []
    ctx = KernelContext(device=torch.device("cpu"), on_gpu=False, report=lambda s, t: reports.append(s))
    params = get_kernel("radial-dit").validate({"steps": "1"})
    summary = run_job(params, ctx)
    assert summary["capped"] == 1.0 and reports == [0]
    assert summary["seq_len"] == CPU_CAPS["frames"] * CPU_CAPS["tokens_per_frame"]


def test_spec_refuses_unknown_and_out_of_range_parameters() -> None:
    spec = get_kernel("radial-dit")
    with pytest.raises(InvalidArgument, match="no parameter 'seq_len'"):
        spec.validate({"seq_len": "4096"})
    with pytest.raises(InvalidArgument, match="above the maximum"):
        spec.validate({"frames": "5000"})
    with pytest.raises(InvalidArgument, match="not one of"):
        spec.validate({"block": "48"})


def test_cost_model_grows_like_n_log_n_not_n_squared() -> None:
    spec = get_kernel("radial-dit")
    base = spec.cost(spec.validate({}))
    longer = spec.cost(spec.validate({"frames": "84"}))  # 4x the default 21 frames
    assert base.flops_per_step > 0 and base.bytes_per_step > 0 and base.memory_bytes > 0
    assert 4 < longer.flops_per_step / base.flops_per_step < 16
    assert longer.memory_bytes > 3.9 * base.memory_bytes


@pytest.mark.parametrize("frames,tokens_per_frame,block", [(21, 1560, 128), (41, 1560, 128), (16, 200, 16)])
def test_cost_model_block_estimate_is_close_to_the_layout(frames: int, tokens_per_frame: int, block: int) -> None:
    exact = radial_layout(frames, tokens_per_frame, block).active_blocks
    assert exact <= estimated_active_blocks(frames, tokens_per_frame, block) <= 1.5 * exact


def test_launcher_rejects_inconsistent_inputs(device: str) -> None:
    q = torch.zeros(1, 1, 40, 16, device=device)
    with pytest.raises(ValueError, match="frames"):
        radial_attention(q, q, q, 3, 16, 16)
    with pytest.raises(TypeError, match="bf16, fp16 or fp32"):
        radial_attention(q, q.half(), q, 1, 40, 16)
    with pytest.raises(ValueError, match="head dim"):
        radial_attention(q[..., :12], q[..., :12], q[..., :12], 1, 40, 16)
