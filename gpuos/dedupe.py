"""Deduplication keys: what makes two submits the same work.

An agent resubmits what it (or another branch) already ran. A key is a hash of what decides a
job's result: its command and arguments (or kernel and parameters), the values of the environment
variables the user names, its working directory, and the contents of the input files the user
names. The daemon compares keys within a tenant only; it never sees the files, so the key is
made where the files are: on the client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from gpuos.errors import InvalidArgument

# Keys are sent as text and compared exactly; a user's own key may be this long.
MAX_KEY = 128
_CHUNK = 1 << 20


def key_for(
    command: Sequence[str] = (),
    *,
    kernel: str = "",
    params: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    env_names: Sequence[str] = (),
    cwd: str = "",
    inputs: Sequence[str | Path] = (),
) -> str:
    """``sha256:`` and the hex digest of what decides the job's result (see the module docstring).

    A variable named in ``env_names`` but not set counts as unset (distinct from empty). An input
    file that cannot be read raises InvalidArgument("dedupe_input") naming it.
    """
    digest = hashlib.sha256()
    environment = env or {}
    described = {
        "command": list(command),
        "kernel": kernel,
        "params": sorted((str(k), str(v)) for k, v in (params or {}).items()),
        "env": sorted((name, environment.get(name)) for name in set(env_names)),
        "cwd": cwd,
        "inputs": [str(p) for p in inputs],
    }
    digest.update(json.dumps(described, sort_keys=True).encode())
    for path in inputs:
        digest.update(b"\0file\0")
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise InvalidArgument("dedupe_input", f"cannot read {str(path)[:200]!r}: {exc.strerror or exc}") from None
    return "sha256:" + digest.hexdigest()


def check_key(key: str) -> str:
    """``key`` if it may be a dedupe key: printable, no longer than MAX_KEY."""
    if len(key) > MAX_KEY or not key.isprintable() or key != key.strip():
        raise InvalidArgument("dedupe_key", f"is not a key: at most {MAX_KEY} printable characters, no surrounding "
                                            "spaces")
    return key
