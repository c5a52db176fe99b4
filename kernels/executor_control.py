"""gpuosd's side of a kernel executor: admit a job before its client starts, revoke it after.

The executor (:mod:`gpuos.kernels.executor`) serves jobs on a socket that job uids can reach, so
that socket alone must not be a way around gpuosd. It also listens on a control socket,
``<socket>.ctl`` (mode 0600; a peer whose uid is neither the executor's nor root is refused, by
SO_PEERCRED). Through it gpuosd

- ``admit``\\ s a job before starting its client: job id, a fresh secret token, tenant, priority
  and memory limit (the executor takes both from here, never from the client) and the one kernel
  the job may run; gpuosd passes the token to the client as ``GPUOS_EXECUTOR_TOKEN``;
- ``revoke``\\ s it when the job ends or is cancelled (a running job is cancelled at its next atom
  boundary; revoking an unknown job is not an error, so gpuosd may revoke on every ending);
- ``ping``\\ s it to see it serve.

One request per connection, one JSON line each way (:mod:`gpuos.kernels.executor_wire`). Every
failure raises :class:`ExecutorError` naming the control socket.
"""

from __future__ import annotations

import secrets
import socket
import sys
from collections.abc import Iterable

from gpuos.errors import BackendError
from gpuos.kernels.executor_wire import (
    CONTROL_REPLIES,
    Admit,
    Error,
    LineReader,
    Message,
    Ok,
    Ping,
    Pong,
    Revoke,
    WireError,
    decode,
    encode,
)

TOKEN_ENV = "GPUOS_EXECUTOR_TOKEN"
CONTROL_SUFFIX = ".ctl"
TIMEOUT = 5.0


class ExecutorError(BackendError):
    """The executor could not be reached, or refused the request; the text says which and why."""


def control_path(socket_path: str) -> str:
    """The control socket of the executor serving jobs at ``socket_path``."""
    return socket_path + CONTROL_SUFFIX


def new_token() -> str:
    """A fresh admission token (256 random bits)."""
    return secrets.token_urlsafe(32)


def executor_argv(socket_path: str) -> tuple[str, ...]:
    """The command line of the executor process for one GPU (CUDA_VISIBLE_DEVICES picks it)."""
    return (sys.executable, "-m", "gpuos.kernels.executor", "--socket", socket_path)


def client_argv(socket_path: str, kernel: str, params: Iterable[tuple[str, str]], seed: int | None = None) -> tuple[str, ...]:
    """The command line gpuosd starts as a kernel job that runs in the executor at ``socket_path``."""
    argv = [sys.executable, "-m", "gpuos.kernels.executor_client", "--socket", socket_path, "--kernel", kernel]
    for key, value in params:
        argv += ["--param", f"{key}={value}"]
    if seed is not None:
        argv += ["--seed", str(seed)]
    return tuple(argv)


def admit(ctl_path: str, *, job_id: str, token: str, tenant: str, priority: str, memory_limit: int,
          kernel: str, timeout: float = TIMEOUT) -> None:
    """Admit one job; raises ExecutorError if the executor refuses (the reply's reason) or is unreachable."""
    reply = _request(ctl_path, Admit(job_id=job_id, token=token, tenant=tenant, priority=priority,
                                     memory_limit=memory_limit, kernel=kernel), timeout)
    if not isinstance(reply, Ok):
        raise _unexpected(reply, Ok, ctl_path)


def revoke(ctl_path: str, job_id: str, timeout: float = TIMEOUT) -> None:
    reply = _request(ctl_path, Revoke(job_id=job_id), timeout)
    if not isinstance(reply, Ok):
        raise _unexpected(reply, Ok, ctl_path)


def ping(ctl_path: str, timeout: float = TIMEOUT) -> Pong:
    reply = _request(ctl_path, Ping(), timeout)
    if not isinstance(reply, Pong):
        raise _unexpected(reply, Pong, ctl_path)
    return reply


def _unexpected(reply: Message, kind: type[Message], ctl_path: str) -> ExecutorError:
    if isinstance(reply, Error):
        return ExecutorError(f"kernel executor {ctl_path}: {reply.message}")
    return ExecutorError(f"kernel executor {ctl_path}: replied {reply.TYPE!r}, expected {kind.TYPE!r}")


def _request(ctl_path: str, message: Message, timeout: float) -> Message:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(ctl_path)
            sock.sendall(encode(message))
            line = LineReader(sock).read_line()
    except OSError as exc:
        raise ExecutorError(f"kernel executor {ctl_path}: {exc.strerror or exc}") from None
    if not line:
        raise ExecutorError(f"kernel executor {ctl_path}: closed the connection without replying")
    try:
        return decode(line, CONTROL_REPLIES)
    except WireError as exc:
        raise ExecutorError(f"kernel executor {ctl_path}: malformed reply: {exc}") from None
