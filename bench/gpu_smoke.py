"""Real-GPU smoke test of the NVML backend, MPS and MIG. Run where a GPU is:

    PYTHONPATH=. python3 bench/gpu_smoke.py

Each step prints PASS, SKIP (why) or FAIL (why), then a summary; the exit status is 1 only when a
step FAILed. It changes nothing on the GPU: MIG mode is only read, no instance is created, and
the MPS control daemon it starts uses private pipe and log directories and is told to quit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from gpuos.devices.nvml import NvmlBackend
from gpuos.errors import BackendError
from gpuos.units import format_bytes


class Skip(Exception):
    pass


results: list[tuple[str, str, str]] = []


def step(name: str, check: Callable[[], str]) -> None:
    try:
        detail = check()
        outcome = "PASS"
    except Skip as exc:
        outcome, detail = "SKIP", str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure is a FAIL line, not a crash
        outcome, detail = "FAIL", f"{type(exc).__name__}: {exc}"
    results.append((name, outcome, detail))
    print(f"{outcome:4}  {name}: {detail}", flush=True)


def main() -> int:
    backend: NvmlBackend | None = None

    def open_nvml() -> str:
        nonlocal backend
        backend = NvmlBackend()
        return f"{len(backend.devices())} GPU(s)"

    step("nvml: open", open_nvml)
    if backend is None:
        return summary()
    nvml = backend

    def devices() -> str:
        infos = nvml.devices()
        assert infos, "NVML reports no GPU"
        for d in infos:
            assert d.uuid.startswith("GPU-") and d.memory_total > 0 and d.sm_count > 0, d
        return "; ".join(
            f"{d.index}: {d.model}, {format_bytes(d.memory_total)}, {d.sm_count} SMs, "
            f"{len(d.mig_profiles)} MIG profiles"
            for d in infos
        )

    def status() -> str:
        s = nvml.status()
        assert all(x.healthy for x in s), s
        return "; ".join(
            f"{x.index}: {x.utilization_pct:.0f}% util, {format_bytes(x.memory_used)} used, "
            f"{x.temperature_c} C, {x.power_w} W, {len(x.processes)} processes"
            for x in s
        )

    def cuda_process() -> str:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise Skip("torch is not installed here") from exc
        code = (
            "import torch, sys, time; x = torch.empty(512 * 2**20, dtype=torch.uint8, device='cuda'); "
            "torch.cuda.synchronize(); print('ready', flush=True); sys.stdin.readline()"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            seen = []
            deadline = time.time() + 10
            while time.time() < deadline:
                seen = [p for s in nvml.status() for p in s.processes if p.pid == child.pid]
                if seen:
                    break
                time.sleep(0.2)
            if not seen:
                # In a VM or container the driver may report host pids; say which pids it saw.
                pids = [p.pid for s in nvml.status() for p in s.processes]
                raise AssertionError(f"pid {child.pid} not among NVML's compute processes {pids}")
            return f"pid {child.pid} seen holding {format_bytes(seen[0].memory_used)}"
        finally:
            if child.stdin:
                child.stdin.close()
            child.wait(timeout=30)

    step("nvml: devices", devices)
    step("nvml: status", status)
    step("nvml: a CUDA process appears in ComputeRunningProcesses", cuda_process)

    def mps() -> str:
        control = shutil.which("nvidia-cuda-mps-control")
        if control is None:
            raise Skip("nvidia-cuda-mps-control is not on PATH")
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                **os.environ,
                "CUDA_MPS_PIPE_DIRECTORY": f"{tmp}/pipe",
                "CUDA_MPS_LOG_DIRECTORY": f"{tmp}/log",
            }
            os.makedirs(env["CUDA_MPS_PIPE_DIRECTORY"])
            os.makedirs(env["CUDA_MPS_LOG_DIRECTORY"])
            started = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=30)
            if started.returncode != 0:
                raise AssertionError(f"-d exited {started.returncode}: {started.stderr.strip()}")
            try:
                listed = subprocess.run(
                    [control], input="get_server_list\n", env=env, capture_output=True, text=True, timeout=30
                )
                assert listed.returncode == 0, listed.stderr
            finally:
                quit_ = subprocess.run(
                    [control], input="quit\n", env=env, capture_output=True, text=True, timeout=30
                )
            log = open(f"{tmp}/log/control.log").read() if os.path.exists(f"{tmp}/log/control.log") else ""
            assert quit_.returncode == 0, quit_.stderr
            return f"control daemon started, answered get_server_list and quit ({len(log.splitlines())} log lines)"

    step("mps: control daemon starts and quits", mps)

    def mig() -> str:
        notes = []
        for d in nvml.devices():
            if not d.mig_capable:
                notes.append(f"GPU {d.index}: MIG not supported")
                continue
            enabled = nvml.mig_enabled(d.index)
            table = ", ".join(
                f"{p.name}(x{p.max_count}, {p.memory_slices}/8 mem, starts {list(p.placements)})"
                for p in d.mig_profiles
            )
            instances = nvml.mig_instances(d.index) if enabled else []
            notes.append(
                f"GPU {d.index}: MIG {'enabled' if enabled else 'disabled'}; "
                f"{len(instances)} instances; profiles {table}"
            )
        if all("not supported" in n for n in notes):
            raise Skip("; ".join(notes))
        return " | ".join(notes)

    step("mig: mode, GPU-instance profiles and placements (read-only)", mig)
    nvml.close()
    return summary()


def summary() -> int:
    counts = {k: sum(1 for _, o, _ in results if o == k) for k in ("PASS", "SKIP", "FAIL")}
    print(f"summary: {counts['PASS']} passed, {counts['SKIP']} skipped, {counts['FAIL']} failed")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BackendError as exc:
        print(f"FAIL  {exc}")
        sys.exit(1)
