"""Colocation: a latency-sensitive job beside a throughput job under each sharing mechanism.

    python bench/colocation.py [--seconds 8] [--out DIR]            (on a machine with a GPU)

Mechanisms, each against the two jobs running alone in the same run:
- exclusive: one job per GPU at a time (the throughput job waits for the latency job);
- timeslice-native: both processes on the GPU, the driver's own time-slicing between contexts;
- timeslice-gpuos: gpuos's time-slicing (gpuos.partitions.timeslice with 50 ms quanta, applied
  with SIGSTOP/SIGCONT of each job's process group, as gpuosd does);
- mps: both as MPS clients of a control daemon started by gpuos.partitions.mps, 50% of the SMs
  each;
- mig: two 3g slices, when the GPU is in MIG mode (changing the mode needs a GPU reset, which
  this benchmark never does; it reports the step as skipped otherwise).

The simulated backend has no real GPU to measure, so this benchmark runs only where a GPU is
(without one it says so and exits 0, having measured nothing); the simulator's interference
model (docs/scheduler.md, "What sharing costs") is what stands in for it elsewhere. With MPS it
refreshes that calibration: it prints the interference coefficient that makes the model's MPS
rate reproduce the measured pair slowdown (:func:`interference_for`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpuos.partitions.timeslice import Sharer, Turn, plan_turns  # noqa: E402

WORKER = str(ROOT / "bench" / "colocation_worker.py")
# Each MPS client here gets half the SMs, so each one's neighbour holds half the GPU.
MPS_NEIGHBOUR_SHARE = 0.5


def interference_for(slowdown: float, neighbour_share: float = MPS_NEIGHBOUR_SHARE) -> float:
    """The coefficient X for which the simulator's MPS rate, 1 / (1 + X x neighbour_share), is
    1 / ``slowdown``: X = (slowdown - 1) / neighbour_share. ``slowdown`` is the job's time beside
    its neighbour over its time alone on the same share (the model's rate 1)."""
    return (slowdown - 1.0) / neighbour_share


def calibration(ls_share: dict[str, float], tp_share: dict[str, float],
                ls_pair: dict[str, float], tp_pair: dict[str, float]) -> list[str]:
    """Lines giving each job's MPS pair slowdown and the interference coefficient it implies."""
    ls_slowdown = ls_pair["p50_ms"] / ls_share["p50_ms"]
    tp_slowdown = tp_share["tflops"] / tp_pair["tflops"]
    xs = [interference_for(ls_slowdown), interference_for(tp_slowdown)]
    return [
        f"MPS pair slowdown (beside the neighbour / alone on the same {MPS_NEIGHBOUR_SHARE:.0%} share): "
        f"latency job p50 {ls_slowdown:.3f}x, throughput job {tp_slowdown:.3f}x",
        f"interference = (slowdown - 1) / {MPS_NEIGHBOUR_SHARE:g} = {xs[0]:.3f} (latency), {xs[1]:.3f} (throughput); "
        f"mean {sum(xs) / 2:.2f} (SimConfig.interference; docs/scheduler.md, What sharing costs)",
    ]


def start(role: str, seconds: float, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, WORKER, role, str(seconds), str(out)],
                            env={**os.environ, **(env or {})}, start_new_session=True)


def summary(out: Path) -> dict[str, float]:
    data = json.loads(out.read_text())
    if "latencies" in data:
        lat = sorted(data["latencies"])
        return {"p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))]}
    return {"tflops": data["tflops"]}


def alone(role: str, seconds: float, tmp: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    out = tmp / f"{role}-alone.json"
    start(role, seconds, out, env).wait()
    return summary(out)


def run_pair(seconds: float, tmp: Path, ls_env=None, tp_env=None, slicer=None):  # type: ignore[no-untyped-def]
    ls_out, tp_out = tmp / "ls.json", tmp / "tp.json"
    ls, tp = start("ls", seconds, ls_out, ls_env), start("tp", seconds, tp_out, tp_env)
    if slicer is not None:
        slicer({"ls": ls, "tp": tp})
    ls.wait()
    tp.wait()
    return summary(ls_out), summary(tp_out)


def gpuos_timeslice(quantum: float):  # type: ignore[no-untyped-def]
    def drive(procs: dict[str, subprocess.Popen[bytes]]) -> None:
        turns: dict[int, Turn] = {}
        paused: set[str] = set()
        # Let both initialise their CUDA contexts before turns begin.
        time.sleep(3.0)
        while all(p.poll() is None for p in procs.values()):
            plan = plan_turns({0: [Sharer("ls", 1), Sharer("tp", 1)]}, turns, time.time(), lambda _: quantum)
            turns = plan.turns
            for name in plan.pause - paused:
                os.killpg(procs[name].pid, signal.SIGSTOP)
            for name in plan.run & paused:
                os.killpg(procs[name].pid, signal.SIGCONT)
            paused = set(plan.pause)
            time.sleep(max(0.0, turns[0].until - time.time()))
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGCONT)
    return drive


def mig_enabled() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=mig.mode.current", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip().lower().startswith("enabled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print("bench/colocation.py: no GPU here; colocation is measured on real GPUs only (nothing measured, "
              "calibration unchanged).")
        return 0
    name = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp(prefix="gpuos-coloc-"))
    rows = []
    notes: list[str] = []
    ls_alone, tp_alone = alone("ls", args.seconds, tmp), alone("tp", args.seconds, tmp)
    rows.append(("alone", ls_alone, tp_alone))
    rows.append(("exclusive (tp waits)", ls_alone, {"tflops": 0.0}))
    rows.append(("timeslice-native", *run_pair(args.seconds, tmp)))
    rows.append(("timeslice-gpuos 50ms", *run_pair(args.seconds, tmp, slicer=gpuos_timeslice(0.05))))
    if shutil.which("nvidia-cuda-mps-control"):
        from gpuos.partitions.mps import MpsManager

        uuid = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True,
                              text=True).stdout.split()[0]
        mps = MpsManager(tmp / "mps", ["nvidia-cuda-mps-control"], {0: uuid})
        try:
            half = 40 * 1024**3
            env = {**mps.client_env(0, 500, half), "CUDA_VISIBLE_DEVICES": uuid}
            # Each alone on its 50% share first: that separates the cost of a smaller share from
            # the cost of the neighbour (interference), which the simulator models separately.
            ls_share = alone("ls", args.seconds, tmp, env)
            tp_share = alone("tp", args.seconds, tmp, env)
            rows.append(("mps 50%, each alone", ls_share, tp_share))
            ls_pair, tp_pair = run_pair(args.seconds, tmp, ls_env=env, tp_env=env)
            rows.append(("mps 50%/50%", ls_pair, tp_pair))
            notes = calibration(ls_share, tp_share, ls_pair, tp_pair)
        finally:
            mps.stop_all()
    else:
        rows.append(("mps", {"skipped": "nvidia-cuda-mps-control not found"}, {}))
    if not mig_enabled():
        rows.append(("mig", {"skipped": "MIG mode is off (enabling it needs a GPU reset)"}, {}))

    lines = [f"Device: {name}; {args.seconds:g} s per run; latency job = SDPA decode step, batch 8 x 32K, "
             "bf16; throughput job = 8192^3 bf16 matmuls.", "",
             "| mechanism | LS p50 ms | LS p99 ms | LS p99 / alone | TP TFLOP/s | TP / alone |", "|---|---|---|---|---|---|"]
    for mech, ls, tp in rows:
        if "skipped" in ls:
            lines.append(f"| {mech} | skipped: {ls['skipped']} | | | | |")
            continue
        lines.append(f"| {mech} | {ls['p50_ms']:.3f} | {ls['p99_ms']:.3f} | {ls['p99_ms'] / ls_alone['p99_ms']:.2f} | "
                     f"{tp['tflops']:.0f} | {tp['tflops'] / tp_alone['tflops']:.2f} |")
    text = "\n".join([*lines, "", *notes] if notes else lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "colocation.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
