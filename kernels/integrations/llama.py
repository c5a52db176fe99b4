"""vAttention decoding inside a Hugging Face Llama model, over a paged KV cache.

:func:`use_vattention` replaces the ``forward`` of each ``LlamaAttention`` of a model (in place, on
those instances only; the weights and the module tree are untouched) with one that keeps the
layer's keys and values in a :class:`~gpuos.kernels.integrations.paged_cache.PagedKVCache` and
attends with

- dense causal SDPA when a call brings several tokens (prefill; over the cached history too),
- :func:`gpuos.kernels.vattention_decode` when it brings one token per sequence (decoding), with
  the page key and value bounds the cache keeps up to date.

The paged cache replaces transformers' own cache, so the model is called with ``use_cache=False``
and explicit ``position_ids`` (a transformers cache passed in is refused, since it would not
hold the keys); :func:`generate_greedy` does that. All sequences of a batch advance together:
prompts of one length, no padding mask.
"""

from __future__ import annotations

import sys
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gpuos.extras import require
from gpuos.kernels.api import KernelArgumentError, vattention_decode
from gpuos.kernels.integrations.paged_cache import PagedKVCache
from gpuos.kernels.vattention import VAttentionConfig

# Names under which transformers versions hand a layer its cache.
_CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value")


@dataclass(frozen=True)
class DecodeRecord:
    """One decoding call of one layer: per sequence and query head ``[B, Hq]``, the share of the
    sequence attended (``density``) and whether the head's rest was computed exactly."""

    layer: int
    density: torch.Tensor
    exact: torch.Tensor


@dataclass(frozen=True)
class GreedyOutput:
    """``tokens[B, L + new]``: the prompt and the tokens chosen; ``logits[B, new, vocab]``: the
    logits each new token was chosen from."""

    tokens: torch.Tensor
    logits: torch.Tensor


class VAttentionSession:
    """What :func:`use_vattention` installed on a model: the paged caches (one per layer), the
    config, and, with ``record``, one :class:`DecodeRecord` per decoding call."""

    def __init__(self, model: torch.nn.Module, config: VAttentionConfig, page_size: int, record: bool,
                 generator: torch.Generator | None) -> None:
        self.config = config
        self.page_size = page_size
        self.record = record
        self.generator = generator
        self.caches: dict[int, PagedKVCache] = {}
        self.records: list[DecodeRecord] = []
        self._model = weakref.ref(model)
        self._patched: list[torch.nn.Module] = []

    def reset(self) -> None:
        """Forget every sequence (and the records): the next call starts a new batch."""
        self.caches.clear()
        self.records.clear()

    def remove(self) -> None:
        """Give the model its own attention back."""
        for module in self._patched:
            del module.forward  # the instance attribute; the class's forward shows through again
        self._patched.clear()
        model = self._model()
        if model is not None:
            _SESSIONS.pop(model, None)

    def mean_density(self) -> float:
        """Mean share of the sequence attended over every recorded decoding call and head."""
        if not self.records:
            raise ValueError("no decoding call was recorded (use_vattention(..., record=True), then decode)")
        return float(torch.stack([r.density.double().mean() for r in self.records]).mean())

    def _cache(self, layer: int, k: torch.Tensor) -> PagedKVCache:
        cache = self.caches.get(layer)
        if cache is None:
            cache = PagedKVCache(k.shape[0], k.shape[1], k.shape[3], page_size=self.page_size, dtype=k.dtype,
                                 device=k.device)
            self.caches[layer] = cache
        elif cache.batch != k.shape[0]:
            raise KernelArgumentError("hidden_states", f"holds {k.shape[0]} sequences but the cache {cache.batch}; "
                                                       "call reset() before a new batch")
        return cache

    def _decode(self, module: Any, q: torch.Tensor, cache: PagedKVCache) -> torch.Tensor:
        """``q[B, Hq, D]`` against the layer's cache: ``[B, Hq, D]``."""
        dim = q.shape[-1]
        scaling = float(getattr(module, "scaling", dim**-0.5))
        if scaling != dim**-0.5:
            q = q * (scaling * dim**0.5)  # vattention_decode scales by 1 / sqrt(D)
        result = vattention_decode(q.contiguous(), cache.k_cache, cache.v_cache, cache.page_table, cache.seq_lens,
                                   self.config, bounds=cache.bounds, value_bounds=cache.value_bounds,
                                   sketch=cache.sketch, generator=self.generator)
        if self.record:
            self.records.append(DecodeRecord(int(module.layer_idx), result.density, result.exact))
        return result.out


_SESSIONS: weakref.WeakKeyDictionary[torch.nn.Module, VAttentionSession] = weakref.WeakKeyDictionary()


def _default_attention_class() -> type:
    require("use_vattention's default attention_class (transformers' LlamaAttention)", "integrations",
            ("transformers",))
    from transformers.models.llama.modeling_llama import LlamaAttention

    return LlamaAttention


def _rotary(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    # The model's own rotary embedding, so that a variant of it in another model stays right.
    rotary = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
    if rotary is None:
        raise KernelArgumentError("attention_class", f"{type(module).__name__}'s module defines no "
                                                     "apply_rotary_pos_emb(q, k, cos, sin)")
    return rotary  # type: ignore[no-any-return]


def _dense(module: Any, q: torch.Tensor, cache: PagedKVCache, k: torch.Tensor, v: torch.Tensor,
           history: int) -> torch.Tensor:
    """Causal attention of ``q[B, Hq, n, D]`` over the cached history and the ``n`` new tokens."""
    scaling = float(getattr(module, "scaling", q.shape[-1] ** -0.5))
    if history == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
    keys, values = cache.keys_values()
    n = q.shape[2]
    position = torch.arange(keys.shape[2], device=q.device)
    query_position = history + torch.arange(n, device=q.device)
    allowed = position.view(1, -1) <= query_position.view(-1, 1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=scaling, enable_gqa=True)


def _patched_forward(session: VAttentionSession, rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Any:
    def forward(module: Any, hidden_states: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        # attention_mask is transformers' causal mask, which this forward builds itself; padding
        # masks are not supported (see the module docstring).
        for name in _CACHE_KEYWORDS:
            if kwargs.get(name) is not None:
                raise KernelArgumentError("use_cache", "the model runs on gpuos's paged KV cache: call it with "
                                                       "use_cache=False and position_ids (generate_greedy does)")
        if position_embeddings is None:
            raise KernelArgumentError("position_embeddings", "the attention layer was called without its rotary "
                                                             "(cos, sin) pair")
        batch, n, _ = hidden_states.shape
        dim = module.head_dim
        q = module.q_proj(hidden_states).view(batch, n, -1, dim).transpose(1, 2)
        k = module.k_proj(hidden_states).view(batch, n, -1, dim).transpose(1, 2)
        v = module.v_proj(hidden_states).view(batch, n, -1, dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = rotary(q, k, cos, sin)
        cache = session._cache(int(module.layer_idx), k)
        history = cache.longest
        cache.append(k, v)
        if n == 1:
            out = session._decode(module, q[:, :, 0], cache).unsqueeze(2)
        else:
            out = _dense(module, q, cache, k, v, history)
        out = out.transpose(1, 2).reshape(batch, n, -1).to(hidden_states.dtype)
        return module.o_proj(out), None

    return forward


def use_vattention(model: torch.nn.Module, config: VAttentionConfig | None = None, *, page_size: int = 16,
                   attention_class: type | None = None, record: bool = False,
                   generator: torch.Generator | None = None) -> VAttentionSession:
    """Make every ``attention_class`` module of ``model`` (default: transformers' ``LlamaAttention``)
    decode with vAttention under ``config`` over paged caches of ``page_size`` tokens per page.

    Returns the session (caches, records, ``reset()``, ``remove()``). ``generator`` drives the
    sampling (reproducible runs); ``record`` keeps each decoding call's density and exact heads.
    """
    if not isinstance(model, torch.nn.Module):
        raise KernelArgumentError("model", f"must be a torch.nn.Module, got {type(model).__name__}")
    if model in _SESSIONS:
        raise KernelArgumentError("model", "already decodes with vattention; call its session's remove() first")
    if config is not None and not isinstance(config, VAttentionConfig):
        raise KernelArgumentError("config", f"must be a VAttentionConfig or None, got {type(config).__name__}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise KernelArgumentError("page_size", f"must be a positive integer, got {page_size!r}")
    cls = attention_class or _default_attention_class()
    if not isinstance(cls, type):
        raise KernelArgumentError("attention_class", f"must be a class, got {cls!r}")
    modules = [m for m in model.modules() if isinstance(m, cls)]
    if not modules:
        raise KernelArgumentError("model", f"holds no {cls.__name__} module")
    for module in modules:
        missing = [a for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "layer_idx") if not hasattr(module, a)]
        if missing:
            raise KernelArgumentError("attention_class", f"{cls.__name__} lacks {', '.join(missing)}: not a "
                                                         "Llama-style attention module")
    session = VAttentionSession(model, config or VAttentionConfig(), page_size, record, generator)
    for module in modules:
        module.forward = types.MethodType(_patched_forward(session, _rotary(module)), module)
        session._patched.append(module)
    _SESSIONS[model] = session
    return session


def generate_greedy(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> GreedyOutput:
    """Greedy decoding of ``max_new_tokens`` tokens after the prompts ``input_ids[B, L]`` (one length).

    On a model given :func:`use_vattention`, the prompt is prefilled once and each new token is one
    decoding call (the session is reset first); on any other causal LM each step reruns the whole
    sequence without a cache: the plain dense baseline.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise KernelArgumentError("input_ids", "must be a [B, L] tensor of token ids with L >= 1")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise KernelArgumentError("max_new_tokens", f"must be a positive integer, got {max_new_tokens!r}")
    session = _SESSIONS.get(model)
    batch, length = input_ids.shape
    tokens = input_ids
    chosen = []

    def logits_of(ids: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + ids.shape[1], device=ids.device).expand(batch, -1)
        output = model(input_ids=ids, position_ids=positions, use_cache=False)
        logits = getattr(output, "logits", None)
        if logits is None:
            raise KernelArgumentError("model", "returned no logits: pass a causal LM (e.g. LlamaForCausalLM)")
        return logits[:, -1]

    with torch.no_grad():
        if session is not None:
            session.reset()
        last = logits_of(tokens, 0)
        for step in range(max_new_tokens):
            chosen.append(last)
            tokens = torch.cat([tokens, last.argmax(-1, keepdim=True)], dim=1)
            if step + 1 == max_new_tokens:
                break
            if session is not None:
                last = logits_of(tokens[:, -1:], length + step)
            else:
                last = logits_of(tokens, 0)
    return GreedyOutput(tokens, torch.stack(chosen, dim=1))
