"""A paged KV cache for one attention layer, in the layout ``gpuos.kernels.vattention_decode`` reads.

Physical pages are handed out from one pool as sequences cross page boundaries, so a sequence's
pages are scattered through the pool and only the page table says where they are. The per-page
key bounds that page selection reads are brought up to date for the pages each append touches
(equal to ``page_key_bounds`` of the whole cache, at the cost of the appended tokens' pages).
"""

from __future__ import annotations

import math

import torch

from gpuos.kernels.api import KernelArgumentError


class PagedKVCache:
    """``k_pages, v_pages [num_pages, page_size, Hkv, D]``, ``page_table [B, max_pages]`` int32,
    ``seq_lens [B]`` int32 and ``bounds`` (per-page key minima and maxima ``[B, max_pages, Hkv, D]``
    fp32), for ``batch`` sequences of at most ``max_tokens`` tokens each."""

    def __init__(self, batch: int, num_kv_heads: int, head_dim: int, max_tokens: int, *, page_size: int = 16,
                 dtype: torch.dtype = torch.float16, device: torch.device | str = "cuda") -> None:
        for name, value in (("batch", batch), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                            ("max_tokens", max_tokens), ("page_size", page_size)):
            if value < 1:
                raise KernelArgumentError(name, f"expected >= 1, got {value}")
        self.page_size = page_size
        self.max_tokens = max_tokens
        max_pages = math.ceil(max_tokens / page_size)
        shape = (batch * max_pages, page_size, num_kv_heads, head_dim)
        self.k_pages = torch.zeros(shape, dtype=dtype, device=device)
        self.v_pages = torch.zeros(shape, dtype=dtype, device=device)
        self.page_table = torch.zeros(batch, max_pages, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(batch, dtype=torch.int32, device=device)
        bound_shape = (batch, max_pages, num_kv_heads, head_dim)
        self.lo = torch.zeros(bound_shape, dtype=torch.float32, device=device)
        self.hi = torch.zeros(bound_shape, dtype=torch.float32, device=device)
        self._lengths = [0] * batch  # host copy of seq_lens: no device sync per append
        self._next_page = 0

    @property
    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lo, self.hi

    @property
    def length(self) -> int:
        """Tokens held by the longest sequence."""
        return max(self._lengths)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write ``n`` new tokens per sequence, ``k, v [B, Hkv, n, D]``, after those already held."""
        batch, num_kv, n, dim = k.shape
        if v.shape != k.shape or (batch, num_kv, dim) != (self.page_table.shape[0], *self.k_pages.shape[2:]):
            raise KernelArgumentError("k", f"expected k, v of shape [B, Hkv, n, D] = [{self.page_table.shape[0]}, "
                                           f"{self.k_pages.shape[2]}, n, {self.k_pages.shape[3]}], got "
                                           f"{tuple(k.shape)}, {tuple(v.shape)}")
        size = self.page_size
        for b in range(batch):
            start, stop = self._lengths[b], self._lengths[b] + n
            if stop > self.max_tokens:
                raise KernelArgumentError("k", f"sequence {b} would hold {stop} tokens; the cache was made for "
                                               f"max_tokens={self.max_tokens}")
            for page in range(math.ceil(start / size), math.ceil(stop / size)):
                self.page_table[b, page] = self._next_page
                self._next_page += 1
            pos = torch.arange(start, stop, device=k.device)
            phys = self.page_table[b, pos // size].long()
            self.k_pages[phys, pos % size] = k[b].transpose(0, 1).to(self.k_pages.dtype)
            self.v_pages[phys, pos % size] = v[b].transpose(0, 1).to(self.v_pages.dtype)
            self._lengths[b] = stop
            self._refresh_bounds(b, start // size, math.ceil(stop / size))
        self.seq_lens.copy_(torch.tensor(self._lengths, dtype=torch.int32))

    def _refresh_bounds(self, b: int, first: int, last: int) -> None:
        # Each touched page's bounds over its valid slots, as page_key_bounds computes them.
        keys = self.k_pages[self.page_table[b, first:last].long()].float()
        slot = torch.arange(first * self.page_size, last * self.page_size, device=keys.device)
        valid = (slot < self._lengths[b]).view(last - first, self.page_size, 1, 1)
        self.lo[b, first:last] = keys.masked_fill(~valid, math.inf).amin(1)
        self.hi[b, first:last] = keys.masked_fill(~valid, -math.inf).amax(1)
