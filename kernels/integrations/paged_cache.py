"""A small paged KV cache for one attention layer, in the layout ``vattention_decode`` reads.

Keys and values live in a pool of fixed-size pages ``[num_pages, page_size, Hkv, D]``; each
sequence of the batch owns a list of pages (``page_table[B, max_pages]``, logical page to
physical page) and a length (``seq_lens[B]``). Pages are handed out from a free list as
sequences grow, one sequence after another, so a sequence's pages are not adjacent in the pool;
the pool and the table double when they run out. Each logical page's elementwise key minimum
and maximum (``bounds``, as :func:`gpuos.kernels.vattention.page_key_bounds` computes them from
scratch) and its values' center and radius (``value_bounds``, as
:func:`gpuos.kernels.vattention.page_value_bounds`) are updated on every append, from the pages
the append touched alone, so decoding never rescans the cache to rank pages or size its sample.
So is the int8 key sketch (``sketch``, as :func:`gpuos.kernels.vattention.key_sketch`): a page
whose key range an append widened is coded again from its own keys, against the bounds kept.
"""

from __future__ import annotations

import torch

from gpuos.kernels.api import KernelArgumentError
from gpuos.kernels.vattention import KeySketch, page_value_bounds, sketch_codes, to_device

# Unused page-table entries point at page 0: vattention_decode wants every entry to name a page.
UNUSED_PAGE = 0


class PagedKVCache:
    """One layer's keys and values for a batch of ``batch`` sequences, ``kv_heads`` heads of ``head_dim``."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, *, page_size: int = 16,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", pages: int = 0) -> None:
        for name, value in (("batch", batch), ("kv_heads", kv_heads), ("head_dim", head_dim),
                            ("page_size", page_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KernelArgumentError(name, f"must be a positive integer, got {value!r}")
        self.page_size = page_size
        self.batch = batch
        device = torch.device(device)
        pages = max(pages, batch)
        self.k_cache = torch.zeros(pages, page_size, kv_heads, head_dim, dtype=dtype, device=device)
        self.v_cache = torch.zeros_like(self.k_cache)
        self.page_table = torch.full((batch, 1), UNUSED_PAGE, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(batch, dtype=torch.int32, device=device)
        self.key_min = torch.zeros(batch, 1, kv_heads, head_dim, dtype=torch.float32, device=device)
        self.key_max = torch.zeros_like(self.key_min)
        self.value_center = torch.zeros_like(self.key_min)
        self.value_radius = torch.zeros(batch, 1, kv_heads, dtype=torch.float32, device=device)
        self.key_codes = torch.zeros(batch, 1, page_size, kv_heads, head_dim, dtype=torch.uint8, device=device)
        self._free = list(range(pages))
        self._owned = [0] * batch  # pages each sequence holds; its lengths stay on the host too
        self._lens = [0] * batch

    @property
    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per logical page, the elementwise minimum and maximum of its keys: ``[B, max_pages, Hkv, D]`` fp32."""
        return self.key_min, self.key_max

    @property
    def value_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per logical page, its values' mean ``[B, max_pages, Hkv, D]`` and the largest distance of
        one of them from it ``[B, max_pages, Hkv]`` (fp32, rounded up)."""
        return self.value_center, self.value_radius

    @property
    def sketch(self) -> KeySketch:
        """The int8 key sketch over the key bounds: codes ``[B, max_pages, page_size, Hkv, D]`` uint8."""
        return KeySketch(self.key_codes, self.key_min, self.key_max, 8)

    @property
    def longest(self) -> int:
        return max(self._lens)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append ``n`` new tokens to every sequence: ``k, v[B, Hkv, n, D]`` (attention's layout)."""
        want = (self.batch, self.k_cache.shape[2], self.k_cache.shape[3])
        for name, x in (("k", k), ("v", v)):
            if x.dim() != 4 or (x.shape[0], x.shape[1], x.shape[3]) != want:
                raise KernelArgumentError(name, f"must be [{want[0]}, {want[1]}, n, {want[2]}], got {tuple(x.shape)}")
        if v.shape != k.shape:
            raise KernelArgumentError("v", f"shape {tuple(v.shape)} differs from k's {tuple(k.shape)}")
        n = k.shape[2]
        self._reserve([length + n for length in self._lens])
        device = self.k_cache.device
        start = self.seq_lens.long().view(-1, 1)
        pos = start + torch.arange(n, device=device)  # [B, n]
        logical = pos // self.page_size
        physical = torch.gather(self.page_table.long(), 1, logical)
        rows = (physical * self.page_size + pos % self.page_size).flatten()
        flat_k = self.k_cache.view(-1, *self.k_cache.shape[2:])
        flat_v = self.v_cache.view(-1, *self.v_cache.shape[2:])
        keys = k.transpose(1, 2).reshape(-1, *want[1:]).to(self.k_cache.dtype)
        flat_k[rows] = keys
        flat_v[rows] = v.transpose(1, 2).reshape(-1, *want[1:]).to(self.v_cache.dtype)
        # reshape: with one sequence, the transposed k may not be viewable as [B, n, Hkv * D].
        self._update_bounds(start, logical, keys.float().reshape(self.batch, n, -1))
        self.seq_lens += n
        self._lens = [length + n for length in self._lens]
        self._update_value_bounds(start, n)

    def _update_value_bounds(self, start: torch.Tensor, n: int) -> None:
        """Recompute the value bounds of the pages that positions ``start .. start + n`` touched."""
        first = start.view(-1) // self.page_size
        last = (self.seq_lens.long() - 1) // self.page_size
        # How many pages each sequence touched, from the lengths kept on the host (already
        # counting the n new tokens): neither the width nor the touched pages need a device read.
        spans = [(length - 1) // self.page_size - (length - n) // self.page_size + 1 for length in self._lens]
        logical = first.view(-1, 1) + torch.arange(max(spans), device=first.device)
        clamped = torch.minimum(logical, last.view(-1, 1))
        pages = torch.gather(self.page_table.long(), 1, clamped)
        lengths = self.seq_lens.long() - first * self.page_size
        center, radius = page_value_bounds(self.v_cache, pages, lengths)
        # The touched pages' key ranges may have grown: their codes are relative to the range,
        # which _update_bounds has already folded the new keys into.
        seq = torch.arange(self.batch, device=first.device).view(-1, 1)
        codes = sketch_codes(self.k_cache, pages, lengths, self.key_min[seq, clamped], self.key_max[seq, clamped])
        rows, cols = to_device([b for b, span in enumerate(spans) for _ in range(span)]
                               + [c for span in spans for c in range(span)], first.device).view(2, -1)
        self.value_center[rows, logical[rows, cols]] = center[rows, cols]
        self.value_radius[rows, logical[rows, cols]] = radius[rows, cols]
        self.key_codes[rows, logical[rows, cols]] = codes[rows, cols]

    def _update_bounds(self, start: torch.Tensor, logical: torch.Tensor, keys: torch.Tensor) -> None:
        """Fold ``keys[B, n, Hkv * D]``, written at logical pages ``logical[B, n]`` from position
        ``start[B, 1]`` on, into the page bounds."""
        lo = self.key_min.view(self.batch, self.key_min.shape[1], -1)
        hi = self.key_max.view(self.batch, self.key_max.shape[1], -1)
        page_start = torch.arange(lo.shape[1], device=lo.device) * self.page_size
        # Pages that held no key before this append start from the empty set.
        fresh = (page_start >= start).unsqueeze(-1)
        lo.masked_fill_(fresh, torch.inf)
        hi.masked_fill_(fresh, -torch.inf)
        index = logical.unsqueeze(-1).expand_as(keys)
        lo.scatter_reduce_(1, index, keys, "amin")
        hi.scatter_reduce_(1, index, keys, "amax")
        # Pages still past the end read as zeros, as page_key_bounds leaves them.
        unused = (page_start >= start + keys.shape[1]).unsqueeze(-1)
        lo.masked_fill_(unused, 0.0)
        hi.masked_fill_(unused, 0.0)

    def _reserve(self, lengths: list[int]) -> None:
        """Give every sequence enough pages for ``lengths`` tokens."""
        needed = [-(-length // self.page_size) for length in lengths]
        if max(needed) > self.page_table.shape[1]:
            self._grow_table(max(max(needed), 2 * self.page_table.shape[1]))
        missing = sum(need - owned for need, owned in zip(needed, self._owned, strict=True))
        if missing > len(self._free):
            self._grow_pool(max(self.k_cache.shape[0] + missing, 2 * self.k_cache.shape[0]))
        for b, need in enumerate(needed):
            if need > self._owned[b]:
                take = need - self._owned[b]
                pages = torch.tensor(self._free[:take], dtype=torch.int32)
                del self._free[:take]
                self.page_table[b, self._owned[b]: need] = pages.to(self.page_table.device)
                self._owned[b] = need

    def _grow_table(self, width: int) -> None:
        extra = width - self.page_table.shape[1]
        self.page_table = torch.nn.functional.pad(self.page_table, (0, extra), value=UNUSED_PAGE)
        self.key_min = torch.nn.functional.pad(self.key_min, (0, 0, 0, 0, 0, extra))
        self.key_max = torch.nn.functional.pad(self.key_max, (0, 0, 0, 0, 0, extra))
        self.value_center = torch.nn.functional.pad(self.value_center, (0, 0, 0, 0, 0, extra))
        self.value_radius = torch.nn.functional.pad(self.value_radius, (0, 0, 0, extra))
        self.key_codes = torch.nn.functional.pad(self.key_codes, (0, 0, 0, 0, 0, 0, 0, extra))

    def _grow_pool(self, pages: int) -> None:
        old = self.k_cache.shape[0]
        grown = (pages - old, *self.k_cache.shape[1:])
        self.k_cache = torch.cat([self.k_cache, self.k_cache.new_zeros(grown)])
        self.v_cache = torch.cat([self.v_cache, self.v_cache.new_zeros(grown)])
        self._free.extend(range(old, pages))

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sequence's keys and values gathered in order, ``[B, Hkv, longest, D]`` (positions
        past a sequence's length hold whatever their page slot holds: mask them)."""
        positions = torch.arange(self.longest, device=self.k_cache.device)
        logical = (positions // self.page_size).expand(self.batch, -1)
        rows = torch.gather(self.page_table.long(), 1, logical) * self.page_size + positions % self.page_size
        flat_k = self.k_cache.view(-1, *self.k_cache.shape[2:])
        flat_v = self.v_cache.view(-1, *self.v_cache.shape[2:])
        return flat_k[rows].transpose(1, 2), flat_v[rows].transpose(1, 2)
