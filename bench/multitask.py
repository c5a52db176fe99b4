"""Multitasking one GPU: latency services beside a best-effort job, hand-over, suspend-to-host.

    python bench/multitask.py [--seconds 12] [--out DIR]     (one H100 or H200; about 5 minutes)

Without a GPU it says so and exits 0, having measured nothing (the mechanisms are tested on the
CPU elsewhere: tests/kernels/test_atoms.py, tests/kernels/test_executor.py, tests/test_suspend.py,
tests/test_slo.py). It never changes the GPU's MIG mode and never resets it.

(a) The shape of LithOS's stacked-inference experiment: two latency services and one
best-effort job on one GPU, every job a gpuos kernel job run by gpuos's own runners:

- LS-sparse: ``vattention-decode`` steps (batch 8, 32K context, Llama-3.1-8B heads, bf16), one
  every ``LS_INTERVAL_MS``;
- LS-dense: ``sdpa-decode`` steps (the same shapes, FlashAttention), one every ``LS_INTERVAL_MS``;
- BE: ``sla-dit`` training steps (forward and backward, 95% sparsity, Wan-sized), back to back.

Each runs alone first (its p99 and rate alone are the baselines, measured in the same run); then
all three together under each mechanism:

- ``driver time-slicing``: three processes (gpuos's isolated kernel worker), no MPS;
- ``mps``: the same three as MPS clients of a control daemon gpuos's MpsManager starts;
- ``gpuos priorities``: MPS, with the workers' CUDA streams at their job's priority (LS high, BE
  low: gpuos's worker does this from GPUOS_PRIORITY);
- ``gpuos slo``: as ``gpuos priorities``, plus gpuos's SLO controller (gpuos.partitions.slo)
  duty-cycling the BE job by pausing it at its atom boundaries (SIGUSR1) to hold each LS job's
  SLO;
- ``gpuos executor``: one gpuos kernel executor process runs all three, dispatching atoms by
  priority (LS high, BE low).

Reported per mechanism: each LS job's p99 over its p99 alone and its SLO attainment (SLO = 1.2x
its p99 alone, the issue's target), the BE job's rate over its rate alone, and the aggregate
normalised throughput (each job's completed steps over what it completes alone, summed; an LS
service that keeps up scores 1) over driver time-slicing's. Targets (issue 14): LS p99 at most
1.2x alone with aggregate throughput at least 1.35x driver time-slicing's.

(b) Hand-over: while the BE job runs (i) in the executor, the time from a high-priority job's
submit to its first atom (submit to its first step's report, less that step's own time alone);
(ii) in the isolated worker, from SIGUSR1 to the worker stopped at its next atom boundary.
Target: under 1 ms.

(c) Suspend to host: a process holding ``SUSPEND_GIB`` GiB on the GPU is suspended and restored
through gpuos's CUDA checkpoint code (gpuos.devices.checkpoint); GB/s each way and the memory
NVML saw freed. Target: at least 10 GB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LS_INTERVAL_MS = 10.0
SLO_FACTOR = 1.2
SUSPEND_GIB = 16
HANDOVER_TRIALS = 20
BIG_STEPS = "1000000"

LS_SPARSE = ("vattention-decode", {"batch": "8", "heads": "32", "kv_heads": "8", "dim": "128", "context": "32768",
                                   "dtype": "bf16", "interval_ms": str(LS_INTERVAL_MS)})
LS_DENSE = ("sdpa-decode", {"batch": "8", "heads": "32", "kv_heads": "8", "dim": "128", "context": "32768",
                            "dtype": "bf16", "interval_ms": str(LS_INTERVAL_MS)})
BE = ("sla-dit", {"batch": "1", "heads": "12", "seq_len": "32760", "dim": "128", "block": "64",
                  "critical_ratio": "0.05", "negligible_ratio": "0.0", "backward": "true", "dtype": "bf16"})
JOBS = {"ls-sparse": LS_SPARSE, "ls-dense": LS_DENSE, "be": BE}
PRIORITY = {"ls-sparse": "high", "ls-dense": "high", "be": "low"}
STEP = re.compile(r"^step (\d+)/\d+: ([0-9.]+) ms$")


@dataclass
class Run:
    """One job's steps in one run: each step's latency (s) and when it was reported."""

    latencies: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    error: str = ""

    def rate(self) -> float:
        """Steps per second between the first and the last report."""
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def p99(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(0.99 * len(ordered) + 0.999999) - 1))]


def attainment(values: Sequence[float], slo: float) -> float:
    return sum(1 for v in values if v <= slo) / len(values) if values else float("nan")


def normalised(mix: Mapping[str, Run], alone: Mapping[str, Run]) -> dict[str, float]:
    """Each job's rate in the mix over its rate alone (an LS service that keeps its pace scores 1)."""
    return {name: (mix[name].rate() / alone[name].rate()) if alone[name].rate() else float("nan") for name in mix}


def read_steps(lines: Sequence[tuple[float, str]]) -> Run:
    """A job's steps from the worker's stdout lines ``step i/N: X ms`` (with their arrival times)."""
    run = Run()
    for when, line in lines:
        match = STEP.match(line.strip())
        if match:
            run.latencies.append(float(match.group(2)) / 1e3)
            run.times.append(when)
    return run


def params_argv(params: Mapping[str, str]) -> list[str]:
    return [arg for k, v in {**params, "steps": BIG_STEPS}.items() for arg in ("--param", f"{k}={v}")]


class Job:
    """A kernel job's process (the isolated worker or the executor's client) and its stdout."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        import threading

        self.proc = subprocess.Popen(list(argv), env={**os.environ, **env}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter(), line))

    def steps(self) -> int:
        return sum(1 for _, line in self.lines if line.startswith("step "))

    def stop(self) -> Run:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(timeout=5)
        run = read_steps(self.lines)
        if not run.latencies and self.proc.stderr is not None:
            run.error = self.proc.stderr.read()[-400:]
        return run


def worker(name: str, env: Mapping[str, str]) -> Job:
    kernel, params = JOBS[name]
    argv = [sys.executable, "-m", "gpuos.kernels.worker", "--kernel", kernel, *params_argv(params)]
    return Job(argv, {"GPUOS_PRIORITY": PRIORITY[name], **env})


def warmed(jobs: Mapping[str, Job], timeout: float = 120.0) -> None:
    """Wait until every job has reported a few steps (compiled, allocated), so runs measure the mix."""
    end = time.time() + timeout
    while time.time() < end and any(j.steps() < 3 and j.proc.poll() is None for j in jobs.values()):
        time.sleep(0.1)


def measure(jobs: Mapping[str, Job], seconds: float, during: Callable[[float], None] | None = None) -> dict[str, Run]:
    warmed(jobs)
    for job in jobs.values():
        job.lines.clear()
    end = time.time() + seconds
    while time.time() < end:
        if during is not None:
            during(end)
        else:
            time.sleep(0.05)
    return {name: job.stop() for name, job in jobs.items()}


# -- mechanisms ------------------------------------------------------------------------------------


def alone(seconds: float) -> dict[str, Run]:
    return {name: measure({name: worker(name, {})}, seconds)[name] for name in JOBS}


def driver_timeslicing(seconds: float) -> dict[str, Run]:
    return measure({name: worker(name, {}) for name in JOBS}, seconds)


def with_mps(tmp: Path, body: Callable[[dict[str, str]], dict[str, Run]]) -> dict[str, Run] | str:
    if not shutil.which("nvidia-cuda-mps-control"):
        return "nvidia-cuda-mps-control not found"
    from gpuos.partitions.mps import MpsManager

    uuid = gpu_uuid()
    mps = MpsManager(tmp / "mps", ["nvidia-cuda-mps-control"], {0: uuid})
    try:
        env = {**mps.client_env(0, 1000, 0), "CUDA_VISIBLE_DEVICES": uuid}
        env.pop("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", None)
        return body(env)
    finally:
        mps.stop_all()


def mps_plain(seconds: float, env: dict[str, str]) -> dict[str, Run]:
    # Every client at normal priority: MPS alone, no gpuos priorities.
    return measure({name: worker(name, {**env, "GPUOS_PRIORITY": "normal"}) for name in JOBS}, seconds)


def mps_priorities(seconds: float, env: dict[str, str]) -> dict[str, Run]:
    return measure({name: worker(name, env) for name in JOBS}, seconds)


def mps_slo(seconds: float, env: dict[str, str], slos: Mapping[str, float]) -> dict[str, Run]:
    """gpuos priorities plus the SLO controller duty-cycling the BE job (100 ms period)."""
    from gpuos.partitions.slo import Sample, SloState, tick

    jobs = {name: worker(name, env) for name in JOBS}
    states = {name: SloState() for name in slos}
    seen = {name: 0 for name in slos}
    period = 0.1

    def during(end: float) -> None:
        now = time.time()
        for name in slos:
            lines = jobs[name].lines
            fresh = read_steps(lines[seen[name]:])
            seen[name] = len(lines)
            samples = [Sample(now, s) for s in fresh.latencies]
            states[name] = tick(states[name], samples, now, slos[name])
        share = min(states[name].share if not states[name].suspend else 0.0 for name in slos)
        be = jobs["be"].proc.pid
        run_for = period * share
        if run_for < period:
            os.kill(be, signal.SIGUSR1)  # pause at its next atom boundary
            time.sleep(period - run_for)
            os.kill(be, signal.SIGCONT)
        time.sleep(run_for)

    runs = measure(jobs, seconds, during)
    shares = {name: states[name].right_share for name in slos}
    print(f"  slo controller: right-sized BE share per LS job {shares}", flush=True)
    return runs


class Executor:
    """A gpuos kernel executor process and its control socket, for one run."""

    def __init__(self, tmp: Path) -> None:
        from gpuos.kernels.executor_control import executor_argv

        self.dir = Path(tempfile.mkdtemp(prefix="executor-", dir=tmp))
        self.socket = str(self.dir / "executor.sock")
        self.proc = subprocess.Popen(list(executor_argv(self.socket)), start_new_session=True,
                                     env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu_uuid()})
        from gpuos.kernels.executor_control import ping

        end = time.time() + 60
        while True:
            try:
                ping(self.socket + ".ctl")
                break
            except Exception:
                if time.time() > end or self.proc.poll() is not None:
                    raise RuntimeError("the kernel executor did not start") from None
                time.sleep(0.2)

    def job(self, name: str, job_id: str, params: Mapping[str, str] | None = None) -> Job:
        from gpuos.kernels.executor_control import TOKEN_ENV, admit, client_argv, new_token

        kernel, defaults = JOBS[name]
        token = new_token()
        admit(self.socket + ".ctl", job_id=job_id, token=token, tenant="bench", priority=PRIORITY[name],
              memory_limit=0, kernel=kernel)
        argv = list(client_argv(self.socket, kernel, sorted({**defaults, "steps": BIG_STEPS, **(params or {})}.items())))
        return Job(argv, {TOKEN_ENV: token, "GPUOS_JOB_ID": job_id, "GPUOS_PRIORITY": PRIORITY[name]})

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def executor_run(seconds: float, tmp: Path) -> dict[str, Run]:
    ex = Executor(tmp)
    try:
        return measure({name: ex.job(name, f"mix-{name}") for name in JOBS}, seconds)
    finally:
        ex.close()


# -- (b) hand-over ---------------------------------------------------------------------------------


def handover_executor(tmp: Path) -> list[float]:
    """Seconds from a high-priority job's submit to its first atom, while the BE job runs in the
    same executor. The probe speaks the executor's wire itself (no client process to start): a
    one-step job of one atom (sdpa-decode, batch 1), from its ``accepted`` to its first
    ``progress``, less that step's own time (reported with it)."""
    import socket

    from gpuos.kernels.executor_control import admit, new_token
    from gpuos.kernels.executor_wire import Accepted, Done, LineReader, Progress, Submit, decode, encode

    ex = Executor(tmp)
    out: list[float] = []
    try:
        be = ex.job("be", "handover-be")
        warmed({"be": be})
        kernel, defaults = JOBS["ls-dense"]
        params = {**defaults, "batch": "1", "context": "4096", "steps": "1", "interval_ms": "0"}
        for trial in range(HANDOVER_TRIALS + 1):
            job_id, token = f"handover-{trial}", new_token()
            admit(ex.socket + ".ctl", job_id=job_id, token=token, tenant="bench", priority="high",
                  memory_limit=0, kernel=kernel)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(120)
                sock.connect(ex.socket)
                sock.sendall(encode(Submit(job_id=job_id, token=token, kernel=kernel, params=params, seed=trial)))
                reader, accepted = LineReader(sock), 0.0
                while True:
                    line = reader.read_line()
                    if line is None:
                        break
                    message = decode(line, (Accepted, Progress, Done))
                    if isinstance(message, Accepted):
                        accepted = time.perf_counter()
                    elif isinstance(message, Progress):
                        if trial:  # the first probe compiles and allocates: not a hand-over
                            out.append(max(0.0, time.perf_counter() - accepted - message.latency_s))
                    elif isinstance(message, Done):
                        break
        be.stop()
    finally:
        ex.close()
    return out


def handover_worker() -> list[float]:
    """Seconds from SIGUSR1 to the isolated worker stopped at its next atom boundary."""
    be = worker("be", {})
    warmed({"be": be})
    out = []
    for _ in range(HANDOVER_TRIALS):
        began = time.perf_counter()
        os.kill(be.proc.pid, signal.SIGUSR1)
        while _state(be.proc.pid) != "T":
            if time.perf_counter() - began > 5:
                break
        out.append(time.perf_counter() - began)
        os.kill(be.proc.pid, signal.SIGCONT)
        time.sleep(0.2)
    be.stop()
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


# -- (c) suspend to host ---------------------------------------------------------------------------

HOLDER = """
import sys, time, torch
x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda"); x.fill_(7); torch.cuda.synchronize()
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def suspend_restore() -> dict[str, float] | str:
    import pynvml

    from gpuos.devices.checkpoint import detect, restore_process, suspend_process

    pynvml.nvmlInit()
    version = pynvml.nvmlSystemGetDriverVersion()
    support, driver = detect(version if isinstance(version, str) else version.decode())
    if driver is None:
        return f"unsupported here: {support.detail}"
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    size = SUSPEND_GIB * 1024**3
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(size)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        before = _used(pynvml, handle, holder.pid)
        began = time.perf_counter()
        suspend_process(driver, holder.pid)
        suspend_s = time.perf_counter() - began
        during = _used(pynvml, handle, holder.pid)
        began = time.perf_counter()
        restore_process(driver, holder.pid)
        restore_s = time.perf_counter() - began
        after = _used(pynvml, handle, holder.pid)
    finally:
        holder.kill()
        holder.wait()
    freed = before - during
    return {"held_gib": before / 1024**3, "freed_gib": freed / 1024**3, "back_gib": after / 1024**3,
            "suspend_s": suspend_s, "restore_s": restore_s,
            "suspend_gbps": before / suspend_s / 1e9, "restore_gbps": before / restore_s / 1e9}


def _used(pynvml, handle, pid: int) -> int:  # type: ignore[no-untyped-def]
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    return sum(int(p.usedGpuMemory or 0) for p in procs if p.pid == pid)


# -- report ----------------------------------------------------------------------------------------


def gpu_uuid() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.split()[0]


def mix_rows(results: Mapping[str, dict[str, Run] | str], base: Mapping[str, Run]) -> list[str]:
    slos = {name: SLO_FACTOR * p99(base[name].latencies) for name in ("ls-sparse", "ls-dense")}
    lines = ["| mechanism | LS-sparse p99 / alone | LS-sparse SLO attained | LS-dense p99 / alone | "
             "LS-dense SLO attained | BE rate / alone | aggregate | aggregate / driver time-slicing |",
             "|---|---|---|---|---|---|---|---|"]
    reference = None
    for mech, runs in results.items():
        if isinstance(runs, str):
            lines.append(f"| {mech} | skipped: {runs} | | | | | | |")
            continue
        norm = normalised(runs, base)
        aggregate = sum(norm.values())
        if mech == "driver time-slicing":
            reference = aggregate
        cells = []
        for name in ("ls-sparse", "ls-dense"):
            cells += [f"{p99(runs[name].latencies) / p99(base[name].latencies):.2f}",
                      f"{attainment(runs[name].latencies, slos[name]):.1%}"]
        ratio = f"{aggregate / reference:.2f}" if reference else "n/a"
        lines.append(f"| {mech} | {' | '.join(cells)} | {norm['be']:.2f} | {aggregate:.2f} | {ratio} |")
    return lines


def summary_ms(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    return (f"p50 {statistics.median(values) * 1e3:.3f} ms, p99 {p99(values) * 1e3:.3f} ms, "
            f"max {max(values) * 1e3:.3f} ms over {len(values)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per run (after warm-up)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (multitask.md)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print("bench/multitask.py: no GPU here; multitasking is measured on a real GPU only (nothing measured).")
        return 0
    name = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp(prefix="gpuos-multitask-"))
    began = time.time()
    print(f"device: {name}", flush=True)
    base = alone(args.seconds)
    for job, run in base.items():
        print(f"  alone {job}: {summary_ms(run.latencies)}, {run.rate():.1f} steps/s {run.error}", flush=True)
    slos = {job: SLO_FACTOR * p99(base[job].latencies) for job in ("ls-sparse", "ls-dense")}
    results: dict[str, dict[str, Run] | str] = {}
    results["driver time-slicing"] = driver_timeslicing(args.seconds)
    results["mps"] = with_mps(tmp, lambda env: mps_plain(args.seconds, env))
    results["gpuos priorities (MPS + stream priorities)"] = with_mps(tmp, lambda env: mps_priorities(args.seconds, env))
    results["gpuos slo (priorities + BE duty cycle)"] = with_mps(tmp, lambda env: mps_slo(args.seconds, env, slos))
    results["gpuos executor"] = executor_run(args.seconds, tmp)
    lines = [f"Device: {name}; {args.seconds:g} s measured per run after warm-up; LS steps every "
             f"{LS_INTERVAL_MS:g} ms; SLO = {SLO_FACTOR}x each LS job's p99 alone.", ""]
    lines += [f"- alone {job}: {summary_ms(run.latencies)}, {run.rate():.1f} steps/s" for job, run in base.items()]
    lines += ["", *mix_rows(results, base), ""]
    print("\n".join(lines), flush=True)
    handover = {"executor (submit to first atom)": handover_executor(tmp),
                "isolated worker (SIGUSR1 to stopped)": handover_worker()}
    lines += [f"- hand-over, {k}: {summary_ms(v)}" for k, v in handover.items()]
    try:
        suspend = suspend_restore()
    except Exception as exc:  # the report says what failed instead of losing the run's figures
        suspend = f"failed: {type(exc).__name__}: {exc}"
    if isinstance(suspend, str):
        lines.append(f"- suspend to host: {suspend}")
    else:
        lines.append(
            f"- suspend to host: held {suspend['held_gib']:.1f} GiB, freed {suspend['freed_gib']:.1f} GiB, "
            f"suspend {suspend['suspend_s']:.3f} s ({suspend['suspend_gbps']:.1f} GB/s), restore "
            f"{suspend['restore_s']:.3f} s ({suspend['restore_gbps']:.1f} GB/s), back on the GPU "
            f"{suspend['back_gib']:.1f} GiB")
    lines.append(f"- wall time {time.time() - began:.0f} s")
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "multitask.md").write_text(text + "\n")
        (args.out / "multitask.json").write_text(json.dumps(
            {"handover_s": handover, "suspend": suspend,
             "runs": {m: r if isinstance(r, str) else {j: vars(x) for j, x in r.items()} for m, r in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
