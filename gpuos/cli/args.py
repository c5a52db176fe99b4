"""Checked command-line values for gpuosctl: a bad one exits 2 with one line, never a traceback.

Each function here is an argparse ``type=``: it returns the parsed value or raises
``ArgumentTypeError`` with the problem, and :class:`Parser` prints that as
``gpuosctl: --flag: problem`` and exits 2. Upper bounds are those of the API's fields
(protobuf uint32/uint64), so nothing that passes here overflows a request; whether a value
makes sense for this machine (64 GPUs, 80 GiB) is the daemon's to say.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from gpuos.dedupe import check_key
from gpuos.errors import GpuosError, InvalidArgument
from gpuos.groups import GroupMode, check_budget, check_name, parse_mode
from gpuos.text import escape, quote

UINT32_MAX = 2**32 - 1
# Event sequence numbers are SQLite integers (signed 64-bit).
SEQ_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``gpuosctl: --flag: problem``, and exit 2."""

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --gpus: problem"; the flag is what the user typed, so lead with it.
        if message.startswith("argument "):
            message = message[len("argument "):]
        root = self.prog.split()[0]
        hint = f" (see {self.prog} --help)"
        self.exit(2, f"{root}: {message}{hint}\n")


def _integer(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} is not a whole number") from None


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A whole number in [low, high]."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}" if low else f"{value} is negative")
        if value > high:
            shown = str(value) if len(str(value)) <= 30 else f"a {len(str(value))}-digit number"
            raise argparse.ArgumentTypeError(f"{shown} is above the largest allowed, {high}")
        return value

    parse.__name__ = "whole number"
    return parse


non_negative_int = int_range(0, UINT32_MAX)
positive_int = int_range(1, UINT32_MAX)
sequence_number = int_range(0, SEQ_MAX)
seed = int_range(0, UINT32_MAX)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (seconds, a rate)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text.strip()} is negative")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (an interval between refreshes)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text.strip()} is not above 0")
    return value


def fraction(text: str) -> float:
    """A share of one GPU, in (0, 1]."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text.strip()} is outside (0, 1]; e.g. 0.5 for half a GPU")
    return value


def start_fraction(text: str) -> float:
    """Where in a trace to start, as a share of its jobs, in [0, 1)."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text.strip()} is outside [0, 1); e.g. 0.5 starts halfway through the jobs")
    return value


def byte_size(text: str) -> int:
    """A size such as 8GiB, 512MiB or a byte count, as bytes."""
    from gpuos.units import parse_bytes

    try:
        value = parse_bytes(text)
    except GpuosError as exc:
        raise argparse.ArgumentTypeError(str(getattr(exc, "problem", exc))) from None
    except (OverflowError, ValueError):
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} is too large to be a size") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} is not a positive size")
    if value > UINT64_MAX:
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} is more bytes than any GPU could have")
    return value


def slo_duration(text: str) -> float:
    """A p99 latency target such as 20ms, 1.5s or 250us, as seconds: above 0, at most a day."""
    from gpuos.units import parse_duration

    value = _checked(lambda: parse_duration(text))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} is not a positive duration")
    if value > 86400:
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} is absurd for a request's latency (at most a day)")
    return value


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a pair; KEY is not empty."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{quote(text, 60)} is not KEY=VALUE")
    return key, value


def fail(message: str, code: int = 2) -> int:
    """Print ``gpuosctl: message`` to stderr as one line; the exit code to return."""
    print(f"gpuosctl: {escape(message)}", file=sys.stderr)
    return code


T = TypeVar("T")


def _checked(check: Callable[[], T]) -> T:
    """``check()``'s value, with its InvalidArgument turned into argparse's one-line error."""
    try:
        return check()
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.problem) from None


def group_name(text: str) -> str:
    """A job group's name (gpuos.groups.check_name)."""
    return _checked(lambda: check_name(text))


def group_mode(text: str) -> str:
    """``first-success``, ``all`` or ``best-of:K``, spelled as the daemon expects."""
    mode, k = _checked(lambda: parse_mode(text))
    return f"{mode.value}:{k}" if mode is GroupMode.BEST_OF else mode.value


def group_budget(text: str) -> float:
    """A group's GPU-seconds budget: 0 (no bound) up to gpuos.groups.MAX_BUDGET."""
    value = _number(text)
    return _checked(lambda: check_budget(value))


def dedupe_key(text: str) -> str:
    """A deduplication key of the user's own (gpuos.dedupe.check_key)."""
    return _checked(lambda: check_key(text))
