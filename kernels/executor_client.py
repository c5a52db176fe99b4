"""The job side of a kernel job that runs in the shared per-GPU kernel executor.

``python -m gpuos.kernels.executor_client --socket PATH --kernel NAME --param K=V ... [--seed N]``
is what gpuosd starts as a ``--share executor`` kernel job, in place of ``gpuos.kernels.worker``
and with the same contract, so the daemon treats both alike:

- environment: ``GPUOS_JOB_ID`` and ``GPUOS_EXECUTOR_TOKEN`` (the admission gpuosd gave the
  executor, see :mod:`gpuos.kernels.executor_control`), ``GPUOS_PROGRESS_DIR_FD`` or
  ``GPUOS_PROGRESS_FILE`` (where progress.json goes); ``GPUOS_PRIORITY``, ``GPUOS_MEMORY_LIMIT``
  and ``GPUOS_TENANT`` are not read here: the executor takes them from the admission;
- it validates the parameters (exit 2 on a bad one, as the worker), submits the job to the
  executor at ``PATH``, prints the worker's lines (the parameters, one per step, the result) and
  writes progress.json through the worker's :class:`~gpuos.kernels.worker.Progress`;
- SIGUSR1 pauses the job at its next atom boundary in the executor; once the executor says the
  job has left the GPU, the client stops itself (SIGSTOP), and the daemon's SIGCONT resumes the
  job; a SIGCONT that overtakes a pause not yet honoured cancels it, as in the worker;
  SIGUSR2 stops the job for good at its next step boundary (exit 0);
- SIGTERM or SIGKILL ends the client, which closes its connection: the executor cancels the job
  at its next atom boundary;
- exit status: 0 done or stopped as asked, 1 the kernel failed, was over its memory limit, was
  cancelled or refused, or the executor is unreachable (one line naming the socket), 2 bad
  parameters.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import selectors
import signal
import socket
import sys
import time

from gpuos.errors import GpuosError, InvalidArgument
from gpuos.kernels.executor_control import TOKEN_ENV
from gpuos.kernels.executor_wire import (
    JOB_REPLIES,
    Accepted,
    Done,
    Error,
    Failed,
    LineReader,
    Message,
    Pause,
    Paused,
    Progress,
    Resume,
    Stop,
    Stopped,
    Submit,
    WireError,
    decode,
    encode,
)
from gpuos.kernels.registry import get_kernel
from gpuos.kernels.worker import Progress as ProgressFile

PROG = "gpuos-executor-client"


class _Signals:
    """Signals as events, in arrival order, for the main loop (which alone writes the socket)."""

    def __init__(self) -> None:
        self.events: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT):
            signal.signal(signum, self._arrived)

    def _arrived(self, signum: int, frame: object) -> None:
        self.events.append(signum)

    @property
    def wakeup(self) -> socket.socket:
        return self._wake_r

    def take(self) -> list[int]:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        events = []
        while self.events:  # popleft, not a copy and a clear: a signal may land in between
            events.append(self.events.popleft())
        return events


class _Job:
    """The client's view of its job in the executor."""

    def __init__(self, sock: socket.socket, socket_path: str, progress: ProgressFile, header: str) -> None:
        self.sock = sock
        self.socket_path = socket_path
        self.progress = progress
        self.header = header
        self.pause_seq = 0
        self.pending_pause: int | None = None  # asked, not yet confirmed by the executor
        self.stopped_self = False

    def send(self, message: Message) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError:
            pass  # the executor is gone: the read side sees EOF and says so

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGUSR1:
            self.pause_seq += 1
            self.pending_pause = self.pause_seq
            self.send(Pause(seq=self.pause_seq))
        elif signum == signal.SIGUSR2:
            self.send(Stop())
        elif signum == signal.SIGCONT and (self.pending_pause is not None or self.stopped_self):
            self.pending_pause, self.stopped_self = None, False
            self.send(Resume())

    def on_message(self, message: Message) -> int | None:
        """Handle one reply; the exit status once the job has a result, else None."""
        if isinstance(message, Accepted):
            print(self.header, flush=True)
        elif isinstance(message, Progress):
            self.progress.record(message.step, message.latency_s)
        elif isinstance(message, Paused):
            if message.seq == self.pending_pause:
                self.pending_pause, self.stopped_self = None, True
                os.kill(os.getpid(), signal.SIGSTOP)  # returns once SIGCONT resumes us
        elif isinstance(message, Done):
            self.progress.summary = dict(message.summary)
            self.progress.write()
            print(f"{self.progress.kernel}: done, {json.dumps(self.progress.as_dict(), sort_keys=True)}", flush=True)
            return 0
        elif isinstance(message, Stopped):
            self.progress.write()
            print(f"{self.progress.kernel}: stopped at step {len(self.progress.latencies)} of "
                  f"{self.progress.steps_total} as asked, {json.dumps(self.progress.as_dict(), sort_keys=True)}",
                  flush=True)
            return 0
        elif isinstance(message, (Failed, Error)):
            self.progress.write()
            print(f"{PROG}: {message.message}", file=sys.stderr, flush=True)
            return message.code if message.code in (1, 2) else 1
        return None


def main(argv: list[str] | None = None) -> int:
    signals = _Signals()
    signals.install()  # first: SIGUSR1's default action would kill the job
    parser = argparse.ArgumentParser(prog=PROG, description="run one gpuos kernel job in the shared kernel executor")
    parser.add_argument("--socket", required=True, help="the kernel executor's job socket")
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        spec = get_kernel(args.kernel)
        raw = dict(p.split("=", 1) if "=" in p else (p, "") for p in args.param)
        params = spec.validate(raw)
        job_id, token = (_required_env(name) for name in ("GPUOS_JOB_ID", TOKEN_ENV))
    except GpuosError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time_ns() % (2**31))
    progress = ProgressFile.from_environment(spec.name, int(params.get("steps", 0)))
    progress.write()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(args.socket)
    except OSError as exc:
        print(f"{PROG}: cannot reach the kernel executor at {args.socket}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    job = _Job(sock, args.socket, progress, f"{spec.name}: {json.dumps(params, sort_keys=True)} seed={seed}")
    job.send(Submit(job_id=job_id, token=token, kernel=spec.name, params=raw, seed=seed))
    return _serve(job, signals)


def _serve(job: _Job, signals: _Signals) -> int:
    reader = LineReader(job.sock)
    selector = selectors.DefaultSelector()
    selector.register(job.sock, selectors.EVENT_READ)
    selector.register(signals.wakeup, selectors.EVENT_READ)
    while True:
        for signum in signals.take():
            job.on_signal(signum)
        ready = {key.fileobj for key, _ in selector.select()}
        if job.sock not in ready:
            continue
        while True:
            try:
                line = reader.read_line()
                message = decode(line, JOB_REPLIES) if line is not None else None
            except WireError as exc:
                print(f"{PROG}: the kernel executor at {job.socket_path} sent a malformed message: {exc}",
                      file=sys.stderr)
                return 1
            if message is None:
                job.progress.write()
                print(f"{PROG}: the kernel executor at {job.socket_path} closed the connection before the job "
                      "finished", file=sys.stderr)
                return 1
            status = job.on_message(message)
            if status is not None:
                return status
            for signum in signals.take():  # e.g. the SIGCONT that ended our own SIGSTOP
                job.on_signal(signum)
            if not reader.has_line():
                break


def _required_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise InvalidArgument(name, "not set: gpuosd sets it for a job that runs in the kernel executor")
    return value


if __name__ == "__main__":
    sys.exit(main())
