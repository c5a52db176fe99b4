"""Atoms: the built-in kernels' grids run as slices, bit-identical to one launch, with a
preemption point after each slice; the sizing rules; the worker pausing at an atom boundary."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from gpuos.errors import InvalidArgument
from gpuos.kernels import atoms, radial, sla, worker
from gpuos.kernels import vattention as va
from gpuos.kernels.context import DEFAULT_ATOM_SECONDS, KernelContext
from gpuos.kernels.registry import get_kernel


@pytest.fixture(autouse=True)
def fresh_rates() -> Iterator[None]:
    # Rates are remembered per kernel object: a fake kernel of one test must not size another's.
    atoms._RATES.clear()
    yield
    atoms._RATES.clear()


def cpu_ctx(calls: list[Any] | None = None, record: Any = None, atom_seconds: float = DEFAULT_ATOM_SECONDS,
            ) -> KernelContext:
    def between() -> None:
        if calls is not None:
            calls.append(record() if record is not None else None)

    return KernelContext(device=torch.device("cpu"), on_gpu=False, report=lambda step, latency: None,
                         between_atoms=between, atom_seconds=atom_seconds)


class FakeKernel:
    """Stands in for a Triton kernel: records each launch's (rows, pid_offset) and advances a fake
    clock by ``seconds_per_row`` for each row, so sizing can be checked without timing anything."""

    def __init__(self, clock: list[float], seconds_per_row: float) -> None:
        self.clock = clock
        self.seconds_per_row = seconds_per_row
        self.launches: list[tuple[int, int]] = []

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def run(*args: Any, pid_offset: int, **meta: Any) -> None:
            self.launches.append((grid[0], pid_offset))
            self.clock[0] += grid[0] * self.seconds_per_row

        return run


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [0.0]
    monkeypatch.setattr(atoms, "perf_counter", lambda: now[0])
    return now


# ----------------------------------------------------------------------------- sizing rules


def test_the_target_is_the_context_s_unless_gpuos_atom_us_overrides_it() -> None:
    assert atoms.target_seconds(0.001, environ={}) == 0.001
    assert atoms.target_seconds(0.001, environ={"GPUOS_ATOM_US": "500"}) == pytest.approx(500e-6)
    assert atoms.target_seconds(0.001, environ={"GPUOS_ATOM_US": "0"}) == 0.0
    assert atoms.DEFAULT_ATOM_SECONDS == KernelContext(None, False, print).atom_seconds == 250e-6


@pytest.mark.parametrize("raw", ["-1", "0.5", "fast"])
def test_a_malformed_gpuos_atom_us_is_refused_by_name(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="GPUOS_ATOM_US"):
        atoms.target_seconds(environ={"GPUOS_ATOM_US": raw})


def test_a_probe_atom_gives_about_one_program_per_multiprocessor() -> None:
    assert atoms.probe_rows(rows=100, programs_per_row=12, min_programs=132) == 11
    assert atoms.probe_rows(rows=5, programs_per_row=12, min_programs=132) == 5
    assert atoms.probe_rows(rows=100, programs_per_row=500, min_programs=132) == 1
    assert atoms.probe_rows(rows=100, programs_per_row=3, min_programs=1) == 1


def test_an_atom_holds_the_rows_that_fit_the_target_at_the_measured_rate() -> None:
    assert atoms.atom_rows(rows_left=1000, seconds_per_row=10e-6, target=250e-6) == 25
    assert atoms.atom_rows(rows_left=10, seconds_per_row=10e-6, target=250e-6) == 10
    assert atoms.atom_rows(rows_left=1000, seconds_per_row=1.0, target=250e-6) == 1
    assert atoms.atom_rows(rows_left=1000, seconds_per_row=0.0, target=250e-6) == 1000


def test_a_bound_on_the_atoms_left_makes_atoms_larger_not_more() -> None:
    assert atoms.atom_rows(rows_left=100, seconds_per_row=1.0, target=250e-6, atoms_left=10) == 10
    assert atoms.atom_rows(rows_left=100, seconds_per_row=10e-6, target=250e-6, atoms_left=10) == 25
    assert atoms.atom_rows(rows_left=7, seconds_per_row=1.0, target=250e-6, atoms_left=1) == 7


# ----------------------------------------------------------------------------- the launch loop


def test_atoms_cover_the_grid_in_order_without_gaps_and_last_about_the_target(clock: list[float]) -> None:
    kernel = FakeKernel(clock, seconds_per_row=10e-6)
    calls: list[Any] = []
    count = atoms.launch(kernel, (200, 3), ctx=cpu_ctx(calls))
    # A one-row probe, then 25 rows (250 us at 10 us a row) at a time.
    assert kernel.launches == [(1, 0)] + [(25, 1 + 25 * i) for i in range(7)] + [(24, 176)]
    assert count == len(kernel.launches) == len(calls)


def test_the_measured_rate_sizes_the_next_launch_of_the_same_grid_without_a_probe(clock: list[float]) -> None:
    kernel = FakeKernel(clock, seconds_per_row=10e-6)
    atoms.launch(kernel, (60, 2), ctx=cpu_ctx())
    kernel.launches.clear()
    atoms.launch(kernel, (60, 2), ctx=cpu_ctx())
    assert kernel.launches == [(25, 0), (25, 25), (10, 50)]


def test_off_a_gpu_a_launch_is_held_to_a_bounded_number_of_atoms(clock: list[float]) -> None:
    kernel = FakeKernel(clock, seconds_per_row=1.0)  # every row far over the target
    count = atoms.launch(kernel, (1000, 1), ctx=cpu_ctx())
    assert count == atoms.CPU_MAX_ATOMS
    assert sum(rows for rows, _ in kernel.launches) == 1000


def test_without_a_context_or_with_a_zero_target_the_grid_is_one_launch(
        clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel(clock, seconds_per_row=1.0)
    assert atoms.launch(kernel, (50, 4), ctx=None) == 1
    calls: list[Any] = []
    monkeypatch.setenv("GPUOS_ATOM_US", "0")
    assert atoms.launch(kernel, (50, 4), ctx=cpu_ctx(calls)) == 1
    assert kernel.launches == [(50, 0), (50, 0)] and calls == []


def test_on_a_gpu_each_atom_is_waited_for_before_the_preemption_point(
        clock: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: the stream synchronise and the multiprocessor count are stood in for, to check
    # the order of events a GPU run would see.
    events: list[Any] = []
    monkeypatch.setattr(atoms, "_synchronise", lambda device: events.append("sync"))
    monkeypatch.setattr(atoms, "_multiprocessors", lambda device: 132)
    kernel = FakeKernel(clock, seconds_per_row=10e-6)

    class Recording:
        def __getitem__(self, grid: tuple[int, ...]) -> Any:
            run = kernel[grid]

            def recorded(*args: Any, pid_offset: int, **meta: Any) -> None:
                events.append(("atom", grid[0], pid_offset))
                run(*args, pid_offset=pid_offset, **meta)

            return recorded

    ctx = KernelContext(device="cuda:0", on_gpu=True, report=lambda step, latency: None,
                        between_atoms=lambda: events.append("between"))
    atoms.launch(Recording(), (100, 4), ctx=ctx)
    # Work queued before the launch is waited for first; the probe is 132 / 4 = 33 rows (one
    # program per multiprocessor), then 25 rows (250 us at 10 us a row) at a time.
    assert events == ["sync", ("atom", 33, 0), "sync", "between", ("atom", 25, 33), "sync", "between",
                      ("atom", 25, 58), "sync", "between", ("atom", 17, 83), "sync", "between"]


# ----------------------------------------------------------------------------- the built-in kernels


@pytest.fixture
def tiny_atoms(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every interpreted program slice takes longer than 1 us: one first-axis row per atom.
    monkeypatch.setenv("GPUOS_ATOM_US", "1")


def test_radial_as_atoms_is_bit_identical_to_one_launch(tiny_atoms: None) -> None:
    frames, tokens_per_frame, block = 6, 8, 16  # 3 query blocks
    q, k, v = (torch.randn(1, 2, frames * tokens_per_frame, 16, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    whole = radial.radial_attention(q, k, v, frames, tokens_per_frame, block)
    calls: list[Any] = []
    sliced = radial.radial_attention(q, k, v, frames, tokens_per_frame, block, ctx=cpu_ctx(calls))
    assert torch.equal(whole, sliced)
    assert len(calls) == 3


def test_a_preemption_point_comes_after_an_atom_s_work_and_before_the_next_atom_s(tiny_atoms: None) -> None:
    frames, tokens_per_frame, block = 6, 8, 16
    q, k, v = (torch.randn(1, 2, frames * tokens_per_frame, 16, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    out = torch.full_like(q, math.nan)

    def written_query_blocks() -> list[bool]:
        return [not bool(out[..., qb * block:(qb + 1) * block, :].isnan().any()) for qb in range(3)]

    seen: list[Any] = []
    radial.radial_attention(q, k, v, frames, tokens_per_frame, block, out=out,
                            ctx=cpu_ctx(seen, record=written_query_blocks))
    assert seen == [[True, False, False], [True, True, False], [True, True, True]]


def test_sla_forward_and_backward_as_atoms_are_bit_identical_to_one_launch(
        tiny_atoms: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sla, "STATE_CHUNK_BLOCKS", 2)  # so the linear-state kernel has 2 chunks to slice
    gen = torch.Generator().manual_seed(5)
    leaves = [torch.randn(1, 2, 64, 16, generator=gen) for _ in range(3)] + [torch.randn(16, 16, generator=gen)]
    block_map = sla.classify_blocks(leaves[0], leaves[1], 16, critical_ratio=0.25, negligible_ratio=0.25)
    grad = torch.randn(1, 2, 64, 16, generator=gen)

    def step(ctx: KernelContext | None) -> list[torch.Tensor]:
        xs = [x.clone().requires_grad_(True) for x in leaves]
        out = sla.sla_attention(*xs, block=16, block_map=block_map, ctx=ctx)
        out.backward(grad)
        return [out.detach()] + [x.grad for x in xs if x.grad is not None]

    calls: list[Any] = []
    whole, sliced = step(None), step(cpu_ctx(calls))
    assert len(sliced) == 5 and all(torch.equal(a, b) for a, b in zip(whole, sliced, strict=True))
    # Forward: linear state (2 chunks) + 4 query blocks; backward: state, dQ (4), weighted state, dK/dV (4).
    assert len(calls) == (2 + 4) + (2 + 4 + 2 + 4)


def test_sla_linear_state_sliced_by_chunk_is_bit_identical(tiny_atoms: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sla, "STATE_CHUNK_BLOCKS", 1)
    gen = torch.Generator().manual_seed(6)
    # Two heads: each (head, chunk) partial must land in its own slot whatever the atom's grid.
    k, v = (torch.randn(1, 2, 80, 16, generator=gen) for _ in range(2))
    weight = torch.rand(2, 80, generator=gen)
    calls: list[Any] = []
    for w in (None, weight):
        whole = sla.linear_state(k, v, 16, weight=w)
        sliced = sla.linear_state(k, v, 16, weight=w, ctx=cpu_ctx(calls))
        assert all(torch.equal(a, b) for a, b in zip(whole, sliced, strict=True))
    assert len(calls) == 2 * 5


def test_vattention_decode_as_atoms_is_bit_identical_to_one_launch(tiny_atoms: None) -> None:
    x = va.random_paged_inputs([40, 57], heads=4, kv_heads=2, dim=16, page_size=16, dtype=torch.float32,
                               device="cpu", generator=torch.Generator().manual_seed(8))
    cfg = va.VAttentionConfig(epsilon=0.5, delta=0.4, sink=4, local=8, top_k=16, base_sample=8)

    def decode(ctx: KernelContext | None) -> torch.Tensor:
        return va.vattention_decode(x.q, x.k_cache, x.v_cache, x.page_table, x.seq_lens, cfg,
                                    generator=torch.Generator().manual_seed(9), ctx=ctx).out

    calls: list[Any] = []
    whole, sliced = decode(None), decode(cpu_ctx(calls))
    assert torch.equal(whole, sliced)
    # Two partial launches over 2 x 2 (sequence, KV head) rows, then the combine over 2 x 4 heads.
    assert len(calls) == 4 + 4 + 8


# ----------------------------------------------------------------------------- the worker


def test_the_worker_pauses_at_an_atom_boundary_when_asked_but_stops_only_at_a_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    signals: list[int] = []
    monkeypatch.setattr("gpuos.kernels.worker.os.kill", lambda pid, sig: signals.append(sig))
    yielder = worker.Yielder()
    yielder.atom_boundary()
    assert signals == []
    yielder._ask(signal.SIGUSR1, None)
    yielder.atom_boundary()
    assert signals == [signal.SIGSTOP] and yielder.yields == 1
    yielder._ask_stop(signal.SIGUSR2, None)
    yielder.atom_boundary()  # a stop request is not honoured inside a step
    with pytest.raises(worker.StopAtStep):
        yielder.boundary()


# Its step report goes through gpuos.report_latency, which warns outside gpuosd.
@pytest.mark.filterwarnings("ignore:gpuos.report_latency")
def test_a_worker_s_kernels_reach_its_yielder_between_atoms(monkeypatch: pytest.MonkeyPatch) -> None:
    signals: list[int] = []
    monkeypatch.setattr("gpuos.kernels.worker.os.kill", lambda pid, sig: signals.append(sig))
    yielder = worker.Yielder()
    seen: list[Any] = []

    def runner(params: Any, ctx: KernelContext) -> dict[str, float]:
        yielder._ask(signal.SIGUSR1, None)  # the daemon's pause lands mid-step
        ctx.between_atoms()
        seen.append((list(signals), ctx.atom_seconds))
        ctx.report(0, 0.01)
        return {}

    monkeypatch.setattr(worker, "_runner", lambda spec: runner)
    spec = get_kernel("radial-dit")
    worker.run(spec, {}, worker.Progress("", spec.name, 1), yielder, "normal", 0, 0, atom_seconds=123e-6)
    assert seen == [([signal.SIGSTOP], 123e-6)]  # paused before the step's end


def test_a_worker_refuses_a_malformed_gpuos_atom_us(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GPUOS_ATOM_US", "soon")
    assert worker.main(["--kernel", "radial-dit"]) == 2
    assert "GPUOS_ATOM_US" in capsys.readouterr().err
