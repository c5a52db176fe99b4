"""Run an untrusted candidate policy in its own process, cut off from the truth it must not see.

The simulator, the metrics and the scoring run in the parent (:func:`run_candidate`); the
candidate runs in a child (``python -I -m gpuos.agents.sandbox``) that shares no object with
them. The child receives serialized snapshots and returns decisions (:mod:`gpuos.agents.wire`:
plain, versioned JSON, decoded strictly in the parent; nothing from the child is unpickled).
The parent drives the simulator with a :class:`RemotePolicy`, whose ``decide`` asks the child
for a round's decisions; every one of them is then checked by the parent's own cluster model
(scheduler/state.py), so a candidate that patches its own copy of the framework, of ``GpuView``
or of the fragmentation measure only fools itself, and its metrics are computed where it cannot
reach. The child never holds a trace job: it sees what a policy sees (requests, estimates,
attained service), never a duration.

What the child enforces on itself, in order, before the candidate's code runs:

1. resource limits: address space (``RLIMIT_AS``) and CPU time; the parent also kills its whole
   process group at a wall-clock deadline over the whole evaluation;
2. an empty working directory and ``GPUOS_TRACES``, and ``socket`` connections that raise;
3. everything a candidate may import is imported, then a seccomp filter (``pyseccomp``, when
   installed; the child says in its hello whether it has one) makes opening files, running
   programs, creating processes or sockets, and signalling or reading other processes fail with
   EPERM, so even a candidate that escapes the checks below reads no trace and touches no parent;
4. the source checks (:func:`check_source`), the fast first filter: imports only from an
   allow-list, no dunder names or attributes, no ``_private`` attribute except on
   ``self``/``cls``, no frame or traceback attributes, no ``str.format``, no assignment to
   attributes of anything but ``self``/``cls``, no ``getattr``/``eval``/``open``-style builtins;
5. it runs with those builtins removed, and imports resolve to read-only namespaces of a
   module's public, non-module names (so ``gpuos.scheduler`` does not lead to ``.sim``).
"""

from __future__ import annotations

import ast
import builtins
import errno
import logging
import math
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpuos.agents import wire
from gpuos.scheduler.fragmentation import workload
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import register
from gpuos.scheduler.snapshot import Decision, JobView, Snapshot

if TYPE_CHECKING:
    from gpuos.scheduler.sim import SimConfig, Trace

log = logging.getLogger(__name__)

ALLOWED_MODULES = frozenset({
    "__future__", "math", "collections", "collections.abc", "dataclasses", "functools", "itertools",
    "heapq", "statistics", "random", "zlib", "bisect", "operator", "typing",
    "gpuos.scheduler", "gpuos.scheduler.policy", "gpuos.scheduler.snapshot", "gpuos.scheduler.preemption",
    "gpuos.scheduler.fragmentation", "gpuos.jobs",
})
ALLOWED_PREFIXES = ("gpuos.scheduler.policies.",)
FORBIDDEN_BUILTINS = frozenset({
    "getattr", "setattr", "delattr", "vars", "globals", "locals", "dir", "eval", "exec", "compile",
    "open", "input", "breakpoint", "help", "memoryview", "__import__", "exit", "quit", "format",
})
FORBIDDEN_ATTRIBUTES = frozenset({
    "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next", "gi_frame", "gi_code",
    "cr_frame", "cr_code", "ag_frame", "ag_code", "format", "format_map", "mro", "func_globals",
})
OWNERS = frozenset({"self", "cls"})
DEFAULT_MEMORY = 1 << 30
DEFAULT_TIMEOUT = 60.0


class CandidateRejected(ValueError):
    """The candidate's source breaks a sandbox rule; the message names the rule and the line."""


def _module_allowed(name: str) -> bool:
    return name in ALLOWED_MODULES or name.startswith(ALLOWED_PREFIXES)


def check_source(source: str, filename: str = "<candidate>") -> ast.Module:
    """Parse ``source`` and reject what the sandbox forbids (see the module docstring)."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        raise CandidateRejected(f"syntax error: {exc}") from None

    def reject(node: ast.AST, why: str) -> None:
        raise CandidateRejected(f"{filename}:{getattr(node, 'lineno', '?')}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _module_allowed(alias.name):
                    reject(node, f"import of {alias.name!r} is not allowed")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                reject(node, "relative imports are not allowed")
            if not _module_allowed(node.module or ""):
                reject(node, f"import from {node.module!r} is not allowed")
            for alias in node.names:
                if alias.name == "*" or alias.name.startswith("_"):
                    reject(node, f"import of {alias.name!r} from {node.module} is not allowed")
        elif isinstance(node, ast.Name):
            if node.id.startswith("__"):
                reject(node, f"dunder name {node.id!r} is not allowed")
            if node.id in FORBIDDEN_BUILTINS:
                reject(node, f"builtin {node.id!r} is not allowed")
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else ""
            if node.attr.startswith("__"):
                reject(node, f"dunder attribute {node.attr!r} is not allowed")
            if node.attr.startswith("_") and owner not in OWNERS:
                reject(node, f"private attribute {node.attr!r} is allowed only on self/cls")
            if node.attr in FORBIDDEN_ATTRIBUTES:
                reject(node, f"attribute {node.attr!r} is not allowed")
            if isinstance(node.ctx, (ast.Store, ast.Del)) and owner not in OWNERS:
                reject(node, "assigning attributes of anything but self/cls is not allowed (no monkeypatching)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "__" in node.value:
            reject(node, "string constants with '__' are not allowed")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            reject(node, "global/nonlocal are not allowed")
    return tree


def _leave_registry(cls: type[Policy]) -> type[Policy]:
    return cls


def _public(module: types.ModuleType) -> types.SimpleNamespace:
    names = {
        k: v for k, v in vars(module).items() if not k.startswith("_") and not isinstance(v, types.ModuleType)
    }
    if names.get("register") is register:
        # A candidate's ``@register`` names nothing anyone looks up, and a shipped policy's file
        # evaluated as a candidate would clash with its own module, which the child imports first.
        names["register"] = _leave_registry
    return types.SimpleNamespace(**names)


def _restricted_import(
    name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
) -> Any:
    if level or not _module_allowed(name):
        raise ImportError(f"import of {name!r} is not allowed in a candidate policy")
    import importlib

    module = importlib.import_module(name)
    if fromlist:
        return _public(module)
    # ``import a.b`` binds ``a`` and reaches ``b`` as its attribute.
    parts = name.split(".")
    root = _public(importlib.import_module(parts[0]))
    node = root
    for i in range(1, len(parts)):
        child = _public(importlib.import_module(".".join(parts[: i + 1])))
        setattr(node, parts[i], child)
        node = child
    return root


def load_policy_class(source: str, filename: str = "<candidate>", screen: bool = True) -> type[Policy]:
    """Check and execute a candidate's source with restricted builtins; return its policy class:
    the module's ``POLICY`` (a class or instance), else the one Policy subclass it defines.
    ``screen=False`` skips the source checks (for tests that prove the process boundary holds)."""
    if screen:
        tree = check_source(source, filename)
    else:
        try:
            tree = ast.parse(source, filename)
        except SyntaxError as exc:
            raise CandidateRejected(f"syntax error: {exc}") from None
    safe = {k: v for k, v in vars(builtins).items() if k not in FORBIDDEN_BUILTINS}
    safe["__import__"] = _restricted_import
    namespace: dict[str, Any] = {"__builtins__": safe, "__name__": "candidate"}
    exec(compile(tree, filename, "exec"), namespace)  # noqa: S102 - checked source, restricted builtins
    chosen = namespace.get("POLICY")
    if isinstance(chosen, Policy):
        chosen = type(chosen)
    if chosen is None:
        defined = [
            v for v in namespace.values()
            if isinstance(v, type) and issubclass(v, Policy) and v.__module__ == "candidate"
        ]
        if len(defined) != 1:
            raise CandidateRejected(f"{filename}: define exactly one Policy subclass or POLICY (found {len(defined)})")
        chosen = defined[0]
    if not (isinstance(chosen, type) and issubclass(chosen, Policy)):
        raise CandidateRejected(f"{filename}: POLICY is not a Policy subclass")
    return chosen


# -- the child --------------------------------------------------------------------------------

# What the seccomp filter refuses with EPERM once the child is hardened: opening files, running
# programs, new processes (clone too: the child needs no threads), the network, signalling or
# reading other processes, and the kernel interfaces that would get around those (io_uring,
# bpf, file handles, namespaces). Everything else stays allowed: the filter is a deny-list, so
# memory, pipes to the parent and the clock keep working.
DENIED_SYSCALLS = (
    "open", "openat", "openat2", "creat", "open_by_handle_at", "name_to_handle_at",
    "execve", "execveat", "fork", "vfork", "clone", "clone3",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "ptrace", "process_vm_readv", "process_vm_writev", "kill", "tkill", "tgkill",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd",
    "unshare", "setns", "mount", "chroot", "keyctl", "add_key", "request_key",
    "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir",
    "link", "linkat", "symlink", "symlinkat", "truncate", "chmod", "fchmodat", "chown", "fchownat",
)
REQUESTS = ("reset", "decide", "quantum", "suspend", "requeue", "order")


def _block_network() -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("network access is not allowed in a candidate evaluation")

    class NoSocket(socket.socket):
        def connect(self, *args: object, **kwargs: object) -> None:
            refuse()

        def bind(self, *args: object, **kwargs: object) -> None:
            refuse()

    socket.socket = NoSocket  # type: ignore[misc]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]


def _preimport() -> None:
    """Import every module a candidate may import (and what reporting a failure needs): once the
    seccomp filter is on, importing anything new would need to open a file."""
    import importlib
    import linecache  # noqa: F401 - traceback formatting reads source lines through it
    import pkgutil
    import tokenize  # noqa: F401

    import gpuos.scheduler.policies as policies

    for name in sorted(ALLOWED_MODULES):
        importlib.import_module(name)
    for info in pkgutil.iter_modules(policies.__path__, policies.__name__ + "."):
        importlib.import_module(info.name)


def _install_seccomp() -> bool:
    """Install the filter (:data:`DENIED_SYSCALLS`); False, with a note on stderr, without pyseccomp."""
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:
        print(f"gpuos sandbox: no seccomp filter ({exc}); install pyseccomp (the sim extra) to have one",
              file=sys.stderr)
        return False
    refuse = pyseccomp.ERRNO(errno.EPERM)
    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            rules.add_rule(refuse, name)
        except OSError:
            pass  # no such system call on this architecture (open, fork on arm64)
    rules.load()
    return True


def _hello(policy: Policy, seccomp: bool) -> bytes:
    return wire.dumps("hello", name=str(policy.name), period=float(policy.period), seccomp=seccomp)


def _failure(exc: BaseException) -> bytes:
    if isinstance(exc, CandidateRejected):
        return wire.dumps("error", kind="forbidden", error=str(exc))
    if isinstance(exc, MemoryError):
        return wire.dumps("error", kind="memory", error="candidate exceeded its memory limit")
    return wire.dumps("error", kind="crash", error=_short_traceback(exc))


def _child_main() -> int:
    from gpuos.scheduler.framework import schedule
    from gpuos.scheduler.policies.fgd import given_workload

    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # the candidate's prints must not corrupt the protocol
    stdin = sys.stdin.buffer

    def send(line: bytes) -> None:
        out.write(line)
        out.flush()

    load = wire.loads(stdin.readline(), ("load",))
    empty = tempfile.mkdtemp(prefix="gpuos-candidate-")
    os.chdir(empty)
    os.environ["GPUOS_TRACES"] = empty
    _block_network()
    _preimport()
    memory, cpu = int(load["memory"]), int(load["cpu"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    seccomp = _install_seccomp()
    try:
        cls = load_policy_class(str(load["source"]), str(load["filename"]), screen=bool(load["screen"]))
        policy = cls()
        send(_hello(policy, seccomp))
    except BaseException as exc:  # noqa: BLE001 - any failure of untrusted code is the candidate's
        send(_failure(exc))
        return 0
    decoder = wire.SnapshotDecoder()
    for line in stdin:
        msg = wire.loads(line, REQUESTS)
        kind = msg["type"]
        try:
            if kind == "reset":
                classes = [wire.decode_task_class(c, "workload") for c in msg["workload"]]
                policy = given_workload(cls(), classes)
                decoder = wire.SnapshotDecoder()
                reply = _hello(policy, seccomp)
            elif kind == "decide":
                decisions = schedule(decoder.decode(msg["snapshot"]), policy)
                reply = wire.dumps("decisions", decisions=[wire.encode_decision(d) for d in decisions])
            elif kind == "quantum":
                job, snap = wire.decode_job(msg["job"]), decoder.decode(msg["snapshot"])
                reply = wire.dumps("quantum", value=float(policy.quantum(job, snap)))
            elif kind == "suspend":
                job, snap = wire.decode_job(msg["job"]), decoder.decode(msg["snapshot"])
                reply = wire.dumps("suspend", value=bool(policy.suspend(job, snap)))
            elif kind == "requeue":
                reply = wire.dumps("requeue", value=bool(policy.requeue_after_fault(wire.decode_job(msg["job"]))))
            else:
                jobs = [wire.decode_job(j) for j in msg["jobs"]]
                ordered = policy.order(jobs, decoder.decode(msg["snapshot"]))
                reply = wire.dumps("order", ids=[str(j.id) for j in ordered])
        except BaseException as exc:  # noqa: BLE001
            reply = _failure(exc)
        send(reply)
    return 0


def _short_traceback(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines)
    return text if len(text) < 2000 else "...\n" + text[-2000:]


# -- the parent -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateOutcome:
    """The evaluation's result: per-trace runs (TraceRun JSON) when ``ok``, else a kind
    (forbidden, crash, memory, timeout, invalid) and a readable error."""

    ok: bool
    runs: dict[str, dict[str, Any]]
    kind: str = ""
    error: str = ""
    # The same traces under other simulator costs: label -> trace -> TraceRun JSON.
    variants: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # What the priority probes found (agents/validity.py), when asked for.
    inversions: tuple[str, ...] = ()


class _Timeout(Exception):
    """The evaluation's wall-clock deadline passed."""


class _Gone(Exception):
    """The child exited or closed its end of the protocol."""


class _Child:
    """The candidate's process and the line protocol to it, all under one wall-clock deadline.
    Its stderr goes to a file: a pipe nobody reads would block a chatty candidate."""

    def __init__(self, home: str, deadline: float) -> None:
        self.deadline = deadline
        self.stderr = tempfile.TemporaryFile()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "GPUOS_TRACES": home,
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LC_ALL": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "gpuos.agents.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, cwd=home, env=env, start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        self._buffer = bytearray()

    def _wait(self, fd: int, write: bool) -> None:
        left = self.deadline - time.monotonic()
        ready = select.select([], [fd], [], max(0.0, left)) if write else select.select([fd], [], [], max(0.0, left))
        if not any(ready):
            raise _Timeout

    def send(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            self._wait(self._in, write=True)
            try:
                written = os.write(self._in, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise _Gone from None
            view = view[written:]

    def receive(self) -> bytes:
        scanned = 0
        while (end := self._buffer.find(b"\n", scanned)) < 0:
            scanned = len(self._buffer)
            if scanned > wire.MAX_MESSAGE:
                raise wire.WireError(f"message longer than {wire.MAX_MESSAGE} bytes")
            self._wait(self._out, write=False)
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                raise _Gone
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def ask(self, line: bytes) -> bytes:
        self.send(line)
        return self.receive()

    def died(self, memory: int) -> CandidateOutcome:
        """Why the child went away, read from its exit status and the tail of its stderr."""
        try:
            self.proc.wait(timeout=max(0.1, min(2.0, self.deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            return CandidateOutcome(False, {}, "crash", "evaluation process closed its output but did not exit")
        self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, self.stderr.tell() - 1500))
        tail = self.stderr.read().decode(errors="replace")
        code = self.proc.returncode
        if "MemoryError" in tail or code in (-signal.SIGKILL, -signal.SIGSEGV):
            return CandidateOutcome(False, {}, "memory",
                                    f"candidate exceeded its memory limit ({memory >> 20} MiB): {tail.strip()[-300:]}")
        if code == -signal.SIGXCPU:
            return CandidateOutcome(False, {}, "timeout", "candidate ran out of CPU time")
        return CandidateOutcome(False, {}, "crash", f"evaluation process died (exit {code}): {tail}")

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.close()  # end of requests: a well-behaved child exits
        except OSError:
            pass
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of its group
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


class RemotePolicy(Policy):
    """The candidate as the parent's simulator sees it: each question a simulator asks of a
    policy (a round's decisions, a quantum, whether a victim is suspended, requeue after a fault,
    and the queue order the validity probes ask for) goes to the candidate's process as serialized
    views, and each answer
    comes back strictly decoded. Pass :meth:`decide` to the simulator as its ``decide``: the
    framework's per-job extension points live in the child, so they refuse to run here."""

    def __init__(self, child: _Child, hello: wire.Hello) -> None:
        self._child = child
        self._encoder = wire.SnapshotEncoder()
        self.name = hello.name
        self.period = hello.period

    @classmethod
    def reset(cls, child: _Child, trace: Trace) -> RemotePolicy:
        """A fresh candidate policy in the child for ``trace``, told the trace's request mix (what
        FGD targets; the jobs' requests, never their durations)."""
        classes = workload((j.request, j.cpu_milli) for j in trace.jobs)
        line = wire.dumps("reset", workload=[wire.encode_task_class(c) for c in classes])
        return cls(child, wire.decode_hello(child.ask(line)))

    def decide(self, snap: Snapshot) -> list[Decision]:
        line = wire.dumps("decide", snapshot=self._encoder.encode(snap))
        return wire.decode_decisions(self._child.ask(line))

    def quantum(self, job: JobView, snap: Snapshot) -> float:
        line = wire.dumps("quantum", job=wire.encode_job(job), snapshot=self._encoder.encode(snap))
        return wire.decode_quantum(self._child.ask(line))

    def suspend(self, job: JobView, snap: Snapshot) -> bool:
        line = wire.dumps("suspend", job=wire.encode_job(job), snapshot=self._encoder.encode(snap))
        return wire.decode_suspend(self._child.ask(line))

    def requeue_after_fault(self, job: JobView) -> bool:
        return wire.decode_requeue(self._child.ask(wire.dumps("requeue", job=wire.encode_job(job))))

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> list[JobView]:
        line = wire.dumps("order", jobs=[wire.encode_job(j) for j in pending], snapshot=self._encoder.encode(snap))
        by_id = {j.id: j for j in pending}
        ordered = []
        for i, job_id in enumerate(wire.decode_order(self._child.ask(line))):
            if job_id not in by_id:
                raise wire.WireError(f"order.ids[{i}]: {job_id!r:.60} is not one of the jobs to order")
            ordered.append(by_id[job_id])
        return ordered

    def _local(self, *args: object) -> Any:
        raise TypeError("a RemotePolicy decides whole rounds in the candidate's process: call decide()")

    fits = score = pick = victims = share = _local  # type: ignore[assignment]


def run_candidate(
    source: str, traces: list[Any], *, filename: str = "<candidate>", timeout: float = DEFAULT_TIMEOUT,
    memory: int = DEFAULT_MEMORY, screen: bool = True, variants: Mapping[str, SimConfig] | None = None,
    probe: bool = False,
) -> CandidateOutcome:
    """Simulate the candidate in ``source`` on ``traces`` (Trace objects): the simulation and the
    metrics here, the candidate in a fresh, limited child, all within ``timeout`` wall seconds.
    ``variants`` (label -> simulator config) runs every trace again under other costs; ``probe``
    asks the candidate's queue order on the priority probes (agents/validity.py).
    ``screen=False`` skips the source checks (tests use it to show the boundary holds alone)."""
    from gpuos.agents.objectives import simulate
    from gpuos.agents.validity import priority_inversions
    from gpuos.scheduler.sim import SimulationError

    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="gpuos-eval-") as home:
        child = _Child(home, deadline)
        where = ""
        try:
            load = wire.dumps("load", source=source, filename=filename, memory=memory,
                              cpu=math.ceil(timeout) + 5, screen=screen)
            hello = wire.decode_hello(child.ask(load))
            if not hello.seccomp:
                log.warning("candidate %s runs without a seccomp filter (pyseccomp is not installed)", filename)
            # The plain runs (label "") and each variant's: one loop, one fresh policy per run.
            measured: dict[str, dict[str, dict[str, Any]]] = {}
            for label, config in [("", None), *(variants or {}).items()]:
                for trace in traces:
                    where = f" on {trace.name}" + (f" ({label})" if label else "")
                    remote = RemotePolicy.reset(child, trace)
                    measured.setdefault(label, {})[trace.name] = simulate(
                        trace, remote, config=config, decide=remote.decide).to_json()
            runs = measured.pop("", {})
            others = measured
            inversions: list[str] = []
            if probe and traces:
                where = " on the priority probes"
                remote = RemotePolicy.reset(child, traces[0])
                inversions = priority_inversions(lambda pending, snap: [j.id for j in remote.order(pending, snap)])
            return CandidateOutcome(True, runs, variants=others, inversions=tuple(inversions))
        except SimulationError as exc:
            return CandidateOutcome(False, {}, "invalid", f"invalid{where}: {exc}")
        except wire.ChildError as exc:
            return CandidateOutcome(False, {}, exc.kind, f"{exc.kind}{where}: {exc.error}")
        except wire.WireError as exc:
            return CandidateOutcome(False, {}, "invalid", f"invalid{where}: the candidate's process answered "
                                                          f"outside the protocol: {exc}")
        except _Timeout:
            return CandidateOutcome(False, {}, "timeout", f"candidate timed out after {timeout:g} s (killed)")
        except _Gone:
            return child.died(memory)
        finally:
            child.close()


if __name__ == "__main__":
    sys.exit(_child_main())
