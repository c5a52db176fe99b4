"""The ``radial-dit`` kernel job and Radial Attention's static mask at block granularity (torch-free).

Radial Attention (arXiv 2506.19852) attends, for a video of ``frames`` frames of
``tokens_per_frame`` tokens each (token ``t`` is in frame ``t // T`` at spatial index ``t % T``),
through a static mask. With ``d`` the distance between the query's and the key's frames and
``r = floor(log2(max(d, 1)))`` its band, both rules below keep, per frame distance, the key
tokens whose spatial index is within a window of the query's (``|s_q - s_k| < w[d]``, see
:func:`window_table`); ``d <= 1`` (band 0) is dense; with ``sink``, every query also attends
to the whole first frame. They differ in the window:

- ``mask="paper"`` (the default), the paper's Equation 4: ``|s_q - s_k| + 1 <= T / 2**r``
  while ``2**r <= T``, so ``w[d] = floor(T / 2**r)``; once that would fall below one token, only
  the diagonal ``s_q == s_k`` on every ``ceil(2**r / T)``-th frame distance. The mask is
  token-level; the block layout keeps every block it touches and masks inside it.
- ``mask="gpuos"``: ``w[d] = ceil(T / 2**r)`` (``|s_q - s_k| < T / 2**r``, one diagonal wider
  each side where ``T / 2**r`` is not whole); once that is narrower than one block
  (``T / 2**r < block``), a one-block window (``|s_q - s_k| < block``) on every
  ``ceil(block * 2**r / T)``-th frame distance, so that the band's density still halves while the
  kernel works on whole blocks.

Each band holds about twice as many frame distances as the one before it and half the density,
so under either rule a query attends to O(T) keys per band and O(T log frames) keys in all:
O(n log n) token pairs. The kernel computes whole blocks, though, and the paper's narrow diagonals
cost at least a block per block row on every frame distance until ``2**r > T``; so in computed
blocks only the gpuos rule stays O(n log n) at realistic lengths (figures in docs/kernels/radial.md).

Everything here is plain Python so that the daemon can validate jobs and price them without
torch (the cost model estimates the layout's block count in O(frames) time, since building the
layout of a very long video takes seconds); :mod:`gpuos.kernels.radial` turns the
:class:`RadialLayout` into tensors for the Triton kernel.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gpuos.kernels.registry import KernelCost, KernelSpec, Param, register

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


MASKS = ("paper", "gpuos")
DEFAULT_MASK = "paper"


def check_mask(mask: str) -> str:
    """``mask`` itself if it names a rule in :data:`MASKS`; otherwise a ValueError naming ``mask``."""
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(repr(m) for m in MASKS)}; got {mask!r}")
    return mask


def _band_scale(d: int) -> int:
    """``2**r`` for frame distance ``d``, ``r = floor(log2(max(d, 1)))``."""
    return 1 << (max(d, 1).bit_length() - 1)


def _paper_width(d: int, t: int) -> int:
    scale = _band_scale(d)
    if scale <= t:
        return t // scale  # |x| + 1 <= T / 2^r  <=>  |x| < floor(T / 2^r), x an integer
    return 1 if d % -(-scale // t) == 0 else 0  # only x == 0, on every ceil(2^r / T)-th distance


def _gpuos_width(d: int, t: int, block: int) -> int:
    scale = _band_scale(d)
    if scale == 1:
        return t
    if t >= block * scale:
        return -(-t // scale)  # |x| < T/2^r  <=>  |x| < ceil(T/2^r)
    stride = -(-(block * scale) // t)
    return block if d % stride == 0 else 0


def window_table(frames: int, tokens_per_frame: int, block: int, mask: str = DEFAULT_MASK) -> tuple[int, ...]:
    """Per frame distance ``d``, the spatial window: key ``k`` is attended when ``|s_q - s_k| < w[d]``.

    ``w[d] == 0`` marks a frame distance that is dropped (apart from the sink). ``block`` matters
    only to ``mask="gpuos"``; the paper's rule is defined token by token.
    """
    check_mask(mask)
    if mask == "paper":
        return tuple(_paper_width(d, tokens_per_frame) for d in range(frames))
    return tuple(_gpuos_width(d, tokens_per_frame, block) for d in range(frames))


@dataclass(frozen=True)
class RadialLayout:
    """The mask as a block-sparse layout: per query block, the key blocks it attends to.

    ``partial[qb][i]`` says that block pair ``(qb, key_blocks[qb][i])`` holds both attended and
    masked-out tokens, so the kernel must apply the token-level mask there; on the other pairs
    every (in-range) token pair is attended.
    """

    frames: int
    tokens_per_frame: int
    block: int
    sink: bool
    mask: str
    widths: tuple[int, ...]
    key_blocks: tuple[tuple[int, ...], ...]
    partial: tuple[tuple[bool, ...], ...]

    @property
    def seq_len(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def num_blocks(self) -> int:
        return len(self.key_blocks)

    @property
    def active_blocks(self) -> int:
        return sum(len(row) for row in self.key_blocks)

    @property
    def max_blocks_per_row(self) -> int:
        return max(len(row) for row in self.key_blocks)

    @property
    def density(self) -> float:
        """Share of the ``num_blocks**2`` block pairs that the kernel computes."""
        return self.active_blocks / self.num_blocks**2


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive integer ranges, sorted, with touching ranges joined."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _covers(merged: list[tuple[int, int]], lo: int, hi: int) -> bool:
    i = bisect.bisect_right(merged, (lo, float("inf"))) - 1
    return i >= 0 and merged[i][0] <= lo and hi <= merged[i][1]


@lru_cache(maxsize=32)
def radial_layout(frames: int, tokens_per_frame: int, block: int = 128, sink: bool = True,
                  mask: str = DEFAULT_MASK) -> RadialLayout:
    """Build (once per shape and rule) the block-sparse layout of the radial mask; see the module docstring.

    Works on ranges, not on the n x n mask: a query block splits into at most a few
    per-frame segments of spatial indices ``[a1, a2]``; against key frame ``j`` with window
    ``w``, some query of the segment attends to the keys ``[a1 - w + 1, a2 + w - 1]`` and every
    query attends to ``[a2 - w + 1, a1 + w - 1]`` (both clipped to the frame).
    """
    if frames < 1 or tokens_per_frame < 1 or block < 1:
        raise ValueError(f"frames ({frames}), tokens_per_frame ({tokens_per_frame}) and block ({block}) must be >= 1")
    t = tokens_per_frame
    n = frames * t
    nb = -(-n // block)
    widths = window_table(frames, t, block, mask)
    key_blocks: list[tuple[int, ...]] = []
    partial: list[tuple[bool, ...]] = []
    for qb in range(nb):
        q_lo, q_hi = qb * block, min(n, (qb + 1) * block) - 1
        active = bytearray(nb)
        full_per_segment: list[list[tuple[int, int]]] = []
        for i in range(q_lo // t, q_hi // t + 1):
            a1, a2 = max(q_lo, i * t) - i * t, min(q_hi, i * t + t - 1) - i * t
            any_ranges: list[tuple[int, int]] = []
            full_ranges: list[tuple[int, int]] = []
            for j in range(frames):
                w = t if sink and j == 0 else widths[abs(i - j)]
                if w == 0:
                    continue
                any_ranges.append((j * t + max(0, a1 - w + 1), j * t + min(t - 1, a2 + w - 1)))
                f_lo, f_hi = max(0, a2 - w + 1), min(t - 1, a1 + w - 1)
                if f_lo <= f_hi:
                    full_ranges.append((j * t + f_lo, j * t + f_hi))
            for lo, hi in any_ranges:
                active[lo // block: hi // block + 1] = b"\x01" * (hi // block - lo // block + 1)
            full_per_segment.append(_merge(full_ranges))
        row = tuple(kb for kb in range(nb) if active[kb])
        key_blocks.append(row)
        partial.append(tuple(
            not all(_covers(m, kb * block, min(n, (kb + 1) * block) - 1) for m in full_per_segment) for kb in row
        ))
    return RadialLayout(frames, t, block, sink, mask, widths, tuple(key_blocks), tuple(partial))


def estimated_active_blocks(frames: int, tokens_per_frame: int, block: int = 128, sink: bool = True,
                            mask: str = DEFAULT_MASK) -> float:
    """About how many block pairs :func:`radial_layout` keeps, in O(frames) time (for pricing jobs).

    Per frame pair with window ``w``: the ``R = (T - 1) / block + 1`` block rows meeting the query
    frame (on average over alignments), each touching ``min(R, (2w - 2) / block + 2)`` key blocks.
    Blocks that straddle two frames count twice, so it runs high where frames are only a few
    blocks long (about 1.2x at Wan 480p shapes).
    """
    t = tokens_per_frame
    rows = (t - 1) / block + 1
    total = 0.0
    for d, w in enumerate(window_table(frames, t, block, mask)):
        pairs = frames if d == 0 else 2 * (frames - d)
        if sink and d > 0:
            pairs -= 1  # the pair (d, 0) is attended in full instead
        if w > 0:
            total += pairs * rows * min(rows, (2 * min(w, t) - 2) / block + 2)
    if sink:
        total += (frames - 1) * rows * rows
    nb = -(-frames * t // block)
    return min(total, float(nb * nb))


def cost(params: Mapping[str, Any]) -> KernelCost:
    """FLOPs and bytes of one radial attention call: the kernel computes whole active blocks."""
    block = int(params["block"])
    frames, t = int(params["frames"]), int(params["tokens_per_frame"])
    active = estimated_active_blocks(frames, t, block, bool(params["sink"]), str(params["mask"]))
    bh = int(params["batch"]) * int(params["heads"])
    dim = int(params["dim"])
    elt = DTYPE_BYTES[str(params["dtype"])]
    n = frames * t
    # Q read and O written once; K and V read once per active block pair.
    moved = bh * dim * elt * (2 * n + 2 * active * block)
    # Q, K, V and O, plus the layout: an int32 key block index and an int8 flag per active pair.
    memory = 4 * bh * n * dim * elt + int(5 * active) + 4 * frames
    return KernelCost(flops_per_step=4.0 * bh * dim * active * block * block, bytes_per_step=float(moved),
                      memory_bytes=memory)


SPEC = register(KernelSpec(
    name="radial-dit",
    description="Radial Attention (static O(n log n) spatio-temporal mask) for video DiT self-attention, "
                "as a block-sparse Triton kernel",
    params=(
        Param("batch", "int", 1, "videos per call", minimum=1, maximum=64),
        Param("heads", "int", 12, "attention heads", minimum=1, maximum=128),
        Param("dim", "choice", "128", "head dimension", choices=("16", "32", "64", "128", "256")),
        Param("frames", "int", 21, "latent frames (Wan 480p, 81 video frames: 21)", minimum=1, maximum=1024),
        Param("tokens_per_frame", "int", 1560, "tokens per latent frame (Wan 480p: 30 x 52)",
              minimum=1, maximum=65536),
        Param("block", "choice", "128", "block size of the sparse layout and the kernel's tiles",
              choices=("16", "32", "64", "128")),
        Param("sink", "bool", True, "every token also attends to the whole first frame"),
        Param("mask", "choice", DEFAULT_MASK, "the mask's rule: the paper's Equation 4 (token-level), or gpuos's "
              "block-wide variant (docs/kernels/radial.md)", choices=MASKS),
        Param("dtype", "choice", "bf16", "input and output dtype (accumulation is fp32)",
              choices=("bf16", "fp16", "fp32")),
        Param("steps", "int", 10, "kernel calls the job runs", minimum=1, maximum=100000),
    ),
    cost=cost,
    runner="gpuos.kernels.radial:run_job",
))
