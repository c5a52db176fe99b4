"""API benchmark: submit throughput with 1, 8 and 32 concurrent clients, SubmitBatch throughput,
scheduling-decision latency with 10,000 pending jobs, and unary latency under Watch followers.

    python bench/api.py [--seconds 5] [--pending 10000] [--batches 5] [--followers 200]

Submit throughput counts acknowledged (durable: SQLite WAL with synchronous=FULL) submits per
second against a gpuosd subprocess on the simulated backend, whose GPUs are held by two long jobs
so that submitted jobs stay pending and no process is spawned. The baseline in the same run is
the gRPC health check, the cheapest call through the same socket and relay. Decision latency is
one ``Controller.decide()`` (snapshot + FIFO policy + framework) with the pending queue full,
over rounds that each follow a burst of new submits (an agent's flood), so the model's
incremental sync is what is measured; its baseline is the snapshot alone. SubmitBatch sends
batches of 10,000 jobs, each one durable commit; its baseline is the health check of the same
run. Followers are Watch streams (follow=True) of one tenant while another tenant submits; the
figure is the p50/p99 of another tenant's Get, against the same Get with no followers.
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


def unbounded_daemon() -> DaemonProcess:
    """A gpuosd without the per-tenant cap of pending jobs (these runs queue 50,000)."""
    base = Path(tempfile.mkdtemp(prefix="gpuos-b", dir="/tmp"))
    config = base / "gpuosd.toml"
    config.write_text("max_pending_per_tenant = 1000000\n")
    return DaemonProcess(base, "--config", str(config)).start()


def batch_throughput(batches: int) -> tuple[float, float]:
    """(jobs per second through SubmitBatch of 10,000, health checks per second), same daemon."""
    daemon = unbounded_daemon()
    try:
        with Client(socket=daemon.socket, timeout=120) as c:
            for _ in range(2):
                c.submit(["sleep", "3600"], gpus=1)
            elapsed = 0.0
            for b in range(batches):
                requests = [c.submit_request(["true", str(i)], name=f"b{b}-{i}", gpus=1, env={"PATH": "/bin"})
                            for i in range(10_000)]
                t0 = time.perf_counter()
                c.submit_batch(requests)
                elapsed += time.perf_counter() - t0
            stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"unix:{daemon.socket}"))
            health = rate(1, 3.0, lambda: lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=10))
            for job in c.list(states=["running"]):
                c.cancel(job.id)
    finally:
        daemon.stop()
    return batches * 10_000 / elapsed, health


def decision_latency(pending: int, rounds: int = 200, burst: int = 20) -> tuple[list[float], list[float]]:
    from gpuos.daemon.daemon import Daemon
    from gpuos.jobs import JobKind, JobSpec, Resources
    from gpuos.scheduler import Place

    base = Path(tempfile.mkdtemp(prefix="gpuos-b", dir="/tmp"))
    daemon = Daemon(make_config(base, max_pending_per_tenant=1_000_000))  # not started: no loop places these
    spec = JobSpec(name="x", kind=JobKind.PROCESS, resources=Resources(gpus=1), command=("true",), tenant="b")
    daemon.store.submit_batch([(spec, "", None)] * pending, 0)
    # Two GPUs held (as in the submit benchmark): every round has the whole queue and no room.
    for _ in range(2):
        daemon.controller.lifecycle.start(next(d for d in daemon.controller.decide() if isinstance(d, Place)))
    decide, snapshot = [], []
    for _ in range(rounds):
        daemon.store.submit_batch([(spec, "", None)] * burst, 0)
        t0 = time.perf_counter()
        daemon.controller.snapshot()
        snapshot.append(time.perf_counter() - t0)
        daemon.store.submit_batch([(spec, "", None)] * burst, 0)
        daemon.controller.decide()
        decide.append(daemon.controller.last_decision_seconds)
    for job in daemon.store.placed():
        daemon.controller.runtime.signal(job.id, 9)
    daemon.store.close()
    return decide, snapshot


def followers_latency(followers: int, seconds: float) -> list[tuple[int, float, float, int, int]]:
    """(followers, Get p50 ms, Get p99 ms, followers refused, followers that saw their job end)
    with 0 and ``followers`` Watch streams open, each following a job of its own (as an agent
    follows its jobs), while another tenant floods submits. Followers share one connection per
    50 (a uid may hold 256 connections)."""
    daemon = unbounded_daemon()
    rows = []
    try:
        with Client(socket=daemon.socket) as c:
            for _ in range(2):
                c.submit(["sleep", "3600"], gpus=1)
            probe = c.submit(["true"], gpus=1, tenant="probe")
        for count in (0, followers):
            stop = threading.Event()
            refused, ended = [0], [0]
            channels = [Client(socket=daemon.socket) for _ in range(max(1, (count + 49) // 50))]
            followed = [r.job.id for r in channels[0].submit_batch(
                [Client.submit_request(["true"], gpus=1, group=f"followed-{count}") for _ in range(count)])
            ] if count else []

            def follow(i: int, refused: list[int] = refused, ended: list[int] = ended,
                       channels: list[Client] = channels, followed: list[str] = followed) -> None:
                try:
                    for event in channels[i % len(channels)].events(follow=True, job_id=followed[i]):
                        if event.kind == "cancelled":
                            ended[0] += 1
                except Exception:  # noqa: BLE001 - a refused stream is counted, not fatal
                    refused[0] += 1

            def flood(stop: threading.Event = stop) -> None:
                with Client(socket=daemon.socket) as f:
                    while not stop.is_set():
                        f.submit(["true"], gpus=1, tenant="flood")

            threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(count)]
            flooding = threading.Thread(target=flood, daemon=True)
            for t in (*threads, flooding):
                t.start()
            time.sleep(2.0)
            latencies = []
            with Client(socket=daemon.socket) as c:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    c.get(probe.id)
                    latencies.append(time.perf_counter() - t0)
                stop.set()
                if count:
                    c.cancel_group(f"followed-{count}")  # one commit: every follower's job ends
            for t in threads:
                t.join(timeout=30)
            for channel in channels:
                channel.close()
            latencies.sort()
            rows.append((count, statistics.median(latencies) * 1e3,
                         latencies[int(0.99 * (len(latencies) - 1))] * 1e3, refused[0], ended[0]))
    finally:
        daemon.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--followers", type=int, default=1000)
    args = parser.parse_args()
    print("| clients | submits/s (durable) | health checks/s (baseline) | ratio |")
    print("|---|---|---|---|")
    for clients, submits, health in submit_throughput(args.seconds):
        print(f"| {clients} | {submits:.0f} | {health:.0f} | {submits / health:.2f} |", flush=True)
    jobs_per_second, health = batch_throughput(args.batches)
    print()
    print("| SubmitBatch of 10,000 | jobs/s (durable) | health checks/s, 1 client (baseline) | ratio |")
    print("|---|---|---|---|")
    print(f"| {args.batches} batches | {jobs_per_second:.0f} | {health:.0f} | {jobs_per_second / health:.2f} |",
          flush=True)
    decide, snapshot = decision_latency(args.pending)
    p50 = statistics.median(decide)
    p99 = sorted(decide)[int(0.99 * (len(decide) - 1))]
    snap = statistics.median(snapshot)
    print()
    print("| pending | decision p50 | decision p99 | snapshot alone p50 (baseline) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| {args.pending} | {p50 * 1e3:.2f} ms | {p99 * 1e3:.2f} ms | {snap * 1e3:.2f} ms | {p50 / snap:.2f} |",
          flush=True)
    print()
    print("| Watch followers | Get p50 | Get p99 | followers refused | followers that saw their job end |")
    print("|---|---|---|---|---|")
    for count, g50, g99, refused, received in followers_latency(args.followers, args.seconds):
        print(f"| {count} | {g50:.2f} ms | {g99:.2f} ms | {refused} | {received} |", flush=True)


if __name__ == "__main__":
    main()
