"""Text that came from someone else, made safe to quote in a message or show on a terminal.

Two rules, each with one home here: an error message quotes at most a couple of hundred
characters of what the caller sent (a 20 KB id must not come back as a 20 KB status), and a
character that is not printable (control characters such as ESC and newline, DEL, the C1
controls, bidi overrides, line separators) never reaches a terminal raw.
"""

from __future__ import annotations

from gpuos.errors import InvalidArgument

QUOTE_LIMIT = 200


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message: non-printables escaped, cut after ``limit`` characters.

    A cut value says how long it was, so the caller can tell it was shortened and why.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def is_printable(text: str) -> bool:
    """Whether ``text`` shows as itself on a terminal: no control or formatting characters."""
    # str.isprintable is False for categories Cc, Cf, Cs, Co, Cn, Zl, Zp and every space but " ".
    return text.isprintable()


def require_printable(text: str, field: str) -> str:
    """``text``, or InvalidArgument naming ``field`` and the first character that is not printable."""
    if not text.isprintable():
        bad = next(c for c in text if not c.isprintable())
        raise InvalidArgument(
            field, f"contains the non-printable character {bad!r} (U+{ord(bad):04X}); names and labels are shown "
                   "in tables, so control characters are refused"
        )
    return text


def escape(text: str) -> str:
    """``text`` with each non-printable character written as an escape (``\\x1b``, ``\\n``, ``\\u202e``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def clip_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (never inside a character), marked when cut."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    marker = f"... ({len(data)} bytes; cut)"
    return data[: max(0, limit - len(marker))].decode("utf-8", "ignore") + marker
