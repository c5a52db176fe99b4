"""The kernel executor's wire format, shared by the executor, its job-side client and gpuosd.

One JSON object per line (UTF-8, at most ``MAX_LINE`` bytes), each with the protocol version
``"v": 1`` and a ``"type"``; every other key is a field of that type's message. Decoding is strict:
an unknown version, type or field, a missing field or a value of the wrong type is a
:class:`WireError` whose message names the field, so a bad peer gets a reply it can act on and
the executor never has to guess. Messages are frozen dataclasses; the ``ACCEPTS`` sets say which
types each side takes.

Kept free of torch: the client and gpuosd import it.
"""

from __future__ import annotations

import json
import math
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

VERSION = 1
MAX_LINE = 64 * 1024
PRIORITIES = ("high", "normal", "low")


class WireError(Exception):
    """A line that is not a well-formed message of this protocol; the text names what is wrong."""


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""

    def check(self) -> None:
        """Value checks beyond the field types; raise WireError naming the field."""


# --- the job socket: client -> executor ---------------------------------------------------------

@dataclass(frozen=True)
class Submit(Message):
    """Run the admitted job ``job_id``; ``params`` are the raw ``--param`` strings."""

    TYPE: ClassVar[str] = "submit"
    job_id: str
    token: str
    kernel: str
    params: dict[str, str]
    seed: int


@dataclass(frozen=True)
class Pause(Message):
    """Stop taking atoms; ``seq`` is echoed by the :class:`Paused` that confirms it."""

    TYPE: ClassVar[str] = "pause"
    seq: int

    def check(self) -> None:
        _non_negative("seq", self.seq)


@dataclass(frozen=True)
class Resume(Message):
    TYPE: ClassVar[str] = "resume"


@dataclass(frozen=True)
class Stop(Message):
    """Finish at the next step boundary (steering), as the worker does on SIGUSR2."""

    TYPE: ClassVar[str] = "stop"


# --- the job socket: executor -> client ---------------------------------------------------------

@dataclass(frozen=True)
class Accepted(Message):
    TYPE: ClassVar[str] = "accepted"
    job_id: str
    priority: str
    memory_limit: int


@dataclass(frozen=True)
class Progress(Message):
    TYPE: ClassVar[str] = "progress"
    step: int
    latency_s: float


@dataclass(frozen=True)
class Paused(Message):
    """The job has left the GPU at an atom boundary and takes no atoms until resumed."""

    TYPE: ClassVar[str] = "paused"
    seq: int


@dataclass(frozen=True)
class Done(Message):
    TYPE: ClassVar[str] = "done"
    summary: dict[str, float]


@dataclass(frozen=True)
class Stopped(Message):
    TYPE: ClassVar[str] = "stopped"
    steps_done: int


@dataclass(frozen=True)
class Failed(Message):
    """The job ran and failed (kernel error, memory limit, cancelled); ``code`` is its exit code."""

    TYPE: ClassVar[str] = "failed"
    message: str
    code: int


@dataclass(frozen=True)
class Error(Message):
    """A refused or malformed request; ``code`` is the exit code a client should end with
    (2: bad parameters, 1: anything else)."""

    TYPE: ClassVar[str] = "error"
    message: str
    code: int = 1


# --- the control socket (gpuosd only) -----------------------------------------------------------

@dataclass(frozen=True)
class Admit(Message):
    """Allow one connection for ``job_id`` presenting ``token``, to run ``kernel`` at
    ``priority`` within ``memory_limit`` bytes (0: no limit)."""

    TYPE: ClassVar[str] = "admit"
    job_id: str
    token: str
    tenant: str
    priority: str
    memory_limit: int
    kernel: str

    def check(self) -> None:
        if not self.job_id:
            raise WireError("job_id: must not be empty")
        if len(self.token) < 16:
            raise WireError("token: must be at least 16 characters")
        if self.priority not in PRIORITIES:
            raise WireError(f"priority: {self.priority!r} is not one of {', '.join(PRIORITIES)}")
        _non_negative("memory_limit", self.memory_limit)


@dataclass(frozen=True)
class Revoke(Message):
    """Forget ``job_id``'s admission; a running job is cancelled at its next atom boundary."""

    TYPE: ClassVar[str] = "revoke"
    job_id: str


@dataclass(frozen=True)
class Ping(Message):
    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Ok(Message):
    TYPE: ClassVar[str] = "ok"


@dataclass(frozen=True)
class Pong(Message):
    """The executor is serving: its pid, its device, jobs admitted and jobs running."""

    TYPE: ClassVar[str] = "pong"
    pid: int
    device: str
    admitted: int
    running: int


JOB_REQUESTS: tuple[type[Message], ...] = (Submit, Pause, Resume, Stop)
JOB_REPLIES: tuple[type[Message], ...] = (Accepted, Progress, Paused, Done, Stopped, Failed, Error)
CONTROL_REQUESTS: tuple[type[Message], ...] = (Admit, Revoke, Ping)
CONTROL_REPLIES: tuple[type[Message], ...] = (Ok, Pong, Error)


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise WireError(f"{name}: must be >= 0, got {value}")


def encode(message: Message) -> bytes:
    """``message`` as one line, newline included."""
    body = {"v": VERSION, "type": message.TYPE, **asdict(message)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes, accepts: tuple[type[Message], ...]) -> Message:
    """Parse one line (without or with its newline) as one of the ``accepts`` types."""
    if len(line) > MAX_LINE:
        raise WireError(f"message longer than {MAX_LINE} bytes")
    try:
        body = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"not a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("not a JSON object")
    version = body.pop("v", None)
    if version != VERSION or isinstance(version, bool):
        raise WireError(f"v: protocol version {version!r} is not supported (want {VERSION})")
    kind = body.pop("type", None)
    by_type = {cls.TYPE: cls for cls in accepts}
    cls = by_type.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"type: {kind!r} is not one of {', '.join(sorted(by_type))}")
    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in fields(cls)}
    unknown = sorted(set(body) - set(declared))
    if unknown:
        raise WireError(f"{unknown[0]}: no such field in a {kind!r} message")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name not in body:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise WireError(f"{name}: missing from a {kind!r} message")
            continue
        values[name] = _checked(name, body[name], hints[name])
    message = cls(**values)
    message.check()
    return message


def _checked(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (hint,) = [option for option in options if option is not type(None)]
        return _checked(name, value, hint)
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise WireError(f"{name}: want an object, got {_kind(value)}")
        return {_checked(f"{name} key", k, key_hint): _checked(f"{name}.{k}", v, value_hint) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise WireError(f"{name}: want true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(f"{name}: want an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WireError(f"{name}: want a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise WireError(f"{name}: want a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise WireError(f"{name}: want a string, got {_kind(value)}")
        return value
    raise TypeError(f"no wire rule for {hint!r}")  # a message class declared a type this module lacks


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


class LineReader:
    """Splits what a stream socket receives into lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def read_line(self) -> bytes | None:
        """The next line (without its newline), None at EOF or a reset; TimeoutError when the
        socket's timeout passes first; WireError for a line over ``MAX_LINE``."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise WireError(f"message longer than {MAX_LINE} bytes")
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def has_line(self) -> bool:
        """A whole line is buffered already: read_line returns without receiving."""
        return b"\n" in self._buffer
