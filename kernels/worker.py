"""The kernel worker: runs one kernel job in a gpuos-supervised process.

``python -m gpuos.kernels.worker --kernel NAME --param key=value ...`` is what the daemon starts
for a kernel job (``gpuos.daemon.controller.kernel_command``). The worker

- validates the parameters against the kernel's schema (the daemon already did; a hand-started
  worker gets the same clear error),
- on a GPU, runs the kernel on its own CUDA stream whose priority follows the job's priority
  (``GPUOS_PRIORITY``) and caps the caching allocator at the job's memory share
  (``GPUOS_MEMORY_LIMIT``), so an overrun fails inside the job, not in a neighbour;
- without a GPU, runs the Triton kernels on the CPU under ``TRITON_INTERPRET=1``;
- yields its time-slice turn at atom boundaries: the built-in kernels launch their grids as
  atoms (``gpuos.kernels.atoms``, about 250 us each on a GPU; ``GPUOS_ATOM_US`` overrides it),
  and SIGUSR1 asks the worker to pause: after the atom in flight (or at the step's end, for a
  kernel that does not run as atoms) it stops itself (SIGSTOP) until the daemon's SIGCONT, its
  GPU work finished;
- stops for good at the next step boundary when SIGUSR2 asks it to (steering: ``gpuosctl stop``),
  writing its progress so far and exiting 0;
- writes its progress (steps done, per-step latency) atomically after every step, and a line per
  step to stdout, which the daemon captures as the job's log. Under gpuosd it writes
  ``progress.json`` in the directory open as descriptor ``GPUOS_PROGRESS_DIR_FD`` (the job's own
  directory is private to the daemon, so the worker, maybe another uid, cannot reach it by path);
  started by hand, to the path ``GPUOS_PROGRESS_FILE``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from importlib import import_module
from typing import Any

from gpuos.errors import GpuosError
from gpuos.jobs import KernelProgress
from gpuos.kernels.atoms import target_seconds
from gpuos.kernels.context import DEFAULT_ATOM_SECONDS, KernelContext
from gpuos.kernels.registry import KernelSpec, get_kernel
from gpuos.latency import job_log

PROGRESS_FILE = "progress.json"

# torch's CUDA stream priorities: lower numbers run first; 0 is the default priority.
STREAM_PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


class StopAtStep(Exception):
    """Raised at a step boundary after SIGUSR2 asked the worker to stop there."""


class Yielder:
    """Pause at atom and step boundaries when asked: the daemon's SIGUSR1 sets a request, the next
    boundary of either kind honours it by stopping this process; SIGCONT (the daemon's resume)
    clears a request that a long kernel had not reached yet, so a late boundary never stops a
    resumed job. SIGUSR2 (stop for good) takes effect at a step boundary only, so a stopped job's
    progress counts whole steps."""

    def __init__(self) -> None:
        self.requested = False
        self.stop = False
        self.yields = 0

    def install(self) -> None:
        signal.signal(signal.SIGUSR1, self._ask)
        signal.signal(signal.SIGUSR2, self._ask_stop)
        signal.signal(signal.SIGCONT, self._resumed)

    def _ask_stop(self, signum: int, frame: object) -> None:
        self.stop = True

    def _ask(self, signum: int, frame: object) -> None:
        self.requested = True

    def _resumed(self, signum: int, frame: object) -> None:
        self.requested = False

    def boundary(self) -> None:
        """A step boundary: stop for good when asked (raises ``StopAtStep``), else pause when asked."""
        if self.stop:
            raise StopAtStep
        self.atom_boundary()

    def atom_boundary(self) -> None:
        """Between two atoms (``KernelContext.between_atoms``): pause when asked; a stop waits."""
        if self.requested:
            self.requested = False
            self.yields += 1
            os.kill(os.getpid(), signal.SIGSTOP)


class Progress:
    """Steps done and their latencies, written where the daemon reads them."""

    def __init__(self, path: str, kernel: str, steps_total: int, dir_fd: int | None = None) -> None:
        self.path = path
        # With a directory descriptor, ``path`` is a name in that directory.
        self.dir_fd = dir_fd
        self.kernel = kernel
        self.steps_total = steps_total
        self.latencies: list[float] = []
        self.summary: dict[str, float] = {}

    @classmethod
    def from_environment(cls, kernel: str, steps_total: int) -> Progress:
        """Where gpuosd told the job to write (``GPUOS_PROGRESS_DIR_FD``), else the hand-started
        ``GPUOS_PROGRESS_FILE``, else nowhere. The executor client writes through it too."""
        if os.environ.get("GPUOS_PROGRESS_DIR_FD"):
            return cls(PROGRESS_FILE, kernel, steps_total, dir_fd=int(os.environ["GPUOS_PROGRESS_DIR_FD"]))
        return cls(os.environ.get("GPUOS_PROGRESS_FILE", ""), kernel, steps_total)

    def record(self, step: int, latency_s: float) -> None:
        self.latencies.append(latency_s)
        # Each step is one request as SLO-driven colocation sees it (gpuos/latency.py); a worker
        # started by hand has no log and reports nothing, quietly.
        log = job_log()
        if log is not None:
            log.report(latency_s)
        print(f"step {step + 1}/{self.steps_total}: {latency_s * 1e3:.3f} ms", flush=True)
        self.write()

    def current(self) -> KernelProgress:
        done = len(self.latencies)
        ordered = sorted(self.latencies)
        return KernelProgress(
            kernel=self.kernel,
            steps_done=done,
            steps_total=self.steps_total,
            last_latency_ms=self.latencies[-1] * 1e3 if done else 0.0,
            mean_latency_ms=sum(ordered) / done * 1e3 if done else 0.0,
            p50_latency_ms=_quantile(ordered, 0.5) * 1e3,
            p99_latency_ms=_quantile(ordered, 0.99) * 1e3,
            summary=tuple(self.summary.items()),
        )

    def as_dict(self) -> dict[str, Any]:
        return self.current().as_dict()

    def write(self) -> None:
        if not self.path:
            return
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=self.dir_fd)
        with os.fdopen(fd, "w") as f:
            json.dump(self.as_dict(), f)
        os.replace(tmp, self.path, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def read_progress(path: str) -> KernelProgress | None:
    """The progress a worker wrote at ``path``, or None when it wrote none (yet)."""
    try:
        # gpuosd reads this as root from a directory the job's uid owns: a symlink planted
        # there (to another tenant's env.json, say) must not be followed.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return KernelProgress.from_dict(data) if isinstance(data, dict) else None


def _runner(spec: KernelSpec) -> Any:
    module, _, function = spec.runner.partition(":")
    return getattr(import_module(module), function)


def _place(priority: str, memory_limit: int) -> tuple[Any, bool, Any]:
    """(device, on_gpu, stream context) for this job; sets the interpreter up without a GPU."""
    import torch

    if not torch.cuda.is_available():
        # Must be set before the kernel module (and so Triton's @jit) is imported.
        os.environ["TRITON_INTERPRET"] = "1"
        return torch.device("cpu"), False, None
    device = torch.device("cuda", 0)
    if memory_limit > 0:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_limit / total), device)
    return device, True, torch.cuda.stream(priority_stream(device, priority))


def priority_stream(device: Any, priority: str) -> Any:
    """A CUDA stream on ``device`` for a job of ``priority``: ``high`` takes torch's most urgent
    stream priority, ``normal`` and ``low`` the default (the worker's and the executor's rule)."""
    import torch

    least, greatest = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]  # e.g. (0, -5): greatest is the most urgent
    rank = STREAM_PRIORITY_RANK.get(priority, 1)
    return torch.cuda.Stream(device=device, priority=greatest if rank == 0 else least)


def run(spec: KernelSpec, params: Mapping[str, Any], progress: Progress, yielder: Yielder,
        priority: str, memory_limit: int, seed: int,
        atom_seconds: float = DEFAULT_ATOM_SECONDS) -> dict[str, float]:
    device, on_gpu, stream = _place(priority, memory_limit)
    runner = _runner(spec)

    def report(step: int, latency_s: float) -> None:
        progress.record(step, latency_s)
        yielder.boundary()

    ctx = KernelContext(device=device, on_gpu=on_gpu, report=report, seed=seed,
                        between_atoms=yielder.atom_boundary, atom_seconds=atom_seconds)
    if stream is None:
        return dict(runner(params, ctx))
    with stream:
        return dict(runner(params, ctx))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuos-kernel-worker", description="run one gpuos kernel job")
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        spec = get_kernel(args.kernel)
        raw = dict(p.split("=", 1) if "=" in p else (p, "") for p in args.param)
        params = spec.validate(raw)
        atom_seconds = target_seconds()
    except GpuosError as exc:
        print(f"gpuos-kernel-worker: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time_ns() % (2**31))
    steps = int(params.get("steps", 0))
    progress = Progress.from_environment(spec.name, steps)
    progress.write()
    yielder = Yielder()
    yielder.install()
    print(f"{spec.name}: {json.dumps(params, sort_keys=True)} seed={seed}", flush=True)
    try:
        summary = run(spec, params, progress, yielder, os.environ.get("GPUOS_PRIORITY", "normal"),
                      int(os.environ.get("GPUOS_MEMORY_LIMIT", "0") or 0), seed, atom_seconds)
    except StopAtStep:
        done = len(progress.latencies)
        progress.write()
        print(f"{spec.name}: stopped at step {done} of {steps} as asked, "
              f"{json.dumps(progress.as_dict(), sort_keys=True)}", flush=True)
        return 0
    progress.summary = {k: float(v) for k, v in summary.items()}
    progress.write()
    print(f"{spec.name}: done, {json.dumps(progress.as_dict(), sort_keys=True)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
