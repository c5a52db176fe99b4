"""The public kernel functions (gpuos.kernels.api): every bad argument is refused with a
KernelArgumentError naming it, before any kernel runs; good arguments give the implementation's
result."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import gpuos.kernels as kernels  # noqa: E402
from gpuos.kernels import api, radial, sla, vattention  # noqa: E402
from gpuos.kernels.api import KernelArgumentError  # noqa: E402

META = torch.device("meta")  # a second device: tensors there are never computed on
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def raises_naming(argument: str, call: Callable[[], Any]) -> KernelArgumentError:
    with pytest.raises(KernelArgumentError) as info:
        call()
    assert info.value.argument == argument
    assert str(info.value).startswith(f"{argument}: ")
    return info.value


# ----------------------------------------------------------------------------- the package


def test_importing_the_package_loads_neither_torch_nor_triton() -> None:
    code = ("import sys, gpuos.kernels as k; assert 'torch' not in sys.modules and 'triton' not in sys.modules; "
            "assert 'vattention_decode' in dir(k)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_exports_the_checked_functions() -> None:
    assert kernels.vattention_decode is api.vattention_decode
    assert kernels.sla_attention is api.sla_attention
    assert kernels.radial_attention is api.radial_attention
    assert kernels.VAttentionConfig is vattention.VAttentionConfig
    assert issubclass(kernels.KernelArgumentError, ValueError)


def test_unknown_package_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_kernel"):
        kernels.no_such_kernel  # noqa: B018


# ----------------------------------------------------------------------------- vattention_decode


@dataclass(frozen=True)
class Decode:
    q: Any
    k_cache: Any
    v_cache: Any
    page_table: Any
    seq_lens: Any
    config: Any = None
    options: tuple[tuple[str, Any], ...] = ()

    def call(self) -> vattention.VAttentionResult:
        return api.vattention_decode(self.q, self.k_cache, self.v_cache, self.page_table, self.seq_lens,
                                     self.config, **dict(self.options))

    def but(self, **changes: Any) -> Decode:
        return replace(self, **changes)

    def with_option(self, name: str, value: Any) -> Decode:
        return replace(self, options=((name, value),))


CFG = vattention.VAttentionConfig(epsilon=0.2, delta=0.2, sink=4, local=8, top_k=8, base_sample=8)


@pytest.fixture(scope="module")
def decode() -> Decode:
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    x = vattention.random_paged_inputs([40, 17], 4, 2, 16, 8, torch.float32, DEVICE, gen, structured=True)
    return Decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, CFG)


def _bounds(d: Decode) -> tuple[torch.Tensor, torch.Tensor]:
    return vattention.page_key_bounds(d.k_cache, d.page_table, d.seq_lens)


def _sketch(d: Decode) -> vattention.KeySketch:
    return vattention.key_sketch(d.k_cache, d.page_table, d.seq_lens)


def _value_bounds(d: Decode) -> tuple[torch.Tensor, torch.Tensor]:
    return vattention.page_value_bounds(d.v_cache, d.page_table, d.seq_lens)


BAD_DECODE: dict[str, tuple[str, Callable[[Decode], Decode]]] = {
    "q-not-a-tensor": ("q", lambda d: d.but(q=d.q.tolist())),
    "q-rank": ("q", lambda d: d.but(q=d.q.unsqueeze(2))),
    "q-dtype": ("q", lambda d: d.but(q=d.q.double())),
    "q-heads-not-a-multiple-of-kv-heads": ("q", lambda d: d.but(q=d.q[:, :3])),
    "q-head-dim-above-256": ("q", lambda d: d.but(q=torch.zeros(2, 4, 272, device=DEVICE),
                                                  k_cache=torch.zeros(8, 8, 2, 272, device=DEVICE),
                                                  v_cache=torch.zeros(8, 8, 2, 272, device=DEVICE))),
    "q-requires-grad": ("q", lambda d: d.but(q=d.q.clone().requires_grad_())),
    "q-strided-head-dim": ("q", lambda d: d.but(q=d.q.repeat_interleave(2, -1)[..., ::2])),
    "k_cache-rank": ("k_cache", lambda d: d.but(k_cache=d.k_cache[0])),
    "k_cache-dtype": ("k_cache", lambda d: d.but(k_cache=d.k_cache.half())),
    "k_cache-device": ("k_cache", lambda d: d.but(k_cache=d.k_cache.to(META))),
    "k_cache-head-dim": ("k_cache", lambda d: d.but(k_cache=d.k_cache[..., :8].contiguous(),
                                                    v_cache=d.v_cache[..., :8].contiguous())),
    "k_cache-not-contiguous": ("k_cache", lambda d: d.but(k_cache=d.k_cache.transpose(0, 1).contiguous()
                                                          .transpose(0, 1))),
    "v_cache-shape": ("v_cache", lambda d: d.but(v_cache=d.v_cache[:, :4])),
    "v_cache-dtype": ("v_cache", lambda d: d.but(v_cache=d.v_cache.half())),
    "v_cache-not-contiguous": ("v_cache", lambda d: d.but(v_cache=d.v_cache.transpose(0, 1).contiguous()
                                                          .transpose(0, 1))),
    "page_table-dtype": ("page_table", lambda d: d.but(page_table=d.page_table.float())),
    "page_table-batch": ("page_table", lambda d: d.but(page_table=d.page_table[:1])),
    "page_table-negative-page": ("page_table", lambda d: d.but(page_table=d.page_table - 1)),
    "page_table-page-past-the-cache": ("page_table", lambda d: d.but(page_table=d.page_table + d.k_cache.shape[0])),
    "page_table-device": ("page_table", lambda d: d.but(page_table=d.page_table.to(META))),
    "seq_lens-shape": ("seq_lens", lambda d: d.but(seq_lens=d.seq_lens[:1])),
    "seq_lens-dtype": ("seq_lens", lambda d: d.but(seq_lens=d.seq_lens.float())),
    "seq_lens-empty-sequence": ("seq_lens", lambda d: d.but(seq_lens=torch.tensor([40, 0], device=DEVICE))),
    "seq_lens-beyond-the-page-table": ("seq_lens", lambda d: d.but(seq_lens=torch.tensor([40, 10_000], device=DEVICE))),
    "config-type": ("config", lambda d: d.but(config={"epsilon": 0.1})),
    "bounds-not-a-pair": ("bounds", lambda d: d.with_option("bounds", _bounds(d)[0])),
    "bounds-shape": ("bounds", lambda d: d.with_option("bounds", tuple(b[:, :1] for b in _bounds(d)))),
    "bounds-dtype": ("bounds", lambda d: d.with_option("bounds", tuple(b.double() for b in _bounds(d)))),
    "value_bounds-not-a-pair": ("value_bounds", lambda d: d.with_option("value_bounds", _value_bounds(d)[0])),
    "value_bounds-radius-shape": ("value_bounds", lambda d: d.with_option(
        "value_bounds", (_value_bounds(d)[0], _value_bounds(d)[0]))),
    "value_bounds-dtype": ("value_bounds", lambda d: d.with_option(
        "value_bounds", tuple(b.double() for b in _value_bounds(d)))),
    "sketch-not-a-sketch": ("sketch", lambda d: d.with_option("sketch", _bounds(d))),
    "sketch-shape": ("sketch", lambda d: d.with_option("sketch", replace(_sketch(d), codes=_sketch(d).codes[:, :1]))),
    "sketch-bits": ("sketch", lambda d: d.with_option("sketch", replace(_sketch(d), bits=3))),
    "generator-type": ("generator", lambda d: d.with_option("generator", 7)),
    "backend": ("backend", lambda d: d.with_option("backend", "cuda")),
    "out-shape": ("out", lambda d: d.with_option("out", torch.empty(2, 4, 8, device=DEVICE))),
    "out-dtype": ("out", lambda d: d.with_option("out", torch.empty(2, 4, 16, dtype=torch.float16,
                                                                            device=DEVICE))),
    "num_splits": ("num_splits", lambda d: d.with_option("num_splits", 0)),
}


@pytest.mark.parametrize("case", list(BAD_DECODE))
def test_vattention_decode_refuses_bad_argument(decode: Decode, case: str) -> None:
    argument, spoil = BAD_DECODE[case]
    raises_naming(argument, spoil(decode).call)


def test_vattention_decode_refuses_cpu_tensors_without_the_interpreter(decode: Decode,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    on_cpu = Decode(*(x.cpu() for x in (decode.q, decode.k_cache, decode.v_cache, decode.page_table,
                                        decode.seq_lens)), CFG)
    error = raises_naming("q", on_cpu.call)
    assert "CUDA" in str(error)


def test_vattention_decode_matches_the_implementation(decode: Decode) -> None:
    d = decode
    got = api.vattention_decode(d.q, d.k_cache, d.v_cache, d.page_table, d.seq_lens, CFG,
                                generator=torch.Generator(device=DEVICE).manual_seed(5))
    want = vattention.vattention_decode(d.q, d.k_cache, d.v_cache, d.page_table, d.seq_lens, CFG,
                                        generator=torch.Generator(device=DEVICE).manual_seed(5))
    assert torch.equal(got.out, want.out)
    assert torch.equal(got.sample_size, want.sample_size)


def test_vattention_decode_passes_a_kept_sketch_through(decode: Decode) -> None:
    # The default selection reads the sketch; one passed in is the one computed from the cache.
    d = decode
    got = api.vattention_decode(d.q, d.k_cache, d.v_cache, d.page_table, d.seq_lens, CFG, sketch=_sketch(d),
                                bounds=_bounds(d), generator=torch.Generator(device=DEVICE).manual_seed(5))
    want = vattention.vattention_decode(d.q, d.k_cache, d.v_cache, d.page_table, d.seq_lens, CFG,
                                        generator=torch.Generator(device=DEVICE).manual_seed(5))
    assert CFG.selection == "sketch"
    assert torch.equal(got.plan.det_idx, want.plan.det_idx) and torch.equal(got.out, want.out)


def test_vattention_decode_with_exact_selection_ignores_page_bounds(decode: Decode) -> None:
    d = decode
    exact = replace(CFG, selection="exact")
    got = api.vattention_decode(d.q, d.k_cache, d.v_cache, d.page_table, d.seq_lens, exact, bounds=_bounds(d),
                                generator=torch.Generator(device=DEVICE).manual_seed(5))
    want = vattention.vattention_decode(d.q, d.k_cache, d.v_cache, d.page_table, d.seq_lens, exact,
                                        generator=torch.Generator(device=DEVICE).manual_seed(5))
    assert torch.equal(got.plan.det_idx, want.plan.det_idx)
    assert torch.equal(got.out, want.out)


def test_vattention_decode_checks_values_with_one_host_read(decode: Decode, host_reads: list[str]) -> None:
    # A decode step is latency-bound: the checked functions read the device once for their range
    # checks, and the longest length read there spares the unchecked decode its own read of it
    # (the implementation's checks are not rerun).
    d = decode
    kept = {"sketch": _sketch(d), "value_bounds": _value_bounds(d)}

    def count(run: Callable[..., vattention.VAttentionResult]) -> int:
        host_reads.clear()
        run(d.q, d.k_cache, d.v_cache, d.page_table, d.seq_lens, CFG,
            generator=torch.Generator(device=DEVICE).manual_seed(5), **kept)
        return len(host_reads)

    unchecked = count(vattention._decode)
    assert count(api.vattention_decode) == unchecked
    assert count(vattention.vattention_decode) == unchecked


@pytest.fixture(scope="module")
def long_decode() -> Decode:
    # Long enough rests that the Bernstein certificate draws at several grid sizes.
    x = vattention.random_paged_inputs([600, 200], 4, 2, 16, 16, torch.float32, "cpu",
                                       torch.Generator().manual_seed(1), structured=True)
    cfg = vattention.VAttentionConfig(epsilon=0.8, delta=0.8, sink=4, local=4, top_k=32, base_sample=16)
    return Decode(*(t.to(DEVICE) for t in (x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens)), cfg)


@pytest.mark.parametrize("selection", vattention.SELECTIONS)
@pytest.mark.parametrize("budget", vattention.BUDGETS)
def test_unchecked_vattention_decode_reads_the_device_once_per_data_dependent_size(
        long_decode: Decode, host_reads: list[str], monkeypatch: pytest.MonkeyPatch, selection: str,
        budget: str) -> None:
    # Each read waits for the device: the longest length, then the selection's list width and
    # rest sizes in one copy, then the CLT budget's sample width, or one read per grid size the
    # Bernstein certificate draws at (each runs one eigenvalue problem; none when every rest
    # fits in the base sample).
    d = long_decode
    steps: list[int] = []
    eigvalsh = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda a: steps.append(1) or eigvalsh(a))
    kept = {"sketch": _sketch(d), "value_bounds": _value_bounds(d), "bounds": _bounds(d)}
    for base_sample in (d.config.base_sample, 600):  # 600: above every rest
        cfg = replace(d.config, selection=selection, budget=budget, base_sample=base_sample,
                      delta=min(d.config.delta, 0.4) if budget == "clt" else d.config.delta)  # CLT: delta <= 0.4
        host_reads.clear()
        steps.clear()
        vattention._decode(d.q, d.k_cache, d.v_cache, d.page_table, d.seq_lens, cfg,
                           generator=torch.Generator(device=DEVICE).manual_seed(2), **kept)
        if budget == "clt":
            assert len(host_reads) == 3, host_reads
            continue
        if base_sample == 600:
            assert not steps
        else:
            # Page bounds at dim 16 are loose: those groups give up at the first grid size.
            assert len(steps) >= (1 if selection == "pages" else 2)
        assert len(host_reads) == 2 + len(steps), host_reads


# ----------------------------------------------------------------------------- sla_attention


@pytest.fixture(scope="module")
def qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=gen).to(DEVICE) for _ in range(3))
    return q, k, v


def _sla(q: Any, k: Any, v: Any, proj: Any = None, **kw: Any) -> Callable[[], Any]:
    return lambda: api.sla_attention(q, k, v, proj, **{"block": 16, **kw})


BAD_SLA: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Callable[[], Any]]]] = {
    "q-rank": ("q", lambda q, k, v: _sla(q[0], k[0], v[0])),
    "q-dtype": ("q", lambda q, k, v: _sla(q.double(), k.double(), v.double())),
    "q-head-dim": ("q", lambda q, k, v: _sla(q[..., :8], k[..., :8], v[..., :8])),
    "q-empty-sequence": ("q", lambda q, k, v: _sla(q[:, :, :0], k[:, :, :0], v[:, :, :0])),
    "k-shape": ("k", lambda q, k, v: _sla(q, k[:, :, :20], v)),
    "k-dtype": ("k", lambda q, k, v: _sla(q, k.half(), v)),
    "k-device": ("k", lambda q, k, v: _sla(q, k.to(META), v)),
    "v-shape": ("v", lambda q, k, v: _sla(q, k, v[:, :1])),
    "block": ("block", lambda q, k, v: _sla(q, k, v, block=48)),
    "critical_ratio-zero": ("critical_ratio", lambda q, k, v: _sla(q, k, v, critical_ratio=0.0)),
    "critical_ratio-above-one": ("critical_ratio", lambda q, k, v: _sla(q, k, v, critical_ratio=1.5)),
    "critical_ratio-type": ("critical_ratio", lambda q, k, v: _sla(q, k, v, critical_ratio="5%")),
    "negligible_ratio-negative": ("negligible_ratio", lambda q, k, v: _sla(q, k, v, negligible_ratio=-0.1)),
    "negligible_ratio-with-critical-above-one": ("negligible_ratio",
                                                 lambda q, k, v: _sla(q, k, v, critical_ratio=0.6,
                                                                      negligible_ratio=0.5)),
    "proj-shape": ("proj", lambda q, k, v: _sla(q, k, v, torch.zeros(16, 8))),
    "proj-dtype": ("proj", lambda q, k, v: _sla(q, k, v, torch.zeros(16, 16, dtype=torch.int64))),
    "proj-device": ("proj", lambda q, k, v: _sla(q, k, v, torch.zeros(16, 16, device=META))),
    "block_map-type": ("block_map", lambda q, k, v: _sla(q, k, v, block_map=torch.zeros(1, 2, 3, 3))),
    "block_map-shape": ("block_map", lambda q, k, v: _sla(q, k, v, block_map=sla.classify_blocks(q, k, 32, 0.5))),
}


@pytest.mark.parametrize("case", list(BAD_SLA))
def test_sla_attention_refuses_bad_argument(qkv: tuple[torch.Tensor, ...], case: str) -> None:
    argument, build = BAD_SLA[case]
    raises_naming(argument, build(*qkv))


def test_sla_attention_matches_the_implementation(qkv: tuple[torch.Tensor, ...]) -> None:
    q, k, v = qkv
    proj = torch.randn(16, 16, generator=torch.Generator().manual_seed(6)).to(DEVICE) / 4
    got = api.sla_attention(q, k, v, proj, block=16, critical_ratio=0.4, negligible_ratio=0.2)
    want = sla.sla_attention(q, k, v, proj, block=16, critical_ratio=0.4, negligible_ratio=0.2)
    assert torch.equal(got, want)


def test_sla_attention_without_proj_is_block_sparse_attention(qkv: tuple[torch.Tensor, ...]) -> None:
    q, k, v = qkv
    got = api.sla_attention(q, k, v, block=16, critical_ratio=0.4)
    want = sla.sla_attention(q, k, v, torch.zeros(16, 16, device=DEVICE), block=16, critical_ratio=0.4)
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- radial_attention

FRAMES, TOKENS = 5, 8  # N = 40 as in qkv


def _radial(q: Any, k: Any, v: Any, frames: Any = FRAMES, tokens: Any = TOKENS, **kw: Any) -> Callable[[], Any]:
    return lambda: api.radial_attention(q, k, v, frames, tokens, **{"block": 16, **kw})


BAD_RADIAL: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Callable[[], Any]]]] = {
    "q-rank": ("q", lambda q, k, v: _radial(q[0], k[0], v[0])),
    "q-dtype": ("q", lambda q, k, v: _radial(q.double(), k.double(), v.double())),
    "q-head-dim": ("q", lambda q, k, v: _radial(q[..., :8], k[..., :8], v[..., :8])),
    "q-requires-grad": ("q", lambda q, k, v: _radial(q.clone().requires_grad_(), k, v)),
    "k-shape": ("k", lambda q, k, v: _radial(q, k[:, :1], v)),
    "v-device": ("v", lambda q, k, v: _radial(q, k, v.to(META))),
    "v-dtype": ("v", lambda q, k, v: _radial(q, k, v.half())),
    "frames-zero": ("frames", lambda q, k, v: _radial(q, k, v, frames=0)),
    "frames-float": ("frames", lambda q, k, v: _radial(q, k, v, frames=5.0)),
    "frames-bool": ("frames", lambda q, k, v: _radial(q, k, v, frames=True)),
    "tokens_per_frame-not-the-sequence": ("tokens_per_frame", lambda q, k, v: _radial(q, k, v, tokens=9)),
    "block": ("block", lambda q, k, v: _radial(q, k, v, block=24)),
    "block-fp32-dim-256": ("block", lambda q, k, v: _radial(*(torch.zeros(1, 1, 40, 256, device=DEVICE) for _ in range(3)),
                                                             block=128)),
    "sink": ("sink", lambda q, k, v: _radial(q, k, v, sink="yes")),
    "scale-negative": ("scale", lambda q, k, v: _radial(q, k, v, scale=-1.0)),
    "scale-nan": ("scale", lambda q, k, v: _radial(q, k, v, scale=float("nan"))),
    "mask": ("mask", lambda q, k, v: _radial(q, k, v, mask="wide")),
    "out-dtype": ("out", lambda q, k, v: _radial(q, k, v, out=torch.empty_like(q, dtype=torch.float16))),
    "out-shape": ("out", lambda q, k, v: _radial(q, k, v, out=torch.empty_like(q[:, :1]))),
}


@pytest.mark.parametrize("case", list(BAD_RADIAL))
def test_radial_attention_refuses_bad_argument(qkv: tuple[torch.Tensor, ...], case: str) -> None:
    argument, build = BAD_RADIAL[case]
    raises_naming(argument, build(*qkv))


def test_radial_attention_matches_the_implementation(qkv: tuple[torch.Tensor, ...]) -> None:
    q, k, v = qkv
    got = api.radial_attention(q, k, v, FRAMES, TOKENS, block=16, mask="gpuos")
    want = radial.radial_attention(q, k, v, FRAMES, TOKENS, 16, mask="gpuos")
    assert torch.equal(got, want)


def test_radial_attention_copies_inputs_strided_in_the_head_dim(qkv: tuple[torch.Tensor, ...]) -> None:
    q, k, v = qkv
    strided = [x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (q, k, v)]
    assert strided[0].stride(-1) != 1
    got = api.radial_attention(*strided, FRAMES, TOKENS, block=16)
    assert torch.equal(got, api.radial_attention(q, k, v, FRAMES, TOKENS, block=16))
