"""What a candidate policy is shown of a trace, salted so that it cannot look the truth up.

A trace's job ids are public (``openb-pod-0017``, ``bursty-000012``), and its estimate noise
would follow a public seed: a candidate that knows either can replay the trace and read a
job's true duration. An evaluation therefore holds a :class:`Secret`; :func:`mask` replaces
each job id by an HMAC of it, and :func:`gpuos.agents.workloads.load_workload` draws the
estimate noise from a seed derived from the secret. Everything the simulator uses to judge
(durations, requests, arrivals) stays as it was, so baselines run on the same masked trace
score exactly as they would on the plain one, up to tie-breaks on the id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from gpuos.scheduler.sim import Trace

SECRET_BYTES = 32
SECRET_FILE = "evaluation.secret"
# Hex digits of a masked id: 48 bits leave a 300-job window about one collision in 10^10;
# a collision is still checked for, and the id lengthened.
ID_DIGITS = 12


@dataclass(frozen=True)
class Secret:
    """Random bytes an evaluation keeps from the candidate. Its repr shows only :attr:`digest`."""

    key: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Secret(digest={self.digest})"

    __str__ = __repr__

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError(f"a secret needs at least 16 bytes, got {len(self.key)}")

    @classmethod
    def fresh(cls) -> Secret:
        return cls(secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def load_or_create(cls, directory: str | Path) -> Secret:
        """The secret stored in ``directory`` (readable by its owner only), made on first use,
        so that a resumed search keeps the masked ids and estimates its cache was built on."""
        path = Path(directory) / SECRET_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes())
        key = secrets.token_bytes(SECRET_BYTES)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return cls(key)

    @property
    def digest(self) -> str:
        """A short public name of the secret, for cache keys: it does not reveal the key."""
        return hashlib.sha256(b"gpuos-secret-digest\0" + self.key).hexdigest()[:12]

    def derive(self, purpose: str) -> bytes:
        """32 bytes for ``purpose``, unrelated to those of any other purpose."""
        return hmac.new(self.key, purpose.encode(), hashlib.sha256).digest()

    def seed(self, purpose: str) -> int:
        """A 64-bit RNG seed for ``purpose``."""
        return int.from_bytes(self.derive(purpose)[:8], "big")


def masked_id(secret: Secret, trace_name: str, job_id: str, digits: int = ID_DIGITS) -> str:
    """The id a candidate sees for ``job_id`` of ``trace_name``."""
    return secret.derive(f"job-id\0{trace_name}\0{job_id}").hex()[:digits]


def mask(trace: Trace, secret: Secret) -> Trace:
    """``trace`` with every job id replaced by :func:`masked_id`; nothing else changes.

    Raises ValueError if the trace's own ids are not unique (masking would merge jobs).
    """
    ids = [j.id for j in trace.jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"trace {trace.name!r} repeats job ids; they cannot be masked one to one")
    for digits in (ID_DIGITS, 16, 24, 64):
        masked = [masked_id(secret, trace.name, i, digits) for i in ids]
        if len(set(masked)) == len(masked):
            break
    jobs = tuple(dataclasses.replace(j, id=m) for j, m in zip(trace.jobs, masked, strict=True))
    return Trace(trace.name, trace.nodes, jobs, trace.source)
