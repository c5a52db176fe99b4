"""How the paper's radial mask and gpuos's first rule differ: the figures in docs/kernels/radial.md.

    python -m gpuos.kernels.reference.radial_compare [--frames 21 81] [--rows 256] [--heads 2]

For each video length at Wan2.1 480p (1560 tokens per latent frame, block 128, sink on) it prints
each rule's token density and block density, the number of token pairs on which the two masks
differ, and the largest and mean absolute difference between the two rules' attention outputs on
random inputs (standard normal q, k, v, head dim 128, float64 softmax). The outputs are computed
exactly for ``--rows`` query tokens drawn at random (seeded) from the whole video against every
key, so the full Wan shapes fit on a CPU; the sampled rows are the only approximation.

Both rules are one window per frame distance (``|s_q - s_k| < w[d]``), so their attended sets on
a frame pair are nested and the pairs that differ are counted exactly from the window tables.
"""

from __future__ import annotations

import argparse

import torch

from gpuos.kernels.radial_spec import radial_layout, window_table
from gpuos.kernels.reference.radial import attention_reference, radial_mask

WAN_TOKENS_PER_FRAME = 30 * 52
BLOCK = 128


def _pairs_within(window: int, tokens_per_frame: int) -> int:
    """Token pairs of one frame pair with ``|s_q - s_k| < window``."""
    t, w = tokens_per_frame, min(window, tokens_per_frame)
    return 0 if w <= 0 else t * (2 * w - 1) - w * (w - 1)


def token_counts(frames: int, tokens_per_frame: int, block: int, sink: bool = True) -> dict[str, int]:
    """Attended token pairs under each rule, and the pairs on which the two rules differ."""
    t = tokens_per_frame
    paper = window_table(frames, t, block, "paper")
    gpuos = window_table(frames, t, block, "gpuos")
    counts = {"paper": 0, "gpuos": 0, "differ": 0}
    for i in range(frames):
        for j in range(frames):
            if sink and j == 0:
                counts["paper"] += t * t
                counts["gpuos"] += t * t
                continue
            p, g = _pairs_within(paper[abs(i - j)], t), _pairs_within(gpuos[abs(i - j)], t)
            counts["paper"] += p
            counts["gpuos"] += g
            counts["differ"] += abs(p - g)
    return counts


def output_difference(frames: int, tokens_per_frame: int, block: int, rows: int, heads: int, dim: int = 128,
                      seed: int = 0, chunk: int = 32) -> tuple[float, float, float]:
    """Max and mean ``|out_paper - out_gpuos|`` over ``rows`` sampled queries, and mean ``|out_paper|``."""
    n = frames * tokens_per_frame
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, dim, generator=gen, dtype=torch.float64) for _ in range(3))
    picked = torch.randperm(n, generator=gen)[:rows].sort().values
    largest, total, magnitude = 0.0, 0.0, 0.0
    for start in range(0, len(picked), chunk):
        sub = picked[start:start + chunk]
        outs = [attention_reference(q[:, :, sub], k, v,
                                    radial_mask(frames, tokens_per_frame, block, rows=sub, mask=mask))
                for mask in ("paper", "gpuos")]
        diff = (outs[0] - outs[1]).abs()
        largest = max(largest, diff.max().item())
        total += diff.sum().item()
        magnitude += outs[0].abs().sum().item()
    count = len(picked) * heads * dim
    return largest, total / count, magnitude / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[21, 81], help="latent frames (21: 81 video frames)")
    parser.add_argument("--rows", type=int, default=256, help="query tokens sampled for the output difference")
    parser.add_argument("--heads", type=int, default=2)
    args = parser.parse_args(argv)
    t = WAN_TOKENS_PER_FRAME
    print("| latent frames | tokens | token density paper / gpuos | block density paper / gpuos "
          "| pairs that differ | max abs output diff | mean abs output diff | mean abs output |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for frames in args.frames:
        n = frames * t
        counts = token_counts(frames, t, BLOCK)
        blocks = {mask: radial_layout(frames, t, BLOCK, True, mask).density for mask in ("paper", "gpuos")}
        largest, mean, magnitude = output_difference(frames, t, BLOCK, args.rows, args.heads)
        print(f"| {frames} | {n:,} | {counts['paper'] / n**2:.2%} / {counts['gpuos'] / n**2:.2%} "
              f"| {blocks['paper']:.2%} / {blocks['gpuos']:.2%} "
              f"| {counts['differ']:,} ({counts['differ'] / n**2:.2%} of n^2) "
              f"| {largest:.3g} | {mean:.3g} | {magnitude:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
