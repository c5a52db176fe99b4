"""The dense decode kernel job (sdpa-decode): right against float64 attention, in atoms of whole
sequences with a preemption point after each, and paced like a latency service when asked."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from gpuos.errors import InvalidArgument  # noqa: E402
from gpuos.kernels import dense  # noqa: E402
from gpuos.kernels.context import KernelContext  # noqa: E402
from gpuos.kernels.registry import get_kernel  # noqa: E402


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    k64 = k.double().repeat_interleave(group, dim=1)
    v64 = v.double().repeat_interleave(group, dim=1)
    scores = q.double() @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v64


def test_atoms_of_sequences_match_float64_attention_with_a_preemption_point_after_each() -> None:
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(*shape, generator=gen) for shape in ((5, 4, 1, 16), (5, 2, 64, 16), (5, 2, 64, 16)))
    points: list[int] = []
    # A target below any atom's time: one sequence per atom, so five atoms and five points.
    ctx = KernelContext(device=torch.device("cpu"), on_gpu=False, report=lambda s, t: None,
                        between_atoms=lambda: points.append(1), atom_seconds=1e-12)
    out = dense.decode(q, k, v, ctx)
    assert len(points) == 5
    assert (out.double() - reference(q, k, v)).abs().max().item() < 1e-5
    whole = dense.decode(q, k, v, None)
    assert (whole.double() - reference(q, k, v)).abs().max().item() < 1e-5


def test_the_job_paces_its_steps_and_reports_each_one() -> None:
    spec = get_kernel("sdpa-decode")
    params = spec.validate({"steps": "3", "interval_ms": "20"})
    reported: list[int] = []
    ctx = KernelContext(device=torch.device("cpu"), on_gpu=False, report=lambda s, t: reported.append(s))
    summary = dense.run_job(params, ctx)
    assert reported == [0, 1, 2] and summary["shapes_capped_for_cpu"] == 1.0
    with pytest.raises(InvalidArgument, match="params.interval_ms"):
        spec.validate({"interval_ms": "-1"})
