"""Run an untrusted candidate policy in its own process, cut off from the truth it must not see.

The parent (:func:`run_candidate`) loads the traces and sends them, pickled, on the child's
stdin with the candidate's source; the child (``python -I -m gpuos.agents.sandbox``) answers one
JSON object on stdout. What the child enforces, in order:

1. resource limits on itself: address space (``RLIMIT_AS``) and CPU time; the parent also kills
   the whole process group at a wall-clock timeout;
2. no trace files and no network: it runs in an empty temporary directory with ``GPUOS_TRACES``
   pointing at an empty one, and ``socket`` connections raise;
3. the candidate's source is checked before it runs (:func:`check_source`): imports only from
   an allow-list (math, collections, dataclasses, functools, itertools, heapq, statistics,
   random, zlib, bisect, operator, typing, the public ``gpuos.scheduler`` API and its policies,
   ``gpuos.jobs``); no dunder names or attributes, no ``_private`` attribute except on
   ``self``/``cls``, no frame or traceback attributes, no ``str.format``, no assignment to
   attributes of anything but ``self``/``cls`` (no monkeypatching), no ``getattr``/``eval``/
   ``open``-style builtins;
4. it runs with those builtins removed, and imports resolve to read-only namespaces of a
   module's public, non-module names (so ``gpuos.scheduler`` does not lead to ``.sim``);
5. the simulator checks every decision again and raises ``SimulationError`` on an over-commit.

This is a language-level sandbox in a separate process, not an OS one: there is no seccomp,
namespace or chroot, so a candidate that escaped the checks above could read files the user can.
The checks are what stands between a candidate and the simulator's private job durations.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import traceback
import types
from dataclasses import dataclass
from typing import Any

from gpuos.scheduler.policy import Policy

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


def _public(module: types.ModuleType) -> types.SimpleNamespace:
    names = {
        k: v for k, v in vars(module).items() if not k.startswith("_") and not isinstance(v, types.ModuleType)
    }
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


def load_policy_class(source: str, filename: str = "<candidate>") -> type[Policy]:
    """Check and execute a candidate's source with restricted builtins; return its policy class:
    the module's ``POLICY`` (a class or instance), else the one Policy subclass it defines."""
    tree = check_source(source, filename)
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


def _child_main() -> int:
    from gpuos.agents.objectives import simulate
    from gpuos.scheduler.sim import SimulationError

    out = sys.stdout
    sys.stdout = sys.stderr  # the candidate's prints must not corrupt the answer
    payload = pickle.loads(sys.stdin.buffer.read())
    memory = int(payload["memory"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(payload["timeout"]) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    empty = tempfile.mkdtemp(prefix="gpuos-candidate-")
    os.chdir(empty)
    os.environ["GPUOS_TRACES"] = empty
    _block_network()

    def answer(data: dict[str, Any]) -> int:
        out.write(json.dumps(data))
        out.flush()
        return 0

    try:
        cls = load_policy_class(payload["source"], payload["filename"])
    except CandidateRejected as exc:
        return answer({"ok": False, "kind": "forbidden", "error": str(exc)})
    except MemoryError:
        return answer({"ok": False, "kind": "memory", "error": "candidate exceeded its memory limit while loading"})
    except BaseException as exc:  # noqa: BLE001 - any failure of untrusted code is a crash
        return answer({"ok": False, "kind": "crash", "error": _short_traceback(exc)})
    runs: dict[str, Any] = {}
    for trace in payload["traces"]:
        try:
            runs[trace.name] = simulate(trace, cls()).to_json()
        except SimulationError as exc:
            return answer({"ok": False, "kind": "invalid", "trace": trace.name, "error": str(exc)})
        except MemoryError:
            return answer({"ok": False, "kind": "memory", "trace": trace.name,
                           "error": f"candidate exceeded its memory limit ({memory >> 20} MiB) on {trace.name}"})
        except BaseException as exc:  # noqa: BLE001
            return answer({"ok": False, "kind": "crash", "trace": trace.name, "error": _short_traceback(exc)})
    return answer({"ok": True, "runs": runs})


def _short_traceback(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines)
    return text if len(text) < 2000 else "...\n" + text[-2000:]


# -- the parent -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateOutcome:
    """The child's answer: per-trace runs when ``ok``, else a kind and a readable error."""

    ok: bool
    runs: dict[str, dict[str, Any]]
    kind: str = ""
    error: str = ""


def run_candidate(
    source: str, traces: list[Any], *, filename: str = "<candidate>", timeout: float = DEFAULT_TIMEOUT,
    memory: int = DEFAULT_MEMORY,
) -> CandidateOutcome:
    """Simulate the candidate in ``source`` on ``traces`` (Trace objects) in a fresh, limited child."""
    payload = pickle.dumps({"source": source, "filename": filename, "traces": traces,
                            "timeout": timeout, "memory": memory})
    with tempfile.TemporaryDirectory(prefix="gpuos-eval-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "GPUOS_TRACES": home,
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LC_ALL": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "gpuos.agents.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=home, env=env, start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(payload, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return CandidateOutcome(False, {}, "timeout", f"candidate timed out after {timeout:g} s (killed)")
    try:
        data = json.loads(stdout.decode() or "null")
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        tail = stderr.decode(errors="replace")[-1500:]
        if "MemoryError" in tail or proc.returncode in (-signal.SIGKILL, -signal.SIGSEGV):
            return CandidateOutcome(False, {}, "memory",
                                    f"candidate exceeded its memory limit ({memory >> 20} MiB): {tail.strip()[-300:]}")
        if proc.returncode == -signal.SIGXCPU:
            return CandidateOutcome(False, {}, "timeout", "candidate ran out of CPU time")
        return CandidateOutcome(False, {}, "crash", f"evaluation process died (exit {proc.returncode}): {tail}")
    if data.get("ok"):
        return CandidateOutcome(True, data["runs"])
    where = f" on {data['trace']}" if data.get("trace") else ""
    return CandidateOutcome(False, {}, str(data.get("kind", "crash")), f"{data.get('kind')}{where}: {data.get('error')}")


if __name__ == "__main__":
    sys.exit(_child_main())
