"""One tenant's load on a gpuosd, run as that tenant's uid (tests/test_gateway.py, bench/fairness.py).

    python tests/tenant_load.py flood UID SOCKET [--streams N] [--connections N] [--submit-loop]
    python tests/tenant_load.py probe UID SOCKET [--rounds N]

``flood`` opens follow streams (``events -f``) over gRPC channels and idle raw connections to
the public socket, prints one JSON line saying how many the daemon accepted and refused, keeps
them open (and, with ``--submit-loop``, submits jobs as fast as it can) until its stdin closes,
then prints a last JSON line with the number of submits. ``probe`` times ``devices``, ``submit``
and ``get`` for ``--rounds`` rounds and prints the latencies as JSON.

Like tests/as_user.py, modules are imported as root before privileges are dropped: the
interpreter lives under /root, which other users cannot read.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uuid  # noqa: E402,F401

import grpc  # noqa: E402

import gpuos.daemon.config  # noqa: E402,F401 - the client loads it lazily
from gpuos.client import ApiError, Client  # noqa: E402
from gpuos.v1 import jobs_pb2, jobs_pb2_grpc  # noqa: E402

CHANNELS = 10


def open_streams(target: str, count: int) -> tuple[list[grpc.Channel], list[object], int, int]:
    """Open ``count`` follow streams over a few channels; (channels, calls kept, accepted, refused)."""
    # Distinct options keep the channels from sharing one connection.
    channels = [grpc.insecure_channel(target, options=[("gpuos.flood_channel", i)]) for i in range(CHANNELS)]
    calls: list[object] = []
    accepted = refused = 0
    for i in range(count):
        call = jobs_pb2_grpc.JobServiceStub(channels[i % CHANNELS]).Watch(jobs_pb2.WatchRequest(follow=True))
        try:
            next(call)  # the tenant has a job, so an accepted stream sends its events at once
            accepted += 1
            calls.append(call)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                raise
            refused += 1
    return channels, calls, accepted, refused


def open_idle_connections(path: str, count: int, settle: float = 10.0) -> tuple[list[socket.socket], int]:
    """Connect ``count`` raw sockets that never speak; (those still open, how many the daemon closed)."""
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        socks.append(s)
    # The daemon closes those over the cap as it accepts them; wait until the count holds still.
    deadline = time.monotonic() + settle
    open_ = socks
    time.sleep(1.0)
    while True:
        still = []
        for s in open_:
            try:
                if s.recv(1) == b"":
                    s.close()
                    continue
            except BlockingIOError:
                pass
            still.append(s)
        settled = len(still) == len(open_)
        open_ = still
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return open_, count - len(open_)


def flood(args: argparse.Namespace) -> int:
    target = f"unix:{args.socket}"
    with Client(socket=args.socket) as client:
        client.submit(["true"], env={}, name="flood")  # gives every accepted stream an event to send
        channels, calls, accepted, refused = open_streams(target, args.streams)
        conns, closed = open_idle_connections(args.socket, args.connections)
        print(json.dumps({"streams_accepted": accepted, "streams_refused": refused,
                          "connections_open": len(conns), "connections_closed": closed}), flush=True)
        submits = 0
        stop = threading.Event()

        def submit_loop() -> None:
            nonlocal submits
            while not stop.is_set():
                try:
                    client.submit(["true"], env={}, name="flood")
                    submits += 1
                except ApiError:
                    time.sleep(0.05)  # refused (a quota): the flood goes on

        looper = threading.Thread(target=submit_loop, daemon=True)
        if args.submit_loop:
            looper.start()
        sys.stdin.read()  # until the caller closes our stdin
        stop.set()
        if args.submit_loop:
            looper.join(30)
        print(json.dumps({"submits": submits}), flush=True)
        for call in calls:
            call.cancel()  # type: ignore[attr-defined]
        for ch in channels:
            ch.close()
        for s in conns:
            s.close()
    return 0


def probe(args: argparse.Namespace) -> int:
    out: dict[str, list[float]] = {"devices": [], "submit": [], "get": []}
    with Client(socket=args.socket, timeout=30) as client:
        client.policies()  # connect first: the latency asked about is a call's, not a connection's
        for _ in range(args.rounds):
            started = time.perf_counter()
            client.devices()
            out["devices"].append(time.perf_counter() - started)
            started = time.perf_counter()
            job = client.submit(["true"], env={}, name="probe")
            out["submit"].append(time.perf_counter() - started)
            started = time.perf_counter()
            client.get(job.id)
            out["get"].append(time.perf_counter() - started)
            time.sleep(args.pause)
    print(json.dumps(out), flush=True)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tenant_load")
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("flood")
    p = sub.add_parser("probe")
    for q in (f, p):
        q.add_argument("uid", type=int)
        q.add_argument("socket")
    f.add_argument("--streams", type=int, default=130)
    f.add_argument("--connections", type=int, default=500)
    f.add_argument("--submit-loop", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.uid != os.getuid():
        os.setgroups([])
        os.setgid(args.uid)
        os.setuid(args.uid)
    return flood(args) if args.mode == "flood" else probe(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
