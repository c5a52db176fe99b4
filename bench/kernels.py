"""The built-in kernels against dense PyTorch SDPA, timed in one prepared run on one GPU.

    python bench/kernels.py [--budget-s 420]      # on one H100 or H200, under 8 minutes
    python bench/kernels.py --smoke               # the whole pipeline on the CPU, tiny shapes

Cases, each sparse call timed against PyTorch's ``scaled_dot_product_attention`` with the
FlashAttention backend on the same inputs (the default backend if flash refuses them, and the
table says so):

(a) vAttention decode at 32K context, Llama-3.1-8B heads (32 query, 8 KV, dim 128), batch 1, 8
    and 64 (``gpuos.kernels.vattention.bench_cases``), and against the HBM floor: the bytes its
    plan reads over the device's copy bandwidth, measured in the same run (read + write);
(b) SLA at 95% sparsity (5% critical blocks) at Wan2.1-1.3B shapes (32,760 tokens, 12 heads x
    128, bf16): the forward kernel with the block map built outside the timed call, the forward
    with the classification inside it, and forward + backward (``gpuos.kernels.sla.bench_cases``);
(c) radial attention at Wan 480p, 1x and 4x video length (``gpuos.kernels.radial.bench_cases``).

Targets, printed as PASS or MISS with the figure: decode at most 10% density at least 5x faster
than dense and within 1.3x of the HBM floor; SLA at least 10x faster than dense; radial at 4x
length at least 1.8x faster. Timing: CUDA events around each call, L2 flushed before each, after
warm-up calls, median of up to 100 repetitions within about 1.5 s per callable. A time budget
(``--budget-s``) skips the cases left, with a note, once the run nears it. At the end it lists
every Triton kernel it compiled with its registers and spills (the compiled kernels' ``n_regs``
and ``n_spills``). Results go to stdout as markdown tables and, when ``OUT`` is set, to
``$OUT/kernels.json``.

Without a GPU it prints one line and exits 0: CPU times of interpreted Triton say nothing about
the kernels' speed. ``--smoke`` runs every step on the CPU under the Triton interpreter at tiny
shapes, so that the pipeline is tested where there is no GPU; its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

DECODE_MAX_DENSITY = 0.10
DECODE_MIN_SPEEDUP = 5.0
DECODE_MAX_FLOOR_RATIO = 1.3
SLA_MIN_SPEEDUP = 10.0
RADIAL_MIN_SPEEDUP = 1.8
# Per-case reserve: a case is not started with less than this left of the budget.
CASE_RESERVE_S = 30.0


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    reps: int


@dataclass(frozen=True)
class CaseResult:
    """One sparse call against its dense baseline. Decode cases fill the byte fields, DiT cases
    ``flops`` (dense attention's FLOPs for SLA, the kernel's own for radial: ``rate_of``)."""

    family: str
    label: str
    sparse: Timing
    dense: Timing
    speedup: float
    dense_backend: str
    density: float | None = None
    sparse_bytes: float | None = None
    floor_ms: float | None = None
    floor_ratio: float | None = None
    dense_floor_ratio: float | None = None
    flops: float | None = None
    tflops: float | None = None
    rate_of: str | None = None


@dataclass(frozen=True)
class TargetCheck:
    name: str
    case: str
    figure: float
    threshold: float
    passed: bool
    detail: str


@dataclass(frozen=True)
class CompiledKernel:
    """A Triton kernel as compiled in this run, with ptxas's register and spill counts."""

    kernel: str
    module: str
    num_warps: int
    num_stages: int
    n_regs: int | None
    n_spills: int | None
    shared_bytes: int | None
    constants: str


@dataclass
class BenchReport:
    mode: str
    device: str
    versions: dict[str, str]
    budget_s: float
    copy_gbps: float = 0.0
    cases: list[CaseResult] = field(default_factory=list)
    targets: list[TargetCheck] = field(default_factory=list)
    kernels: list[CompiledKernel] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def use_checkout() -> None:
    """Import ``gpuos.kernels`` from this checkout when the package is not installed (a bare GPU
    machine): pyproject maps the folder ``kernels/`` to ``gpuos.kernels``."""
    try:
        import gpuos.kernels  # noqa: F401
        return
    except ModuleNotFoundError:
        pass
    sys.path.insert(0, str(ROOT))
    import gpuos

    gpuos.__path__.append(str(ROOT))


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, reserve: float) -> bool:
        return self.elapsed() + reserve <= self.seconds


class Timer:
    """Times zero-argument callables. On a GPU: CUDA events around each call, L2 flushed
    before each by writing a buffer larger than it, after ``warmup`` calls; the repetitions
    fill about ``seconds`` (at least ``min_reps``, at most ``max_reps``). On the CPU (smoke):
    wall clock, ``min_reps`` repetitions."""

    def __init__(self, torch: Any, gpu: bool, warmup: int, min_reps: int, max_reps: int,
                 seconds: float) -> None:
        self.torch = torch
        self.gpu = gpu
        self.warmup = warmup
        self.min_reps = min_reps
        self.max_reps = max_reps
        self.seconds = seconds
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda") if gpu else None

    def __call__(self, fn: Callable[[], Any]) -> Timing:
        for _ in range(self.warmup):
            fn()
        if not self.gpu:
            times = []
            for _ in range(self.min_reps):
                began = time.perf_counter()
                fn()
                times.append((time.perf_counter() - began) * 1e3)
            return Timing(statistics.median(times), min(times), len(times))
        cuda = self.torch.cuda
        cuda.synchronize()
        began = time.perf_counter()
        fn()
        cuda.synchronize()
        estimate = max(time.perf_counter() - began, 1e-6)
        reps = max(self.min_reps, min(self.max_reps, int(self.seconds / estimate)))
        events = [(cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)) for _ in range(reps)]
        assert self.flush is not None
        for start, end in events:
            self.flush.zero_()
            start.record()
            fn()
            end.record()
        cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
        return Timing(statistics.median(times), min(times), reps)


def copy_bandwidth_gbps(torch: Any, gpu: bool) -> float:
    """Device-to-device copy rate, bytes read plus bytes written per second, in GB/s."""
    size = (1 << 30) if gpu else (64 << 20)
    device = "cuda" if gpu else "cpu"
    src = torch.ones(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = Timer(torch, gpu, warmup=2, min_reps=10, max_reps=20, seconds=0.2)(lambda: dst.copy_(src))
    return 2 * size / (timing.median_ms * 1e-3) / 1e9


def flash_backend(torch: Any, gpu: bool) -> Callable[[], AbstractContextManager[Any]]:
    """A context that restricts SDPA to FlashAttention on a GPU (nothing on the CPU)."""
    if not gpu:
        return nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def time_dense(timer: Timer, dense: Callable[[], Any], flash: Callable[[], AbstractContextManager[Any]],
               gpu: bool) -> tuple[Timing, str]:
    """The dense baseline under FlashAttention, or PyTorch's default choice where flash refuses the inputs."""
    if not gpu:
        return timer(dense), "math (CPU)"
    try:
        with flash():
            dense()
            return timer(dense), "flash"
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0][:120]
        return timer(dense), f"default (flash refused: {reason})"


def check(report: BenchReport, name: str, case: str, figure: float, threshold: float, passed: bool,
          detail: str) -> None:
    target = TargetCheck(name, case, figure, threshold, passed, detail)
    report.targets.append(target)
    print(f"{'PASS' if passed else 'MISS'}  {name}: {detail} [{case}]", flush=True)


def run_decode(report: BenchReport, timer: Timer, budget: Budget, smoke: bool, torch: Any,
               flash: Callable[[], AbstractContextManager[Any]]) -> None:
    from gpuos.kernels import vattention

    if smoke:
        cases = vattention.bench_cases(contexts=(256,), batches=(1,), device="cpu", dtype=torch.float32)
    else:
        cases = vattention.bench_cases(contexts=(32768,), batches=(1, 8, 64))
    for case in cases:
        if not budget.allows(CASE_RESERVE_S):
            report.skipped.append(f"{case.label}: time budget")
            continue
        run = case.build()
        sparse = timer(run.sparse)
        dense, backend = time_dense(timer, run.dense, flash, not smoke)
        floor_ms = run.sparse_bytes / (report.copy_gbps * 1e9) * 1e3
        dense_floor_ms = run.dense_bytes / (report.copy_gbps * 1e9) * 1e3
        result = CaseResult(
            family="vattention", label=case.label, sparse=sparse, dense=dense,
            speedup=dense.median_ms / sparse.median_ms, dense_backend=backend, density=run.density,
            sparse_bytes=run.sparse_bytes, floor_ms=floor_ms, floor_ratio=sparse.median_ms / floor_ms,
            dense_floor_ratio=dense.median_ms / dense_floor_ms,
        )
        report.cases.append(result)
        print_case(result)
        at_density = run.density <= DECODE_MAX_DENSITY
        check(report, "decode speed-up over dense", case.label, result.speedup, DECODE_MIN_SPEEDUP,
              at_density and result.speedup >= DECODE_MIN_SPEEDUP,
              f"{result.speedup:.2f}x (target >= {DECODE_MIN_SPEEDUP}x at density <= {DECODE_MAX_DENSITY}; "
              f"density {run.density:.3f})")
        assert result.floor_ratio is not None
        check(report, "decode time over the HBM floor", case.label, result.floor_ratio,
              DECODE_MAX_FLOOR_RATIO, result.floor_ratio <= DECODE_MAX_FLOOR_RATIO,
              f"{result.floor_ratio:.2f}x the floor {floor_ms * 1e3:.1f} us for "
              f"{run.sparse_bytes / 1e6:.1f} MB (target <= {DECODE_MAX_FLOOR_RATIO}x)")
        del run
        release(torch, not smoke)


DitCase = tuple[str, Callable[[], Any], Callable[[], Any], float]


def run_dit(report: BenchReport, family: str, cases: Iterator[DitCase], timer: Timer, budget: Budget,
            smoke: bool, torch: Any, flash: Callable[[], AbstractContextManager[Any]]) -> list[CaseResult]:
    results = []
    for label, sparse_fn, dense_fn, flops in cases:
        if not budget.allows(CASE_RESERVE_S):
            report.skipped.append(f"{label}: time budget")
            continue
        sparse = timer(sparse_fn)
        dense, backend = time_dense(timer, dense_fn, flash, not smoke)
        result = CaseResult(
            family=family, label=label, sparse=sparse, dense=dense,
            speedup=dense.median_ms / sparse.median_ms, dense_backend=backend,
            flops=flops, tflops=flops / (sparse.median_ms * 1e-3) / 1e12,
            rate_of="dense attention's FLOPs" if family == "sla" else "the kernel's FLOPs",
        )
        report.cases.append(result)
        results.append(result)
        print_case(result)
    release(torch, not smoke)
    return results


def run_sla(report: BenchReport, timer: Timer, budget: Budget, smoke: bool, torch: Any,
            flash: Callable[[], AbstractContextManager[Any]]) -> None:
    from gpuos.kernels import sla

    if not budget.allows(2 * CASE_RESERVE_S):
        report.skipped.append("sla: time budget")
        return
    if smoke:
        cases = sla.bench_cases("cpu", seq_len=96, heads=1, ratios=(0.05,))
    else:
        cases = sla.bench_cases("cuda", ratios=(0.05,))
    for result in run_dit(report, "sla", iter(cases), timer, budget, smoke, torch, flash):
        check(report, "SLA speed-up over dense at 95% sparsity", result.label, result.speedup,
              SLA_MIN_SPEEDUP, result.speedup >= SLA_MIN_SPEEDUP,
              f"{result.speedup:.2f}x (target >= {SLA_MIN_SPEEDUP}x)")
    del cases


def run_radial(report: BenchReport, timer: Timer, budget: Budget, smoke: bool, torch: Any,
               flash: Callable[[], AbstractContextManager[Any]]) -> None:
    from gpuos.kernels import radial

    if not budget.allows(2 * CASE_RESERVE_S):
        report.skipped.append("radial: time budget")
        return
    if smoke:
        cases = radial.bench_cases("cpu", heads=1, dim=16, tokens_per_frame=16, block=16, frames=(2, 8),
                                   dtype=torch.float32)
    else:
        cases = radial.bench_cases("cuda")
    results = run_dit(report, "radial", iter(cases), timer, budget, smoke, torch, flash)
    # The target is at 4x length, the second case; the first is reported for reference.
    if len(results) == len(cases):
        longest = results[-1]
        check(report, "radial speed-up over dense at 4x length", longest.label, longest.speedup,
              RADIAL_MIN_SPEEDUP, longest.speedup >= RADIAL_MIN_SPEEDUP,
              f"{longest.speedup:.2f}x (target >= {RADIAL_MIN_SPEEDUP}x)")
    del cases


def release(torch: Any, gpu: bool) -> None:
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def compiled_kernels(modules: list[Any]) -> list[CompiledKernel]:
    """Every compiled variant of the Triton kernels defined in ``modules``, from each JIT
    function's per-device cache (empty under the interpreter, which compiles nothing)."""
    from triton.runtime.jit import JITFunction

    found = []
    for module in modules:
        for name, fn in sorted(vars(module).items()):
            if not isinstance(fn, JITFunction) or fn.__module__ != module.__name__:
                continue
            for cache in getattr(fn, "device_caches", {}).values():
                compiled = cache[0] if isinstance(cache, tuple) else cache
                for kernel in compiled.values():
                    meta = kernel.metadata
                    # The constexpr arguments (upper-case names here) tell a kernel's variants apart.
                    constants = getattr(getattr(kernel, "src", None), "constants", None) or {}
                    shown = {fn.arg_names[key[0]] if isinstance(key, tuple) else key: value
                             for key, value in constants.items()}
                    found.append(CompiledKernel(
                        kernel=name, module=module.__name__, num_warps=int(meta.num_warps),
                        num_stages=int(meta.num_stages), n_regs=getattr(kernel, "n_regs", None),
                        n_spills=getattr(kernel, "n_spills", None),
                        shared_bytes=getattr(meta, "shared", None),
                        constants=", ".join(f"{k}={v}" for k, v in shown.items() if str(k).isupper()),
                    ))
    return found


def print_case(result: CaseResult) -> None:
    extra = ""
    if result.floor_ratio is not None:
        extra = (f" | density {result.density:.3f} | {result.sparse_bytes / 1e6:.1f} MB | "
                 f"{result.floor_ratio:.2f}x floor (dense {result.dense_floor_ratio:.2f}x)")
    elif result.tflops is not None:
        extra = f" | {result.tflops:.0f} TFLOP/s ({result.rate_of})"
    print(f"| {result.label} | {result.sparse.median_ms:.3f} | {result.dense.median_ms:.3f} | "
          f"{result.speedup:.2f}x | {result.dense_backend}{extra} |", flush=True)


def print_summary(report: BenchReport) -> None:
    print("\n## Results\n")
    print("| case | sparse ms | dense ms | speed-up | dense SDPA | figure |")
    print("|---|---|---|---|---|---|")
    for r in report.cases:
        if r.floor_ratio is not None:
            figure = f"density {r.density:.3f}, {r.floor_ratio:.2f}x the HBM floor"
        else:
            figure = f"{r.tflops:.0f} TFLOP/s of {r.rate_of}"
        print(f"| {r.label} | {r.sparse.median_ms:.3f} | {r.dense.median_ms:.3f} | {r.speedup:.2f}x | "
              f"{r.dense_backend} | {figure} |")
    print("\n## Targets\n")
    for t in report.targets:
        print(f"- {'PASS' if t.passed else 'MISS'} {t.name}: {t.detail} [{t.case}]")
    print("\n## Compiled Triton kernels (registers, spills)\n")
    if not report.kernels:
        print("none compiled (the interpreter compiles nothing)")
    else:
        print("| kernel | constants | warps | stages | registers | spills | shared bytes |")
        print("|---|---|---|---|---|---|---|")
        for k in report.kernels:
            print(f"| {k.kernel} | {k.constants} | {k.num_warps} | {k.num_stages} | {k.n_regs} | "
                  f"{k.n_spills} | {k.shared_bytes} |")
        spilling = [k for k in report.kernels if k.n_spills]
        print(f"\nspills: {len(spilling)} of {len(report.kernels)} compiled kernels spill"
              + "".join(f"\nSPILL {k.kernel} ({k.constants}): {k.n_spills}" for k in spilling))
    for line in report.skipped:
        print(f"SKIPPED {line}")
    for line in report.errors:
        print(f"ERROR {line}")
    print(f"\nelapsed {report.elapsed_s:.0f} s of a {report.budget_s:.0f} s budget")


def write_json(report: BenchReport) -> Path | None:
    out = os.environ.get("OUT")
    if not out:
        return None
    path = Path(out) / "kernels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="every step on the CPU under the Triton interpreter at tiny shapes "
                             "(times mean nothing)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="wall-clock budget; cases are skipped once it is nearly spent (default 420)")
    parser.add_argument("--only", choices=["vattention", "sla", "radial"], action="append", default=[],
                        help="run only these families (repeatable)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    budget = Budget(args.budget_s)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton
    try:
        import torch
    except ModuleNotFoundError:
        print("bench/kernels.py: no PyTorch here; kernel speed is measured only on a GPU (nothing measured).")
        return 0
    gpu = torch.cuda.is_available() and not args.smoke
    if not gpu and not args.smoke:
        print("bench/kernels.py: no GPU here; kernel speed is measured only on a GPU (nothing measured).")
        return 0
    use_checkout()
    import triton

    from gpuos.kernels import radial, sla, vattention

    if gpu:
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB"
        timer = Timer(torch, True, warmup=3, min_reps=5, max_reps=100, seconds=1.5)
    else:
        device = f"CPU ({platform.machine()}), Triton interpreter"
        timer = Timer(torch, False, warmup=1, min_reps=2, max_reps=2, seconds=0.0)
    report = BenchReport(
        mode="smoke" if args.smoke else "gpu", device=device, budget_s=args.budget_s,
        versions={"torch": torch.__version__, "triton": triton.__version__,
                  "python": platform.python_version()},
    )
    if args.smoke:
        report.notes.append("smoke run: CPU interpreter times at tiny shapes, not a measurement of speed")
    print(f"# bench/kernels.py ({report.mode}): {device}; torch {torch.__version__}, "
          f"triton {triton.__version__}")
    report.copy_gbps = copy_bandwidth_gbps(torch, gpu)
    print(f"copy bandwidth (read + write): {report.copy_gbps:.0f} GB/s\n", flush=True)
    print("| case | sparse ms | dense ms | speed-up | dense SDPA | figures |")
    print("|---|---|---|---|---|---|", flush=True)
    flash = flash_backend(torch, gpu)
    runners = {"vattention": run_decode, "sla": run_sla, "radial": run_radial}
    for family, runner in runners.items():
        if args.only and family not in args.only:
            continue
        try:
            runner(report, timer, budget, args.smoke, torch, flash)
        except Exception as exc:  # noqa: BLE001 - one family's failure must not lose the others' figures
            report.errors.append(f"{family}: {type(exc).__name__}: {exc}")
            print(f"ERROR {family}: {type(exc).__name__}: {exc}", flush=True)
            release(torch, gpu)
    report.kernels = compiled_kernels([sla, radial, vattention])
    report.elapsed_s = budget.elapsed()
    print_summary(report)
    path = write_json(report)
    if path is not None:
        print(f"wrote {path}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
