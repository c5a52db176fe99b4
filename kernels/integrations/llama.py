"""vAttention decoding inside a Hugging Face-style Llama model.

:class:`VAttentionLlamaAttention` replaces a ``LlamaAttention``-like module (``q_proj``,
``k_proj``, ``v_proj``, ``o_proj``, ``head_dim``; grouped-query heads read from the projections'
sizes) and keeps its own paged KV cache: the prompt (prefill) runs densely through PyTorch SDPA
and fills the cache, and each later one-token step appends its key and value and runs
``gpuos.kernels.vattention_decode`` over the cache, with page bounds kept up to date as pages
fill. ``forward`` takes the arguments Hugging Face's decoder layer passes and returns
``(attn_output, None)``, as ``LlamaAttention.forward`` does.

The model must be called without Hugging Face's own cache (``use_cache=False``) and with
``position_ids`` for each step (the cache here is invisible to it): :func:`generate_greedy` is
that loop. Prompts in a batch must have one length (no padding).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gpuos.kernels import api
from gpuos.kernels.api import KernelArgumentError, VAttentionConfig, VAttentionResult
from gpuos.kernels.integrations.paged_cache import PagedKVCache

# Hugging Face's cache arguments across versions. Its other per-call arguments (position_ids,
# cache_position, use_cache, ...) are bookkeeping this layer does not need and are ignored.
_HF_CACHES = ("cache", "past_key_value", "past_key_values")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotary embedding of ``x [B, H, N, D]`` with ``cos, sin [B, N, D]``."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


class VAttentionLlamaAttention(torch.nn.Module):
    """A Llama attention layer whose decode steps run vAttention over a paged KV cache.

    ``attention`` lends its projections (the same modules, so the same weights); ``config`` (a
    ``VAttentionConfig``) carries ``epsilon``, ``delta`` and the deterministic set to every decode
    step; ``max_tokens`` bounds prompt plus generated tokens per sequence. After each decode step
    ``last_result`` holds the kernel's ``VAttentionResult`` (sample sizes, density, exact heads).
    """

    def __init__(self, attention: torch.nn.Module, config: VAttentionConfig | None = None, *, max_tokens: int,
                 page_size: int = 16, generator: torch.Generator | None = None) -> None:
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"):
            if not hasattr(attention, name):
                raise KernelArgumentError("attention", f"expected a Llama-style attention module with {name}")
        self.q_proj, self.k_proj = attention.q_proj, attention.k_proj
        self.v_proj, self.o_proj = attention.v_proj, attention.o_proj
        self.head_dim = int(attention.head_dim)
        self.num_heads = self.q_proj.out_features // self.head_dim
        self.num_key_value_heads = self.k_proj.out_features // self.head_dim
        scaling = getattr(attention, "scaling", self.head_dim**-0.5)
        if abs(scaling - self.head_dim**-0.5) > 1e-12:
            raise KernelArgumentError("attention", f"expected the softmax scale head_dim ** -0.5, got {scaling}")
        self.layer_idx = getattr(attention, "layer_idx", None)
        self.vattention = config or VAttentionConfig()
        self.max_tokens = max_tokens
        self.page_size = page_size
        self.generator = generator
        self.cache: PagedKVCache | None = None
        self.last_result: VAttentionResult | None = None

    def reset(self) -> None:
        """Forget the cached sequences: the next call is a prefill."""
        self.cache = None
        self.last_result = None

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        for name in _HF_CACHES:
            if kwargs.get(name) is not None:
                raise KernelArgumentError(name, "this layer keeps its own paged KV cache; call the model with "
                                                "use_cache=False and position_ids (see generate_greedy)")
        batch, n, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, n, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, n, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, n, -1, self.head_dim).transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.cache is None or self.cache.length == 0:
            out = self._prefill(q, k, v, attention_mask)
        elif n == 1:
            out = self._decode(q, k, v)
        else:
            raise KernelArgumentError("hidden_states", f"expected one token per decode step, got {n}; "
                                                       "call reset() before a new prompt")
        out = out.transpose(1, 2).reshape(batch, n, self.num_heads * self.head_dim)
        return self.o_proj(out), None

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 attention_mask: torch.Tensor | None) -> torch.Tensor:
        self.cache = PagedKVCache(q.shape[0], self.num_key_value_heads, self.head_dim, self.max_tokens,
                                  page_size=self.page_size, dtype=k.dtype, device=k.device)
        self.cache.append(k, v)
        group = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        if attention_mask is not None:
            # Hugging Face's 4-D mask (causal, no padding), as its SDPA path slices it.
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask[..., : k.shape[-2]])
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[-2] > 1)

    def _decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        assert cache is not None
        cache.append(k, v)  # the new token attends to itself, as after Hugging Face's cache update
        result = api.vattention_decode(q[:, :, 0].contiguous(), cache.k_pages, cache.v_pages, cache.page_table,
                                       cache.seq_lens, self.vattention, bounds=cache.bounds, generator=self.generator)
        self.last_result = result
        return result.out.unsqueeze(2)


def use_vattention(model: torch.nn.Module, config: VAttentionConfig | None = None, *, max_tokens: int,
                   page_size: int = 16, generator: torch.Generator | None = None) -> list[VAttentionLlamaAttention]:
    """Replace every Llama-style attention module of ``model`` (one with ``q_proj``, ``k_proj``,
    ``v_proj``, ``o_proj`` and ``head_dim``) by a :class:`VAttentionLlamaAttention` sharing its
    weights; returns the new modules in model order."""
    targets = [(name, module) for name, module in model.named_modules()
               if all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"))
               and not isinstance(module, VAttentionLlamaAttention)]
    if not targets:
        raise KernelArgumentError("model", "has no Llama-style attention module (q_proj, k_proj, v_proj, o_proj, "
                                           "head_dim)")
    replaced = []
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = VAttentionLlamaAttention(module, config, max_tokens=max_tokens, page_size=page_size,
                                         generator=generator)
        setattr(parent, child, layer)
        replaced.append(layer)
    return replaced


@torch.no_grad()
def generate_greedy(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of ``max_new_tokens`` after ``input_ids [B, n]`` through layers installed by
    :func:`use_vattention`: one prefill call, then one call per token with its ``position_ids``.
    Returns the tokens ``[B, n + max_new_tokens]`` and each step's logits ``[B, max_new_tokens, vocab]``."""
    for module in model.modules():
        if isinstance(module, VAttentionLlamaAttention):
            module.reset()
    batch, n = input_ids.shape
    logits = _logits(model(input_ids=input_ids, use_cache=False))[:, -1]
    tokens, steps = [input_ids], []
    for step in range(max_new_tokens):
        steps.append(logits)
        token = logits.argmax(-1, keepdim=True)
        tokens.append(token)
        if step + 1 < max_new_tokens:
            position = torch.full((batch, 1), n + step, device=input_ids.device, dtype=torch.long)
            logits = _logits(model(input_ids=token, position_ids=position, use_cache=False))[:, -1]
    return torch.cat(tokens, 1), torch.stack(steps, 1)


def _logits(output: Any) -> torch.Tensor:
    logits: torch.Tensor = getattr(output, "logits", output)
    return logits
