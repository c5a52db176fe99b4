"""``gpuosctl submit --from-file``: a JSON Lines file of jobs, every line checked before any is sent.

Each non-blank line is one JSON object whose keys are the keyword arguments of
:meth:`gpuos.Client.submit` (``command`` or ``kernel`` and ``params``, ``name``, ``gpus``,
``gpu_fraction``, ``memory``, ``mig_profile``, ``gpu_types``, ``sharing``, ``priority``, ``qos``,
``tenant``, ``env``, ``cwd``, ``estimated_seconds``, ``idempotency_key``, ``group``,
``group_mode``, ``group_budget``, ``dedupe_key``, ``slo_p99``: "20ms" or seconds). Unlike a single ``submit``, a line's job gets
only the environment its ``env`` names (the caller's environment copied into 10,000 jobs would
outgrow a request); a command job's ``cwd`` defaults to the caller's directory, as for ``submit``.
``--tenant``, ``--group``, ``--group-mode`` and ``--group-budget`` on the command line fill in
the lines that do not set them; the other job flags are refused there (set them per line).

The first malformed line stops the whole file before anything is sent, naming the line and the
key. What the daemon refuses is refused per :func:`chunks` (one ``SubmitBatch`` each, all or
none): a file longer than one chunk is committed chunk by chunk, not all or nothing.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from gpuos.cli import args as checked
from gpuos.errors import InvalidArgument
from gpuos.text import quote
from gpuos.v1 import jobs_pb2

# SubmitBatch takes at most this many jobs (gpuos.store.MAX_BATCH_JOBS) ...
CHUNK_JOBS = 10_000
# ... in a message below gpuosd's 8 MiB receive limit, with room for the framing.
CHUNK_BYTES = 6 << 20


class JobFileError(InvalidArgument):
    """A line of a job file that is not a job: ``field`` reads ``line N: key``."""

    def __init__(self, line: int, key: str, problem: str) -> None:
        self.line = line
        self.key = key
        super().__init__(f"line {line}: {key}" if key else f"line {line}", problem)


@dataclass(frozen=True)
class FileJob:
    """One line's job: its line number and the keyword arguments of ``Client.submit_request``."""

    line: int
    kwargs: Mapping[str, Any]


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"is {_kind(value)}, not a string")
    return value


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("is not a list of strings")
    return value


def _command(value: object) -> list[str]:
    command = _strings(value)
    if not command or not command[0]:
        raise ValueError("is empty; give the program and its arguments, e.g. [\"python\", \"train.py\"]")
    return command


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("is not an object of strings")
    return value


def _params(value: object) -> dict[str, object]:
    scalar = (str, int, float)
    if not isinstance(value, dict) or not all(isinstance(v, scalar) and not isinstance(v, bool)
                                              for v in value.values()):
        raise ValueError("is not an object of strings and numbers")
    return value


def _number(value: object) -> str:
    # Checked with the command line's own types, so a file and a flag refuse the same values.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"is {_kind(value)}, not a number")
    return repr(value)


def _whole(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"is {_kind(value)}, not a whole number")
    return str(value)


def _memory(value: object) -> int:
    if isinstance(value, str):
        return checked.byte_size(value)
    return checked.byte_size(_whole(value))


def _choice(*allowed: str) -> Callable[[object], str]:
    """One of ``allowed``, in any case, spelled as ``allowed`` spells it."""
    spelled = {a.lower(): a for a in allowed}
    shown = ", ".join(a or '""' for a in allowed)

    def parse(value: object) -> str:
        text = _text(value)
        if text.lower() not in spelled:
            raise ValueError(f"{quote(text, 40)} is not one of {shown}")
        return spelled[text.lower()]

    return parse


def _kind(value: object) -> str:
    return {type(None): "null", bool: "true/false", dict: "an object", list: "a list", str: "a string"}.get(
        type(value), "a number")


# Each key a line may have, and how its value is checked and converted.
FIELDS: dict[str, Callable[[object], object]] = {
    "command": _command,
    "kernel": _text,
    "params": _params,
    "name": _text,
    "gpus": lambda v: checked.positive_int(_whole(v)),
    "gpu_fraction": lambda v: checked.fraction(_number(v)),
    "memory": _memory,
    "mig_profile": _text,
    "gpu_types": _strings,
    "sharing": _choice("", "mps", "timeslice", "executor"),
    "priority": _choice("high", "normal", "low"),
    "qos": _choice("", "LS", "BE"),
    "tenant": _text,
    "env": _string_map,
    "cwd": _text,
    "estimated_seconds": lambda v: checked.non_negative_float(_number(v)),
    "idempotency_key": _text,
    "group": lambda v: checked.group_name(_text(v)),
    "group_mode": lambda v: checked.group_mode(_text(v)),
    "group_budget": lambda v: checked.group_budget(_number(v)),
    "dedupe_key": lambda v: checked.dedupe_key(_text(v)),
    "slo_p99": lambda v: checked.slo_duration(v if isinstance(v, str) else _number(v)),
}


def parse_line(number: int, text: str, defaults: Mapping[str, Any], cwd: str) -> FileJob:
    """Line ``number`` of a job file as a job; JobFileError naming the line and the key otherwise.

    ``defaults`` (keys of FIELDS) fill in what the line does not say.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobFileError(number, "", f"is not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise JobFileError(number, "", f"is {_kind(data)}, not a JSON object of job fields")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        parse = FIELDS.get(key)
        if parse is None:
            raise JobFileError(number, quote(key, 40), "is not a job field (see gpuosctl submit --help)")
        try:
            kwargs[key] = parse(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise JobFileError(number, key, str(exc)) from None
    if ("command" in kwargs) == bool(kwargs.get("kernel")):
        raise JobFileError(number, "command", "give either command (a list) or kernel, not both or neither")
    if "gpus" in kwargs and "gpu_fraction" in kwargs:
        raise JobFileError(number, "gpu_fraction", "give gpus or gpu_fraction, not both")
    for key, value in defaults.items():
        kwargs.setdefault(key, value)
    for key in ("group_mode", "group_budget"):
        if key in kwargs and not kwargs.get("group"):
            raise JobFileError(number, key, "needs a group")
    if "command" in kwargs:
        kwargs.setdefault("cwd", cwd)
    return FileJob(number, kwargs)


def read(source: IO[str], defaults: Mapping[str, Any], cwd: str) -> list[FileJob]:
    """Every job of a job file, in order; JobFileError at the first malformed line."""
    return [parse_line(number, text, defaults, cwd) for number, text in enumerate(source, start=1) if text.strip()]


def chunks(requests: Sequence[jobs_pb2.SubmitRequest]) -> Iterator[tuple[int, int]]:
    """[start, end) ranges of ``requests``, each one SubmitBatch: at most CHUNK_JOBS jobs and
    CHUNK_BYTES of request."""
    start = size = 0
    for i, request in enumerate(requests):
        # A repeated field costs its message's size plus a tag and a length of a few bytes.
        cost = request.ByteSize() + 8
        if i > start and (i - start >= CHUNK_JOBS or size + cost > CHUNK_BYTES):
            yield start, i
            start, size = i, 0
        size += cost
    if start < len(requests):
        yield start, len(requests)


def locate(details: str, batch: Sequence[FileJob], name: str) -> str:
    """The daemon's refusal of ``batch``, naming the refused job by its line, not its index."""
    def line(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return f"{name} line {batch[index].line}: " if index < len(batch) else match.group(0)

    return re.sub(r"^jobs\[(\d+)\](?:\.|: )", line, details)
