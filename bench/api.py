"""API benchmark: submit throughput with 1, 8 and 32 concurrent clients, and scheduling-decision
latency with 10,000 pending jobs.

    python bench/api.py [--seconds 5] [--pending 10000]

Submit throughput counts acknowledged (durable: SQLite WAL with synchronous=FULL) submits per
second against a gpuosd subprocess on the simulated backend, whose GPUs are held by two long jobs
so that submitted jobs stay pending and no process is spawned. The baseline in the same run is
the gRPC health check, the cheapest call through the same socket and relay. Decision latency is
one ``Controller.decide()`` (snapshot + FIFO policy + framework) with the pending queue full.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpuos.client import Client  # noqa: E402
from tests.conftest import DaemonProcess, make_config  # noqa: E402


def rate(clients: int, seconds: float, make_call) -> float:  # type: ignore[no-untyped-def]
    """Calls per second completed by ``clients`` threads, each with its own connection."""
    counts = [0] * clients
    stop = time.monotonic() + seconds
    start_gate = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        call = make_call()
        start_gate.wait()
        while time.monotonic() < stop:
            call()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    started = time.monotonic()
    start_gate.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def submit_throughput(seconds: float) -> list[tuple[int, float, float]]:
    base = Path(tempfile.mkdtemp(prefix="gpuos-b", dir="/tmp"))
    daemon = DaemonProcess(base).start()
    rows = []
    try:
        with Client(socket=daemon.socket) as c:
            for _ in range(2):
                c.submit(["sleep", "3600"], gpus=1)
        for clients in (1, 8, 32):
            def make_submit():  # type: ignore[no-untyped-def]
                client = Client(socket=daemon.socket)
                return lambda: client.submit(["true"], gpus=1, env={"PATH": "/bin"})

            def make_health():  # type: ignore[no-untyped-def]
                stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"unix:{daemon.socket}"))
                return lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

            health = rate(clients, seconds, make_health)
            submits = rate(clients, seconds, make_submit)
            rows.append((clients, submits, health))
    finally:
        with Client(socket=daemon.socket) as c:
            for job in c.list(states=["running"]):
                c.cancel(job.id)
        daemon.stop()
    return rows


def decision_latency(pending: int) -> tuple[list[float], list[float]]:
    from gpuos.daemon.daemon import Daemon
    from gpuos.jobs import JobKind, JobSpec, Resources

    base = Path(tempfile.mkdtemp(prefix="gpuos-b", dir="/tmp"))
    daemon = Daemon(make_config(base))  # not started: the loop must not place these jobs
    spec = JobSpec(name="x", kind=JobKind.PROCESS, resources=Resources(gpus=1), command=("true",), tenant="b")
    threads = [threading.Thread(target=lambda: [daemon.store.submit(spec, 0) for _ in range(pending // 8)])
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decide, snapshot = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        daemon.controller.snapshot()
        snapshot.append(time.perf_counter() - t0)
        daemon.controller.decide()
        decide.append(daemon.controller.last_decision_seconds)
    daemon.store.close()
    return decide, snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pending", type=int, default=10_000)
    args = parser.parse_args()
    print("| clients | submits/s (durable) | health checks/s (baseline) | ratio |")
    print("|---|---|---|---|")
    for clients, submits, health in submit_throughput(args.seconds):
        print(f"| {clients} | {submits:.0f} | {health:.0f} | {submits / health:.2f} |", flush=True)
    decide, snapshot = decision_latency(args.pending)
    p50 = statistics.median(decide)
    p99 = sorted(decide)[int(0.99 * (len(decide) - 1))]
    snap = statistics.median(snapshot)
    print()
    print("| pending | decision p50 | decision max | snapshot alone p50 (baseline) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| {args.pending} | {p50 * 1e3:.1f} ms | {p99 * 1e3:.1f} ms | {snap * 1e3:.1f} ms | {p50 / snap:.2f} |")


if __name__ == "__main__":
    main()
