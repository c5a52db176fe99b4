"""The two radial mask rules side by side: what each keeps and what the block-sparse kernel computes.

For a shape (frames, tokens per frame, block, sink) and each rule in
:data:`gpuos.kernels.radial_spec.MASKS`: the token density (attended token pairs over ``n**2``),
the block density (block pairs the kernel computes over ``ceil(n / block)**2``), the share of
those blocks that are partial (masked inside), and the ideal speed-up over dense attention
(``1 / block density``: the kernel at dense attention's per-block speed). Torch-free, so it runs
at real video lengths, where the ``n x n`` reference mask would not fit in memory::

    python -m gpuos.kernels.reference.radial_compare [--frames 21 81] [--tokens-per-frame 1560]
        [--block 128] [--no-sink]

Token pairs are counted per frame pair from the window table; the tests check the count against
:func:`gpuos.kernels.reference.radial.radial_mask` on small shapes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from gpuos.kernels.radial_spec import DEFAULT_MASK, MASKS, check_mask, radial_layout, window_table


@dataclass(frozen=True)
class RuleDensity:
    """One rule's figures at one shape."""

    mask: str
    frames: int
    tokens_per_frame: int
    block: int
    sink: bool
    token_density: float
    block_density: float
    partial_share: float

    @property
    def ideal_speedup(self) -> float:
        """Dense attention's block pairs over the computed ones."""
        return 1.0 / self.block_density


def _window_pairs(tokens_per_frame: int, width: int) -> int:
    """Token pairs ``(k, l)`` of one frame pair with ``|k - l| < width``."""
    w = min(width, tokens_per_frame)
    return tokens_per_frame * (2 * w - 1) - w * (w - 1) if w > 0 else 0


def attended_pairs(frames: int, tokens_per_frame: int, block: int = 128, sink: bool = True,
                   mask: str = DEFAULT_MASK) -> int:
    """How many (query, key) token pairs the rule ``mask`` attends, in O(frames) time."""
    check_mask(mask)
    t = tokens_per_frame
    widths = window_table(frames, t, block, mask)
    total = frames * t * t  # d = 0: every frame with itself
    for d in range(1, frames):
        # 2 (F - d) ordered frame pairs at distance d; with the sink, the pair (d, 0) is whole.
        windowed = 2 * (frames - d) - (1 if sink else 0)
        total += windowed * _window_pairs(t, widths[d]) + (t * t if sink else 0)
    return total


def rule_density(frames: int, tokens_per_frame: int, block: int = 128, sink: bool = True,
                 mask: str = DEFAULT_MASK) -> RuleDensity:
    """The figures of rule ``mask`` at one shape (building its block layout: seconds at very long videos)."""
    layout = radial_layout(frames, tokens_per_frame, block, sink, mask)  # checks the shape and the rule
    partial = sum(sum(flags) for flags in layout.partial)
    n = frames * tokens_per_frame
    return RuleDensity(
        mask=mask, frames=frames, tokens_per_frame=tokens_per_frame, block=block, sink=sink,
        token_density=attended_pairs(frames, tokens_per_frame, block, sink, mask) / n**2,
        block_density=layout.density, partial_share=partial / layout.active_blocks,
    )


def compare(frames: int, tokens_per_frame: int, block: int = 128, sink: bool = True) -> tuple[RuleDensity, ...]:
    """:func:`rule_density` for every rule in :data:`MASKS`, in that order."""
    return tuple(rule_density(frames, tokens_per_frame, block, sink, mask) for mask in MASKS)


def format_table(rows: Sequence[RuleDensity]) -> str:
    """A Markdown table of ``rows``, one line per (shape, rule)."""
    lines = ["| frames | tokens | block | rule | token density | block density | partial share | ideal speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row.frames} | {row.frames * row.tokens_per_frame:,} | {row.block} | {row.mask} | "
                     f"{row.token_density:.1%} | {row.block_density:.1%} | {row.partial_share:.1%} | "
                     f"{row.ideal_speedup:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[21, 81],
                        help="latent frames, one shape each (Wan 480p: 21 for 81 video frames; 81 for 4x that)")
    parser.add_argument("--tokens-per-frame", type=int, default=1560, help="tokens per latent frame (Wan 480p: 30 x 52)")
    parser.add_argument("--block", type=int, default=128, help="block size of the sparse layout")
    parser.add_argument("--no-sink", action="store_true", help="without the first-frame attention sink")
    args = parser.parse_args(argv)
    try:
        rows = [row for frames in args.frames
                for row in compare(frames, args.tokens_per_frame, args.block, not args.no_sink)]
    except ValueError as error:
        print(f"radial_compare: {error}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
