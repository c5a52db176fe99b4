"""The gpuos demo: gpuosd on simulated GPUs runs a mixed batch of real jobs drawn from a trace.

    python scripts/demo.py [--trace CSV] [--jobs 24] [--speedup 20000]

Jobs come from the Alibaba GPU-sharing trace (cluster-trace-gpu-v2023, Weng et al., ATC'23):
each task's GPU request (whole GPUs or a gpu_milli share) and QoS class are kept, and its
duration is divided by ``--speedup`` (clamped to 2-20 s) so the batch finishes in a minute or
two. Each job is a real process that prints its progress. A MIG job, three kernel jobs, a job that
fails and a request no GPU can satisfy are mixed in. The demo prints the queue and the GPUs as
the batch runs, then a summary.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACE_CANDIDATES = [
    ROOT.parent / "shared" / "traces" / "alibaba-gpu-2023" / "openb_pod_list_gpushare40.csv",
    ROOT / "tests" / "data" / "alibaba-gpu-2023" / "openb_pod_list_default.csv",
]
SIM_GPUS = "2xH100-80GB,1xA100-40GB"
WORKER = (
    "import sys, time\n"
    "steps = int(sys.argv[1])\n"
    "for i in range(1, steps + 1):\n"
    "    time.sleep(0.5)\n"
    "    print(f'step {i}/{steps}', flush=True)\n"
)


def load_tasks(path: Path, count: int, speedup: float) -> list[dict[str, object]]:
    """``count`` GPU tasks spread evenly over the trace, so the batch mixes its request shapes."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["num_gpu"] or 0) > 0]
    tasks = []
    for row in rows[:: max(1, len(rows) // count)][:count]:
        gpus = int(row["num_gpu"])
        start = float(row.get("scheduled_time") or row.get("creation_time") or 0)
        end = float(row.get("deletion_time") or start)
        seconds = min(20.0, max(2.0, (end - start) / speedup))
        milli = int(row["gpu_milli"] or 1000)
        tasks.append({
            "name": row["name"],
            "gpus": min(gpus, 2),  # the demo machine has two GPUs of a kind
            "fraction": milli / 1000 if gpus == 1 and milli < 1000 else None,
            "qos": "LS" if row.get("qos") == "LS" else "BE",
            "steps": max(1, int(seconds / 0.5)),
        })
    return tasks


def ctl(socket: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "gpuos.cli.main", "--socket", socket, *args],
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise SystemExit(f"gpuosctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=next((p for p in TRACE_CANDIDATES if p.exists()), None))
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--speedup", type=float, default=20000.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    if args.trace is None or not args.trace.exists():
        raise SystemExit("no trace found; pass --trace PATH to an openb_pod_list_*.csv")

    base = Path(tempfile.mkdtemp(prefix="gpuos-demo-", dir="/tmp"))
    socket = str(base / "gpuos.sock")
    log = open(base / "gpuosd.log", "w")
    print(f"starting gpuosd on simulated GPUs {SIM_GPUS} (state in {base})")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "gpuos.daemon.main", "--backend", "sim", "--sim-gpus", SIM_GPUS,
         "--socket", socket, "--state-dir", str(base / "state")],
        stdout=log, stderr=log,
    )
    try:
        deadline = time.time() + 30
        while ctl(socket, "policy", "list", check=False).returncode != 0:
            if daemon.poll() is not None or time.time() > deadline:
                raise SystemExit("gpuosd did not start:\n" + (base / "gpuosd.log").read_text())
            time.sleep(0.2)
        print(ctl(socket, "devices").stdout)

        tasks = load_tasks(args.trace, args.jobs, args.speedup)
        print(f"submitting {len(tasks)} jobs from {args.trace.name}, plus a MIG job, three time-shared jobs, "
              "three kernel jobs, a job that fails and one no GPU can take")
        ids = []
        for t in tasks:
            share = ["--gpu-fraction", str(t["fraction"])] if t["fraction"] else ["--gpus", str(t["gpus"])]
            prio = "high" if t["qos"] == "LS" else "normal"
            ids.append(ctl(socket, "submit", "--name", str(t["name"]), *share, "--qos", str(t["qos"]),
                           "--priority", prio, "--", sys.executable, "-c", WORKER, str(t["steps"])).stdout.strip())
        ids.append(ctl(socket, "submit", "--name", "mig-job", "--mig-profile", "3g.20gb", "--gpu-type", "A100-40GB",
                       "--", sys.executable, "-c", WORKER, "6").stdout.strip())
        for prio in ("low", "low", "high"):
            ids.append(ctl(socket, "submit", "--name", f"turns-{prio}", "--share", "timeslice", "--memory", "8GiB",
                           "--priority", prio, "--", sys.executable, "-c", WORKER, "8").stdout.strip())
        failing = ctl(socket, "submit", "--name", "will-fail", "--gpu-fraction", "0.1", "--",
                      sys.executable, "-c", "import sys; print('giving up', file=sys.stderr); sys.exit(3)").stdout.strip()
        ids.append(failing)
        # The built-in kernels run in gpuosd's kernel worker; on this GPU-less machine the worker
        # runs their Triton code on the CPU at small shapes, so a few steps each.
        kernel_jobs = [
            ctl(socket, "submit", "--name", "decode", "--gpu-fraction", "0.25", "--priority", "high", "--qos", "LS",
                "--kernel", "vattention-decode", "--param", "context=2048", "--param", "steps=4").stdout.strip(),
            ctl(socket, "submit", "--name", "sla", "--gpu-fraction", "0.5", "--kernel", "sla-dit",
                "--param", "steps=3").stdout.strip(),
            ctl(socket, "submit", "--name", "radial", "--gpu-fraction", "0.5", "--kernel", "radial-dit",
                "--param", "steps=3").stdout.strip(),
        ]
        ids.extend(kernel_jobs)
        refused = ctl(socket, "submit", "--memory", "500GiB", "--", "true", check=False)
        print(f"a request no GPU can satisfy is refused: {refused.stderr.strip()}\n")

        started = time.time()
        while time.time() - started < args.timeout:
            listing = ctl(socket, "list").stdout
            states = Counter(line.split()[2] for line in listing.splitlines()[1:])
            print(f"[{time.time() - started:5.1f}s] " + "  ".join(f"{k}={v}" for k, v in sorted(states.items())))
            if not states.get("PENDING") and not states.get("RUNNING") and not states.get("PAUSED"):
                break
            if int(time.time() - started) % 10 < 2:
                print(ctl(socket, "devices").stdout)
            time.sleep(2)
        print()
        print(ctl(socket, "list").stdout)
        print("events of the failing job:")
        print(ctl(socket, "events", "--job", failing).stdout)
        print("events of a time-shared job (it took turns with the others on its GPU):")
        print(ctl(socket, "events", "--job", ids[len(tasks) + 1]).stdout)
        print("kernel jobs (progress and per-step latency as their worker reported them):")
        for job in kernel_jobs:
            print(ctl(socket, "get", job).stdout)
        print(f"output of {ids[0]}:")
        print(ctl(socket, "logs", ids[0]).stdout[-200:])
    finally:
        daemon.terminate()
        daemon.wait(10)
        if os.environ.get("GPUOS_DEMO_KEEP") != "1":
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
