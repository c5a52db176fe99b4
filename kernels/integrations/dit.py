"""diffusers attention processors that run a diffusion transformer's self-attention sparsely.

``attn.set_processor(RadialAttnProcessor(frames=F, tokens_per_frame=T))`` (or
:class:`SLAAttnProcessor`) on a diffusers ``Attention`` or a ``WanAttention`` keeps the module's
own projections (``to_q``, ``to_k``, ``to_v``, ``to_out``), its query and key norms (per head or
across heads, whichever width they were built for), its group and spatial norms, residual and
output rescaling, and Wan's rotary embedding, and replaces only the attention between them:

- self-attention (no ``encoder_hidden_states``) runs :func:`gpuos.kernels.radial_attention` or
  :func:`gpuos.kernels.sla_attention` on ``[B, heads, N, head_dim]``;
- cross-attention stays dense SDPA, with the module's mask: the text keys have no place in a
  video's frame grid (radial's mask is defined on it) and are few (SLA's blocks pay off on long
  key sequences, and its kernels need as many keys as queries).

Both follow the ``AttnProcessor`` calling convention, ``__call__(attn, hidden_states,
encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs)``; ``WanAttention`` passes
its rotary ``(cos, sin)`` pair in ``temb``'s position, which is how it is told apart. Modules with
added key/value projections (joint text-video attention, Wan's image conditioning) are refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F

from gpuos.kernels.api import KernelArgumentError, radial_attention, sla_attention


def _norm_width(norm: torch.nn.Module) -> int | None:
    """The width a norm was built for, when it says (LayerNorm, RMSNorm: torch's or diffusers')."""
    shape = getattr(norm, "normalized_shape", None) or getattr(norm, "dim", None)
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) > 0:
        return int(shape[-1])
    return None


def _qk_norm(norm: torch.nn.Module | None, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``norm`` on ``x[B, N, heads * head_dim]``: over all heads where it was built that wide
    (Wan, LTX), else per head (diffusers' ``qk_norm="rms_norm"`` and the like)."""
    if norm is None:
        return x
    if _norm_width(norm) == x.shape[-1] != head_dim:
        return norm(x)  # type: ignore[no-any-return]
    result: torch.Tensor = norm(x.unflatten(-1, (-1, head_dim)))
    return result.flatten(-2)


def _rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on ``x[B, N, heads, D]``: each (even, odd) channel pair rotated by the
    angle whose cosine sits at the even and sine at the odd index of ``cos``, ``sin[1, N, 1, D]``."""
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2).type_as(x)


class SparseSelfAttnProcessor(ABC):
    """The processor's body, shared by the radial and SLA processors: subclasses implement
    :meth:`attend` on ``[B, heads, N, head_dim]`` self-attention inputs."""

    @abstractmethod
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Self-attention output of ``q, k, v[B, heads, N, head_dim]``, q's shape."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: Any = None, *args: Any, rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                 **kwargs: Any) -> torch.Tensor:
        if isinstance(temb, tuple):  # WanAttention's rotary pair, passed positionally
            rotary_emb, temb = temb, None
        if getattr(attn, "add_k_proj", None) is not None:
            raise KernelArgumentError("attn", "has added key/value projections (joint or image-conditioned "
                                              "attention), which this processor does not handle; keep the "
                                              "model's own processor on it")
        cross = encoder_hidden_states is not None
        if attention_mask is not None and not cross:
            raise KernelArgumentError("attention_mask", "a sparse self-attention defines its own mask; it cannot "
                                                        "take another")
        residual = hidden_states
        spatial_norm = getattr(attn, "spatial_norm", None)
        if spatial_norm is not None:
            hidden_states = spatial_norm(hidden_states, temb)
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        group_norm = getattr(attn, "group_norm", None)
        if group_norm is not None:
            hidden_states = group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states
        if encoder_hidden_states is not None:
            context = encoder_hidden_states
            if getattr(attn, "norm_cross", None) is not None:
                context = attn.norm_encoder_hidden_states(context)

        batch, heads = hidden_states.shape[0], int(attn.heads)
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // heads
        key = _qk_norm(getattr(attn, "norm_k", None), attn.to_k(context), head_dim)
        query = _qk_norm(getattr(attn, "norm_q", None), query, head_dim)
        q, k, v = (x.unflatten(-1, (-1, head_dim)) for x in (query, key, attn.to_v(context)))
        if rotary_emb is not None:
            q, k = _rotate_pairs(q, *rotary_emb), _rotate_pairs(k, *rotary_emb)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, heads, N, head_dim]

        if cross:
            out = self._dense(attn, q, k, v, attention_mask, batch)
        else:
            group = heads // k.shape[1]
            if group > 1:  # fewer key/value heads: the kernels take one per query head
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            out = self.attend(q, k, v)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if image_shape is not None:
            out = out.transpose(-1, -2).reshape(image_shape)
        if getattr(attn, "residual_connection", False):
            out = out + residual
        result: torch.Tensor = out / getattr(attn, "rescale_output_factor", 1.0)
        return result

    @staticmethod
    def _dense(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        if mask is not None and hasattr(attn, "prepare_attention_mask"):
            # diffusers' Attention masks come per batch and are repeated per head, as in AttnProcessor2_0.
            mask = attn.prepare_attention_mask(mask, k.shape[2], batch)
            mask = mask.view(batch, q.shape[1], -1, mask.shape[-1])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


class RadialAttnProcessor(SparseSelfAttnProcessor):
    """Self-attention under Radial Attention's static mask, for a video of ``frames`` latent frames
    of ``tokens_per_frame`` tokens each, frame-major (as diffusers' video transformers flatten
    their patches). ``block``, ``sink`` and further keywords (``mask``) go to
    :func:`gpuos.kernels.radial_attention`. Forward only: run it under ``torch.no_grad()``."""

    def __init__(self, frames: int, tokens_per_frame: int, *, block: int = 128, sink: bool = True,
                 **kwargs: Any) -> None:
        for name, value in (("frames", frames), ("tokens_per_frame", tokens_per_frame)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KernelArgumentError(name, f"must be a positive integer, got {value!r}")
        self.frames = frames
        self.tokens_per_frame = tokens_per_frame
        self.block = block
        self.sink = sink
        self.options = kwargs

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return radial_attention(q, k, v, self.frames, self.tokens_per_frame, block=self.block, sink=self.sink,
                                **self.options)


class SLAAttnProcessor(SparseSelfAttnProcessor):
    """Self-attention by sparse-linear attention (SLA): per query block of ``block`` tokens, the
    ``critical_ratio`` best key blocks exact, the ``negligible_ratio`` worst skipped, the rest by
    linear attention through ``proj`` (``[head_dim, head_dim]``, e.g. an ``nn.Parameter`` being
    fine-tuned; ``None``: zeros, pure block-sparse attention). Differentiable."""

    def __init__(self, *, block: int = 64, critical_ratio: float = 0.05, negligible_ratio: float = 0.0,
                 proj: torch.Tensor | None = None, **kwargs: Any) -> None:
        self.block = block
        self.critical_ratio = critical_ratio
        self.negligible_ratio = negligible_ratio
        self.proj = proj
        self.options = kwargs

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sla_attention(q, k, v, self.proj, block=self.block, critical_ratio=self.critical_ratio,
                             negligible_ratio=self.negligible_ratio, **self.options)
