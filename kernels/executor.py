"""The per-GPU kernel executor: one process that runs the kernel jobs of several tenants.

``python -m gpuos.kernels.executor --socket PATH`` is what gpuosd starts once per GPU for jobs
submitted with ``--share executor`` (the GPU is the one ``CUDA_VISIBLE_DEVICES`` makes visible).
It serves until SIGTERM, which stops it accepting, cancels every job at its next atom boundary
and exits 0. It prints one line when it serves and one per job event to stderr.

Sockets (JSON lines, :mod:`gpuos.kernels.executor_wire`):

- ``PATH`` (mode 0666, in a directory gpuosd controls): the jobs' clients
  (:mod:`gpuos.kernels.executor_client`) connect here, one connection per job, and ``submit``
  ``{job_id, token, kernel, params, seed}``. A job runs only if gpuosd admitted it, with that
  token and that kernel, and only once: a second connection for the same job is refused. Then the
  client may send ``pause {seq}`` / ``resume`` / ``stop``; the executor sends ``accepted``, a
  ``progress {step, latency_s}`` per step, ``paused {seq}`` once the job has left the GPU, and
  one result: ``done {summary}``, ``stopped {steps_done}``, ``failed {message, code}`` or, for a
  refused or malformed request, ``error {message, code}``. A malformed line gets an ``error``
  and the connection stays usable; closing the connection cancels the job at its next atom.
- ``PATH.ctl`` (mode 0600, peers of the executor's uid or root only): gpuosd's ``admit``,
  ``revoke`` and ``ping`` (:mod:`gpuos.kernels.executor_control`).

Each job runs in its own thread. Its parameters are validated by the kernel's spec (an error is
``error`` with code 2, the worker's exit code for bad parameters). Every atom of every job passes
one :class:`~gpuos.kernels.gate.PriorityGate`: the kernels call ``ctx.between_atoms()`` after
each atom and the executor's ``ctx.report`` after each step, and both wait there while a job of
the same or a higher priority wants the GPU, or while the job is paused, and raise once it is
cancelled. Priority and memory limit come from the admission, never from the client.

On a GPU each job runs on a CUDA stream of its priority and allocates from its own
``torch.cuda.MemPool``; since one job holds the gate at a time, the allocator's counters between
a job's grant and its next boundary are that job's, and a job whose peak goes over its limit
fails at that boundary (exit 1, the message names the limit). Without a GPU the kernels run
under ``TRITON_INTERPRET=1`` and a job whose kernel declares (``KernelCost.memory_bytes``) more
than its limit is refused before it starts. What this does not isolate is in docs/partitions.md.
"""

from __future__ import annotations

import argparse
import hmac
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from gpuos.errors import InvalidArgument
from gpuos.kernels.context import KernelContext
from gpuos.kernels.executor_control import control_path
from gpuos.kernels.executor_wire import (
    CONTROL_REQUESTS,
    JOB_REQUESTS,
    Accepted,
    Admit,
    Done,
    Error,
    Failed,
    LineReader,
    Message,
    Ok,
    Pause,
    Paused,
    Ping,
    Pong,
    Progress,
    Resume,
    Revoke,
    Stop,
    Stopped,
    Submit,
    WireError,
    decode,
    encode,
)
from gpuos.kernels.gate import Cancelled, PriorityGate
from gpuos.kernels.registry import KernelSpec, available, get_kernel
from gpuos.kernels.worker import StopAtStep, priority_stream
from gpuos.text import quote
from gpuos.units import format_bytes

# Bounds on what one local user can make the executor hold.
MAX_ADMISSIONS = 256
MAX_CONNECTIONS = 256
MAX_OUTBOX = 10_000  # messages queued to one client that is not reading
HANDSHAKE_TIMEOUT = 30.0  # a connection must submit within this long
SEND_TIMEOUT = 60.0  # a client that takes no message for this long is gone
SHUTDOWN_GRACE = 10.0  # SIGTERM waits this long for jobs to reach an atom boundary

_PEERCRED = struct.Struct("3i")
# Added to a finished job's summary: milliseconds from its submit to its first atom (the wait
# for the atom in flight, or for higher-priority jobs), so `gpuosctl get` shows the hand-over.
WAIT_KEY = "executor_wait_ms"  # struct ucred: pid, uid, gid


class MemoryLimitExceeded(Exception):
    pass


@dataclass(frozen=True)
class Device:
    """Where this executor's jobs run: a ``torch.device`` and whether it is a GPU."""

    torch_device: Any
    on_gpu: bool

    @property
    def name(self) -> str:
        return str(self.torch_device) if self.on_gpu else "cpu (Triton interpreter)"


def open_device() -> Device:
    """The executor's GPU, or the CPU with the Triton interpreter (set before a kernel is imported)."""
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        return Device(torch.device("cpu"), False)
    return Device(torch.device("cuda", 0), True)


@dataclass
class _Admission:
    admit: Admit
    used: bool = False  # a client has connected for it: no second connection


class _Session:
    """One client connection: reads on its own thread, writes from an outbox on another, so a
    job never blocks at its boundary on a client that does not read."""

    def __init__(self, sock: socket.socket, on_dead: Callable[[str], None]) -> None:
        self.sock = sock
        self._outbox: queue.Queue[Message | None] = queue.Queue()
        self._on_dead = on_dead
        self._closed = False
        self._reader = LineReader(sock)
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._writer.start()

    def send(self, message: Message) -> None:
        if self._closed:
            return
        if self._outbox.qsize() >= MAX_OUTBOX:
            self._dead("the client is not reading its messages")
            return
        self._outbox.put(message)

    def finish(self) -> None:
        """Send what is queued, then half-close: the client reads its result and EOF."""
        self._outbox.put(None)

    def read_line(self) -> bytes | None:
        return self._reader.read_line()

    def join(self, timeout: float) -> None:
        self._writer.join(timeout)

    def _write(self) -> None:
        while True:
            message = self._outbox.get()
            if message is None:
                break
            try:
                self.sock.sendall(encode(message))
            except OSError as exc:
                self._dead(f"sending to the client failed: {exc.strerror or exc}")
                return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _dead(self, why: str) -> None:
        if not self._closed:
            self._closed = True
            self._on_dead(why)


@dataclass
class _Job:
    admit: Admit
    spec: KernelSpec
    params: dict[str, Any]
    seed: int
    session: _Session
    thread: threading.Thread | None = None
    stop: bool = False
    pause_seq: int = 0
    steps: int = 0
    used_bytes: int = 0  # on a GPU: allocated by this job, by the allocator's counters
    hold_base: int = 0
    submitted: float = 0.0  # time.monotonic() when the submit arrived
    waited_s: float = 0.0  # from the submit to the job's first atom: the hand-over it got

    @property
    def job_id(self) -> str:
        return self.admit.job_id


class Executor:
    """Serves kernel jobs on ``socket_path`` (and gpuosd on its ``.ctl``) until :meth:`shutdown`.

    ``lookup`` finds a kernel spec by name (the registry's, by default); ``device`` defaults to
    :func:`open_device`; ``on_grant`` is the gate's (tests count atoms with it).
    """

    def __init__(self, socket_path: str, *, lookup: Callable[[str], KernelSpec] = get_kernel,
                 device: Device | None = None, on_grant: Callable[[str], None] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.socket_path = socket_path
        self.control_path = control_path(socket_path)
        self.device = device or open_device()
        self.gate = PriorityGate(on_grant)
        self._lookup = lookup
        self._log = log or (lambda line: print(f"gpuos-executor: {line}", file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._admissions: dict[str, _Admission] = {}
        self._jobs: dict[str, _Job] = {}
        self._connections = 0
        self._stopping = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._runners: dict[str, Callable[..., Mapping[str, float]]] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on both sockets and serve them from background threads."""
        jobs = _listen(self.socket_path, 0o666)
        try:
            ctl = _listen(self.control_path, 0o600)
        except BaseException:
            jobs.close()
            os.unlink(self.socket_path)
            raise
        self._listeners = [jobs, ctl]
        for sock, handle in ((jobs, self._serve_client), (ctl, self._serve_control)):
            thread = threading.Thread(target=self._accept, args=(sock, handle), daemon=True)
            thread.start()
            self._threads.append(thread)

    def preload(self) -> None:
        """Import every built-in kernel's runner now, so a job's first atom does not wait on it."""
        for spec in available().values():
            try:
                self._runner(spec)
            except Exception as exc:  # that kernel's jobs fail with the same error; the others run
                self._log(f"cannot load kernel {spec.name}: {type(exc).__name__}: {exc}")

    def shutdown(self, reason: str = "the kernel executor is shutting down", grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, cancel every job at its next atom boundary, wait up to ``grace`` seconds."""
        self._stopping.set()
        for sock in self._listeners:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for path in (self.socket_path, self.control_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.gate.cancel(job.job_id, reason)
        deadline = time.monotonic() + grace
        for job in jobs:
            if job.thread is not None and job.thread.ident is not None:  # started
                job.thread.join(max(0.0, deadline - time.monotonic()))
            job.session.join(max(0.0, deadline - time.monotonic()))

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)

    # --- accepting ----------------------------------------------------------------------------

    def _accept(self, listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by shutdown
            threading.Thread(target=self._guarded, args=(conn, handle), daemon=True).start()

    def _guarded(self, conn: socket.socket, handle: Callable[[socket.socket], None]) -> None:
        # Whatever one connection sends, it costs only that connection.
        with self._lock:
            self._connections += 1
            crowded = self._connections > MAX_CONNECTIONS
        try:
            if crowded:
                with conn:
                    conn.sendall(encode(Error(f"the kernel executor has {MAX_CONNECTIONS} connections already")))
            else:
                handle(conn)
        except OSError:
            pass  # the peer went away mid-reply: nothing to tell it
        except Exception:
            self._log(f"connection handler failed:\n{traceback.format_exc().rstrip()}")
        finally:
            with self._lock:
                self._connections -= 1

    # --- the control socket -------------------------------------------------------------------

    def _serve_control(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            session = LineReader(conn)
            while True:
                try:
                    line = session.read_line()
                except (WireError, TimeoutError) as exc:
                    conn.sendall(encode(Error(str(exc) or "no request in time")))
                    return
                if line is None:
                    return
                if uid not in (0, os.getuid()):
                    # Refused after its request is read, so that the peer reads the refusal
                    # rather than a broken pipe.
                    conn.sendall(encode(Error(f"uid {uid} may not control this kernel executor")))
                    return
                try:
                    reply = self._control(decode(line, CONTROL_REQUESTS))
                except WireError as exc:
                    reply = Error(str(exc))
                conn.sendall(encode(reply))

    def _control(self, request: Message) -> Message:
        if isinstance(request, Ping):
            with self._lock:
                return Pong(pid=os.getpid(), device=self.device.name, admitted=len(self._admissions),
                            running=len(self._jobs))
        if isinstance(request, Revoke):
            with self._lock:
                self._admissions.pop(request.job_id, None)
                job = self._jobs.get(request.job_id)
            if job is not None:
                self.gate.cancel(job.job_id, "revoked by gpuosd")
            return Ok()
        assert isinstance(request, Admit)
        try:
            self._lookup(request.kernel)
        except InvalidArgument as exc:
            return Error(str(exc))
        with self._lock:
            known = self._admissions.get(request.job_id)
            if known is not None and known.used and known.admit != request:
                return Error(f"job {request.job_id} already runs in this executor under another admission")
            if known is None and len(self._admissions) >= MAX_ADMISSIONS:
                return Error(f"{MAX_ADMISSIONS} jobs are admitted already; revoke ended ones first")
            if known is None or not known.used:
                self._admissions[request.job_id] = _Admission(request)
        return Ok()

    # --- the job socket -----------------------------------------------------------------------

    def _serve_client(self, conn: socket.socket) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT)
        job: _Job | None = None
        session = _Session(conn, on_dead=lambda why: self._client_gone(job, why))
        try:
            job = self._handshake(session)
            if job is None:
                return
            conn.settimeout(SEND_TIMEOUT)
            while True:
                try:
                    line = session.read_line()
                except TimeoutError:
                    continue
                except WireError as exc:
                    session.send(Error(str(exc)))
                    break  # cannot find the next line's start
                if line is None:
                    break
                try:
                    self._steer(job, decode(line, JOB_REQUESTS))
                except WireError as exc:
                    session.send(Error(str(exc)))
        finally:
            if job is not None:
                self._client_gone(job, "the client closed its connection")
                if job.thread is not None:
                    job.thread.join()  # it sends the result and finishes the session
            else:
                session.finish()
            session.join(SEND_TIMEOUT)
            conn.close()

    def _handshake(self, session: _Session) -> _Job | None:
        """Read lines until a valid submit; start its job, or refuse (and return None)."""
        while True:
            try:
                line = session.read_line()
            except TimeoutError:
                session.send(Error(f"no submit within {HANDSHAKE_TIMEOUT:g} s"))
                return None
            except WireError as exc:
                session.send(Error(str(exc)))
                return None
            if line is None:
                return None
            try:
                request = decode(line, JOB_REQUESTS)
            except WireError as exc:
                session.send(Error(str(exc)))
                continue
            if not isinstance(request, Submit):
                session.send(Error(f"type: {request.TYPE!r} before a submit"))
                continue
            started = self._admit_submit(request, session)
            if isinstance(started, _Job):
                return started
            session.send(started)
            return None

    def _admit_submit(self, request: Submit, session: _Session) -> _Job | Message:
        """The job started for ``request``, or the refusal to send."""
        job_id = request.job_id
        received = time.monotonic()
        with self._lock:
            if self._stopping.is_set():
                return Error("the kernel executor is shutting down")
            admission = self._admissions.get(job_id)
            if admission is None:
                return Error(f"job {quote(job_id)} is not admitted to this kernel executor "
                             "(gpuosd admits a job before it starts it)")
            if not hmac.compare_digest(admission.admit.token.encode(), request.token.encode()):
                return Error(f"job {quote(job_id)}: wrong token")
            if admission.used:
                return Error(f"job {quote(job_id)} already has a connection to this kernel executor")
            if request.kernel != admission.admit.kernel:
                return Error(f"job {quote(job_id)} was admitted for kernel {quote(admission.admit.kernel)}, "
                             f"not {quote(request.kernel)}")
            # Consumed whatever follows: a refused job is not retried on another connection.
            admission.used = True
            admit = admission.admit
            try:
                spec = self._lookup(request.kernel)
                params = spec.validate(request.params)
                cost = spec.cost(params)
            except InvalidArgument as exc:
                return Error(str(exc), code=2)
            if not self.device.on_gpu and admit.memory_limit and cost.memory_bytes > admit.memory_limit:
                return Failed(f"job {job_id}: kernel {spec.name} needs {format_bytes(cost.memory_bytes)} "
                              f"({cost.memory_bytes} bytes, by its cost model), over the job's memory limit of "
                              f"{format_bytes(admit.memory_limit)} ({admit.memory_limit} bytes)", 1)
            # Registered under the lock that revoke and shutdown take, so neither can miss it.
            job = _Job(admit=admit, spec=spec, params=params, seed=request.seed, session=session, submitted=received)
            job.thread = threading.Thread(target=self._run, args=(job,), name=f"job-{job_id}", daemon=True)
            self._jobs[job_id] = job
            self.gate.add(job_id, admit.priority)
        session.send(Accepted(job_id=job_id, priority=admit.priority, memory_limit=admit.memory_limit))
        self._log(f"job {job_id} (tenant {admit.tenant or '-'}, {admit.priority}): runs {spec.name}")
        job.thread.start()
        return job

    def _steer(self, job: _Job, request: Message) -> None:
        if isinstance(request, Pause):
            job.pause_seq = request.seq
            if not self.gate.pause(job.job_id) and self.gate.parked(job.job_id):
                # A repeated pause of a job that has parked already: confirm this one too, or
                # its client, which waits for this seq, would never stop.
                job.session.send(Paused(seq=request.seq))
        elif isinstance(request, Resume):
            self.gate.resume(job.job_id)
        elif isinstance(request, Stop):
            job.stop = True
        else:
            job.session.send(Error(f"type: {request.TYPE!r} after the job was submitted"))

    def _client_gone(self, job: _Job | None, why: str) -> None:
        if job is not None:
            self.gate.cancel(job.job_id, why)

    # --- running a job ------------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        result = self._execute(job)
        with self._lock:
            self._jobs.pop(job.job_id, None)
        self.gate.remove(job.job_id)
        self._log(f"job {job.job_id}: {result.TYPE}" + (f": {result.message}" if isinstance(result, Failed) else ""))
        job.session.send(result)
        job.session.finish()

    def _execute(self, job: _Job) -> Message:
        try:
            runner = self._runner(job.spec)
            ctx = KernelContext(device=self.device.torch_device, on_gpu=self.device.on_gpu,
                                report=lambda step, latency: self._report(job, step, latency), seed=job.seed,
                                between_atoms=lambda: self._boundary(job))
            with self._placement(job), self.gate.holding(job.job_id, on_park=lambda: self._parked(job)):
                job.waited_s = time.monotonic() - job.submitted
                self._hold_began(job)
                summary = runner(job.params, ctx)
                self._hold_ends(job)
            return Done({**{str(k): float(v) for k, v in summary.items()}, WAIT_KEY: job.waited_s * 1e3})
        except StopAtStep:
            return Stopped(job.steps)
        except Cancelled as exc:
            return Failed(f"job {job.job_id} cancelled at an atom boundary: {exc.reason}", 1)
        except MemoryLimitExceeded as exc:
            return Failed(str(exc), 1)
        except Exception as exc:
            self._log(f"job {job.job_id}: kernel {job.spec.name} failed:\n{traceback.format_exc().rstrip()}")
            return Failed(f"kernel {job.spec.name} failed: {type(exc).__name__}: {exc}", 1)

    def _report(self, job: _Job, step: int, latency_s: float) -> None:
        job.steps += 1
        job.session.send(Progress(step=step, latency_s=latency_s))
        if job.stop:
            raise StopAtStep
        self._boundary(job)

    def _boundary(self, job: _Job) -> None:
        self._hold_ends(job)
        self.gate.boundary(job.job_id, on_park=lambda: self._parked(job))
        self._hold_began(job)

    def _parked(self, job: _Job) -> None:
        job.session.send(Paused(seq=job.pause_seq))

    def _runner(self, spec: KernelSpec) -> Callable[..., Mapping[str, float]]:
        runner = self._runners.get(spec.runner)
        if runner is None:
            module, _, function = spec.runner.partition(":")
            runner = self._runners[spec.runner] = getattr(import_module(module), function)
        return runner

    # --- a job's stream and memory on a GPU ---------------------------------------------------

    @contextmanager
    def _placement(self, job: _Job) -> Iterator[None]:
        if not self.device.on_gpu:
            yield
            return
        import torch

        stream = priority_stream(self.device.torch_device, job.admit.priority)
        pool = torch.cuda.MemPool() if hasattr(torch.cuda, "MemPool") else None
        uses_pool = torch.cuda.use_mem_pool(pool, self.device.torch_device) if pool is not None else nullcontext()
        try:
            with torch.cuda.stream(stream), uses_pool:
                yield
        finally:
            stream.synchronize()
            del pool
            torch.cuda.empty_cache()

    def _hold_began(self, job: _Job) -> None:
        if self.device.on_gpu:
            import torch

            job.hold_base = torch.cuda.memory_allocated(self.device.torch_device)
            torch.cuda.reset_peak_memory_stats(self.device.torch_device)

    def _hold_ends(self, job: _Job) -> None:
        """Charge the job what the allocator gained while it held the gate; fail it over its limit."""
        if not self.device.on_gpu:
            return
        import torch

        now = torch.cuda.memory_allocated(self.device.torch_device)
        peak = job.used_bytes + torch.cuda.max_memory_allocated(self.device.torch_device) - job.hold_base
        job.used_bytes += now - job.hold_base
        job.hold_base = now
        limit = job.admit.memory_limit
        if limit and peak > limit:
            raise MemoryLimitExceeded(
                f"job {job.job_id} used {format_bytes(peak)} ({peak} bytes) of GPU memory, over its memory "
                f"limit of {format_bytes(limit)} ({limit} bytes)")


def _listen(path: str, mode: int) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode``; a stale socket there is replaced."""
    if os.path.lexists(path):
        import stat

        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ExecutorStartError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left by an executor that died
        else:
            raise ExecutorStartError(f"another kernel executor serves {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The mode is right from the moment the socket exists, not after a chmod.
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ExecutorStartError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(64)
    return sock


class ExecutorStartError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuos-executor", description="serve gpuos kernel jobs of several tenants on one GPU")
    parser.add_argument("--socket", required=True, help="the jobs' socket; gpuosd's control socket is SOCKET.ctl")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    executor = Executor(args.socket)
    try:
        executor.start()
    except ExecutorStartError as exc:
        print(f"gpuos-executor: {exc}", file=sys.stderr)
        return 1
    executor.preload()
    print(f"gpuos-executor: serving kernel jobs on {executor.socket_path} (control {executor.control_path}), "
          f"device {executor.device.name}", flush=True)
    while not stop.wait(1.0):
        pass
    executor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
