"""Radial and SLA attention as diffusers-style attention processors for video transformers.

A processor is called as diffusers' ``Attention`` calls ``AttnProcessor2_0``:
``processor(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None)``.
It reads ``attn.to_q/to_k/to_v/to_out`` and ``attn.heads`` (and, when present, ``norm_q``,
``norm_k``, ``spatial_norm``, ``group_norm``, ``norm_cross``, ``residual_connection``,
``rescale_output_factor``), reshapes to ``[B, heads, N, head_dim]`` and does what
``AttnProcessor2_0`` does, except that self-attention runs the sparse kernel over the video's
``frames x tokens_per_frame`` tokens (frame-major). As in ``AttnProcessor2_0`` the softmax scale
is ``head_dim ** -0.5`` (``attn.scale`` is not read).

Cross-attention (``encoder_hidden_states`` given) runs dense SDPA: the sparse patterns are
defined between video tokens only. ``attention_mask`` is refused (the sparse pattern is the
mask), and so is any other non-None keyword (e.g. a rotary embedding, which this contract does
not apply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gpuos.kernels import api
from gpuos.kernels.api import KernelArgumentError

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_video(name: str, frames: int, tokens_per_frame: int) -> None:
    for field, value in (("frames", frames), ("tokens_per_frame", tokens_per_frame)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KernelArgumentError(field, f"expected an int >= 1 for {name}, got {value!r}")


def _process(attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
             attention_mask: torch.Tensor | None, temb: torch.Tensor | None, kwargs: dict[str, Any],
             video_tokens: int, attend: Attend, who: str) -> torch.Tensor:
    """``AttnProcessor2_0``'s steps with ``attend(q, k, v)`` for self-attention."""
    if attention_mask is not None:
        raise KernelArgumentError("attention_mask", f"{who} takes no mask (its sparse pattern is the mask), got "
                                                    f"one of shape {tuple(attention_mask.shape)}")
    extra = sorted(k for k, value in kwargs.items() if value is not None)
    if extra:
        raise KernelArgumentError(extra[0], f"{who} does not apply it; use a processor that does")
    residual = hidden_states
    if getattr(attn, "spatial_norm", None) is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch = hidden_states.shape[0]
    if getattr(attn, "group_norm", None) is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    cross = encoder_hidden_states is not None
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif getattr(attn, "norm_cross", None):
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)
    if cross:
        hidden_states = F.scaled_dot_product_attention(query, key, value)
    else:
        if query.shape[2] != video_tokens:
            raise KernelArgumentError("hidden_states", f"expected {video_tokens} tokens (frames x tokens_per_frame "
                                                       f"given to {who}), got {query.shape[2]}")
        hidden_states = attend(query, key, value)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
    if getattr(attn, "residual_connection", False):
        hidden_states = hidden_states + residual
    return hidden_states / getattr(attn, "rescale_output_factor", 1.0)


class RadialAttnProcessor:
    """Radial attention (``gpuos.kernels.radial_attention``) for a video of ``frames`` frames of
    ``tokens_per_frame`` tokens; forward only (run under ``torch.no_grad()``)."""

    def __init__(self, frames: int, tokens_per_frame: int, *, block: int = 128, sink: bool = True,
                 mask: str = "paper") -> None:
        _check_video("RadialAttnProcessor", frames, tokens_per_frame)
        self.frames, self.tokens_per_frame = frames, tokens_per_frame
        self.block, self.sink, self.mask = block, sink, mask

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return api.radial_attention(q, k, v, self.frames, self.tokens_per_frame, block=self.block, sink=self.sink,
                                    mask=self.mask)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        return _process(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs,
                        self.frames * self.tokens_per_frame, self._attend, "RadialAttnProcessor")


class SLAAttnProcessor(torch.nn.Module):
    """Sparse-linear attention (``gpuos.kernels.sla_attention``) for a video of ``frames`` frames
    of ``tokens_per_frame`` tokens, with its learnable ``[head_dim, head_dim]`` projection ``proj``,
    zero-initialised (so an untrained processor is block-sparse attention). A module: diffusers
    registers it under its ``Attention``, so ``proj`` trains with the model; give each layer its
    own processor. Differentiable."""

    def __init__(self, frames: int, tokens_per_frame: int, head_dim: int, *, block: int = 64,
                 critical_ratio: float = 0.05, negligible_ratio: float = 0.0) -> None:
        super().__init__()
        _check_video("SLAAttnProcessor", frames, tokens_per_frame)
        self.frames, self.tokens_per_frame = frames, tokens_per_frame
        self.block, self.critical_ratio, self.negligible_ratio = block, critical_ratio, negligible_ratio
        self.proj = torch.nn.Parameter(torch.zeros(head_dim, head_dim))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return api.sla_attention(q, k, v, self.proj, block=self.block, critical_ratio=self.critical_ratio,
                                 negligible_ratio=self.negligible_ratio)

    def forward(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        return _process(attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs,
                        self.frames * self.tokens_per_frame, self._attend, "SLAAttnProcessor")
