"""The kernels inside real models with random weights built here: diffusers' Wan transformer and
Attention with the radial and SLA processors, transformers' Llama with vAttention decoding over
the paged cache; each against the model's own dense attention or a float64 reference."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from gpuos.kernels import VAttentionConfig, vattention  # noqa: E402
from gpuos.kernels.api import KernelArgumentError  # noqa: E402
from gpuos.kernels.integrations.dit import RadialAttnProcessor, SLAAttnProcessor  # noqa: E402
from gpuos.kernels.integrations.paged_cache import PagedKVCache  # noqa: E402
from gpuos.kernels.reference import radial as radial_ref  # noqa: E402
from gpuos.kernels.reference import sla as sla_ref  # noqa: E402
from gpuos.kernels.vattention import key_sketch, page_key_bounds, page_value_bounds  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Kernel against reference, relative to the output's scale: fp32 throughout, so rounding alone.
CLOSE = 1e-4

# ----------------------------------------------------------------------------- paged cache


@pytest.mark.parametrize("batch", [3, 1])  # 1: one sequence's keys, transposed, are not a [B, n, Hkv * D] view
def test_paged_cache_keeps_key_and_value_bounds_equal_to_a_full_rescan(batch: int) -> None:
    gen = torch.Generator().manual_seed(0)
    cache = PagedKVCache(batch, 2, 8, page_size=4)
    for n in (5, 1, 1, 3, 7, 4, 1):
        cache.append(torch.randn(batch, 2, n, 8, generator=gen), torch.randn(batch, 2, n, 8, generator=gen))
        lo, hi = page_key_bounds(cache.k_cache, cache.page_table, cache.seq_lens)
        assert torch.equal(cache.bounds[0], lo) and torch.equal(cache.bounds[1], hi)
        center, radius = page_value_bounds(cache.v_cache, cache.page_table, cache.seq_lens)
        assert torch.equal(cache.value_bounds[0], center) and torch.equal(cache.value_bounds[1], radius)
        assert torch.equal(cache.sketch.codes, key_sketch(cache.k_cache, cache.page_table, cache.seq_lens).codes)


def test_paged_cache_codes_the_sketch_against_the_bounds_it_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    # An append computes the touched pages' key bounds once, folding the new keys in, and codes
    # the sketch against them: no rescan of the pages for their bounds.
    gen = torch.Generator().manual_seed(2)
    cache = PagedKVCache(2, 2, 8, page_size=4)

    def rescan(*args: object) -> None:
        raise AssertionError("append rescanned pages for their key bounds")

    monkeypatch.setattr(vattention, "page_key_bounds", rescan)
    for n in (3, 2, 6):
        cache.append(torch.randn(2, 2, n, 8, generator=gen), torch.randn(2, 2, n, 8, generator=gen))
    monkeypatch.undo()
    assert torch.equal(cache.sketch.codes, key_sketch(cache.k_cache, cache.page_table, cache.seq_lens).codes)


def test_paged_cache_append_reads_nothing_from_the_device(host_reads: list[str]) -> None:
    # It runs once per layer and token: which pages an append touched follows from the lengths
    # the cache keeps on the host.
    gen = torch.Generator().manual_seed(3)
    cache = PagedKVCache(2, 2, 8, page_size=4, pages=2)
    for n in (6, 1, 3, 4):  # within a page, across pages, and growing the pool and the table
        cache.append(torch.randn(2, 2, n, 8, generator=gen), torch.randn(2, 2, n, 8, generator=gen))
    assert host_reads == []
    assert cache.longest == 14


def test_paged_cache_reads_back_every_token_in_order_from_interleaved_pages() -> None:
    gen = torch.Generator().manual_seed(1)
    cache = PagedKVCache(2, 1, 4, page_size=2, pages=2)
    keys, values = [], []
    for n in (3, 1, 4):
        keys.append(torch.randn(2, 1, n, 4, generator=gen))
        values.append(torch.randn(2, 1, n, 4, generator=gen))
        cache.append(keys[-1], values[-1])
    k, v = cache.keys_values()
    assert torch.equal(k, torch.cat(keys, 2)) and torch.equal(v, torch.cat(values, 2))
    assert cache.seq_lens.tolist() == [8, 8]
    assert cache.k_cache.shape[0] >= 8  # the pool grew from two pages
    first, second = (set(row[:4].tolist()) for row in cache.page_table)
    assert not first & second
    assert first != set(range(min(first), min(first) + 4))  # a sequence's pages need not be adjacent


def test_paged_cache_refuses_keys_of_another_shape() -> None:
    cache = PagedKVCache(2, 2, 8)
    with pytest.raises(KernelArgumentError, match="^k: "):
        cache.append(torch.zeros(2, 1, 3, 8), torch.zeros(2, 1, 3, 8))


# ----------------------------------------------------------------------------- diffusion transformers

FRAMES, HEIGHT, WIDTH = 8, 8, 8
TOKENS = (HEIGHT // 2) * (WIDTH // 2)  # Wan patchifies 2 x 2


@pytest.fixture(scope="module")
def wan() -> Iterator[tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=64).eval().to(DEVICE)
    inputs = tuple(x.to(DEVICE) for x in (torch.randn(1, 4, FRAMES, HEIGHT, WIDTH), torch.tensor([500]),
                                          torch.randn(1, 8, 16)))
    yield model, inputs


def run_wan(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], processor: object | None) -> torch.Tensor:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for block in model.blocks:
        block.attn1.set_processor(processor or WanAttnProcessor())
    output: torch.Tensor = model(*inputs, return_dict=False)[0]
    return output


def test_radial_processor_in_wan_equals_wans_attention_under_the_radial_mask(wan: tuple) -> None:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    model, inputs = wan
    mask = radial_ref.radial_mask(FRAMES, TOKENS, block=16, device=DEVICE)
    assert 0.3 < float(mask.float().mean()) < 0.8

    class MaskedWan(WanAttnProcessor):
        """diffusers' own Wan self-attention, given the radial mask as a boolean SDPA mask."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
            return super().__call__(attn, hidden_states, encoder_hidden_states, mask, rotary_emb)

    with torch.no_grad():
        want = run_wan(model, inputs, MaskedWan())
        got = run_wan(model, inputs, RadialAttnProcessor(FRAMES, TOKENS, block=16))
        dense = run_wan(model, inputs, None)
    assert (got - want).abs().max() < CLOSE * want.abs().max()
    assert (got - dense).abs().max() > 1e-2 * want.abs().max()  # the mask did drop something


class ReferenceSLA(SLAAttnProcessor):
    """The SLA processor with the float64 reference in place of the kernels."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q64, k64, v64 = q.double(), k.double(), v.double()
        classes = sla_ref.block_classes(q64, k64, self.block, self.critical_ratio, self.negligible_ratio)
        assert self.proj is not None
        return sla_ref.sla(q64, k64, v64, self.proj.double(), classes, self.block).to(q.dtype)


def test_sla_processor_in_wan_equals_the_float64_reference(wan: tuple) -> None:
    model, inputs = wan
    proj = torch.randn(16, 16, generator=torch.Generator().manual_seed(2)).to(DEVICE) / 4
    options = {"block": 16, "critical_ratio": 0.25, "negligible_ratio": 0.25, "proj": proj}
    with torch.no_grad():
        want = run_wan(model, inputs, ReferenceSLA(**options))
        got = run_wan(model, inputs, SLAAttnProcessor(**options))
    assert (got - want).abs().max() < CLOSE * want.abs().max()


def test_sla_processor_with_every_block_critical_trains_like_dense_wan(wan: tuple) -> None:
    model, (x, *rest) = wan
    inputs = (x[:, :, :4], *rest)  # half the frames: SLA's backward is slow under the interpreter
    weight = model.blocks[0].attn1.to_q.weight
    grads = []
    for processor in (None, SLAAttnProcessor(block=16, critical_ratio=1.0)):
        model.zero_grad()
        out = run_wan(model, inputs, processor)
        out.square().mean().backward()
        grads.append((out.detach(), weight.grad.clone()))
    (dense, dense_grad), (got, got_grad) = grads
    assert (got - dense).abs().max() < CLOSE * dense.abs().max()
    assert (got_grad - dense_grad).abs().max() < CLOSE * dense_grad.abs().max()


def test_processors_on_a_diffusers_attention_match_attn_processor_2_0() -> None:
    attention = pytest.importorskip("diffusers.models.attention_processor")
    torch.manual_seed(3)
    frames, tokens, dim = 4, 16, 32
    self_attn = attention.Attention(dim, heads=2, dim_head=16, qk_norm="rms_norm", residual_connection=True,
                                    rescale_output_factor=2.0).eval().to(DEVICE)
    cross_attn = attention.Attention(dim, cross_attention_dim=24, heads=2, dim_head=16).eval().to(DEVICE)
    x, text = torch.randn(2, frames * tokens, dim, device=DEVICE), torch.randn(2, 6, 24, device=DEVICE)
    # Additive form of the radial mask, which AttnProcessor2_0 repeats per head.
    allowed = radial_ref.radial_mask(frames, tokens, block=16, mask="gpuos", device=DEVICE)
    additive = torch.zeros(allowed.shape, device=DEVICE).masked_fill(~allowed, -math.inf).expand(2, -1, -1)
    padding = torch.zeros(2, 1, 6, device=DEVICE)
    padding[1, :, 4:] = -math.inf  # the second prompt's last two text tokens are padding
    with torch.no_grad():
        self_attn.set_processor(attention.AttnProcessor2_0())
        want = self_attn(x, attention_mask=additive)
        self_attn.set_processor(RadialAttnProcessor(frames, tokens, block=16, mask="gpuos"))
        got = self_attn(x)
        cross_attn.set_processor(attention.AttnProcessor2_0())
        want_cross = cross_attn(x, encoder_hidden_states=text, attention_mask=padding)
        cross_attn.set_processor(SLAAttnProcessor(block=16))
        got_cross = cross_attn(x, encoder_hidden_states=text, attention_mask=padding)
    assert (got - want).abs().max() < CLOSE * want.abs().max()
    assert (got_cross - want_cross).abs().max() < 1e-6 * want_cross.abs().max()  # both SDPA


def test_processor_refuses_a_mask_on_self_attention() -> None:
    attention = pytest.importorskip("diffusers.models.attention_processor")
    attn = attention.Attention(32, heads=2, dim_head=16, processor=RadialAttnProcessor(2, 16, block=16)).to(DEVICE)
    with pytest.raises(KernelArgumentError, match="^attention_mask: "), torch.no_grad():
        attn(torch.randn(1, 32, 32, device=DEVICE), attention_mask=torch.zeros(1, 32, 32, device=DEVICE))


# ----------------------------------------------------------------------------- Llama decoding

PROMPT, NEW = 256, 4


def tiny_llama(value_bias: bool) -> torch.nn.Module:
    """Random Llama; ``value_bias`` gives each layer's values a shared direction (as trained models'
    have), so outputs do not cancel and the budget can sample instead of computing all keys."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      attention_bias=value_bias)
    model = transformers.LlamaForCausalLM(config).eval().to(DEVICE)
    if value_bias:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.v_proj.bias.normal_(0, 1)
    return model


def prompt() -> torch.Tensor:
    return torch.randint(0, 128, (2, PROMPT), generator=torch.Generator().manual_seed(1)).to(DEVICE)


SPARSE = VAttentionConfig(epsilon=0.1, delta=0.1, sink=8, local=16, top_k=16, base_sample=16)


def test_vattention_llama_decodes_the_dense_greedy_tokens() -> None:
    from gpuos.kernels.integrations.llama import generate_greedy, use_vattention

    model, ids = tiny_llama(value_bias=False), prompt()
    dense = generate_greedy(model, ids, NEW)
    library = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert torch.equal(dense.tokens, library)  # the dense baseline is transformers' own greedy search
    session = use_vattention(model, SPARSE, page_size=8, generator=torch.Generator(DEVICE).manual_seed(2))
    got = generate_greedy(model, ids, NEW)
    assert torch.equal(got.tokens, dense.tokens)
    assert (got.logits - dense.logits).abs().max() < CLOSE * dense.logits.abs().max()
    session.remove()


def test_vattention_llama_samples_below_full_density_and_keeps_the_tokens() -> None:
    from gpuos.kernels.integrations.llama import generate_greedy, use_vattention

    model, ids = tiny_llama(value_bias=True), prompt()
    dense = generate_greedy(model, ids, NEW)
    session = use_vattention(model, SPARSE, page_size=8, record=True,
                             generator=torch.Generator(DEVICE).manual_seed(2))
    got = generate_greedy(model, ids, NEW)
    assert len(session.records) == 2 * (NEW - 1)  # two layers, one call per token after the first
    assert session.mean_density() < 0.8
    assert torch.equal(got.tokens, dense.tokens)
    assert (got.logits - dense.logits).abs().max() < 0.05 * dense.logits.abs().max()


def test_vattention_llama_prefills_a_second_chunk_over_the_cached_history() -> None:
    from gpuos.kernels.integrations.llama import use_vattention

    model, ids = tiny_llama(value_bias=False), prompt()[:, :40]
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
        use_vattention(model, SPARSE, page_size=8)
        model(ids[:, :25], position_ids=torch.arange(25, device=DEVICE).expand(2, -1), use_cache=False)
        got = model(ids[:, 25:], position_ids=torch.arange(25, 40, device=DEVICE).expand(2, -1),
                    use_cache=False).logits
    assert (got - want[:, 25:]).abs().max() < 1e-5 * want.abs().max()  # both SDPA


def test_vattention_llama_refuses_transformers_cache_until_removed() -> None:
    from gpuos.kernels.integrations.llama import use_vattention

    model, ids = tiny_llama(value_bias=False), prompt()[:, :8]
    with torch.no_grad():
        want = model(ids).logits
        session = use_vattention(model)
        with pytest.raises(KernelArgumentError, match="^use_cache: "):
            model(ids)
        session.remove()
        assert torch.equal(model(ids).logits, want)


def test_use_vattention_refuses_a_model_without_llama_attention() -> None:
    pytest.importorskip("transformers")
    from gpuos.kernels.integrations.llama import use_vattention

    with pytest.raises(KernelArgumentError, match="^model: "):
        use_vattention(torch.nn.Linear(4, 4))
