"""``gpuosctl trace export``: gpuosd's own history as a trace file the simulator reads.

The daemon streams its finished jobs (HistoryService.ExportTrace, gpuos/api/history.py); this
writes them in the ``gpuos-history`` format (schema in scheduler/sim/traces.py, which reads it),
which ``gpuosctl sim --trace FILE``, ``gpuosctl replay --trace FILE`` and ``gpuosctl evolve
--trace FILE`` read. What is in it and what is not:

- jobs submitted in [--since, --until) that have ended (succeeded, failed or cancelled) after
  running: their request, arrival (the submit), run time (gpuos/history.py says how preempted,
  paused and shared runs count), QoS, priority, tenant, group, dedupe key, estimate, outcome;
- not the jobs still pending, running or paused (their run time is not known yet: export again
  later), nor finished jobs that never ran (counted in the header's ``never_ran``), nor
  submits a dedupe key answered with an earlier job (they never were jobs of their own);
- never a job's name, command, kernel parameters, environment or working directory;
- with --anonymize, tenants, group names, dedupe keys and job ids replaced by keyed hashes
  (gpuos/history.py: why keyed, and what it costs).

The file is written whole or not at all (a temporary file beside it, renamed into place).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuos.cli.args import fail
from gpuos.errors import InvalidArgument
from gpuos.files import write_atomic
from gpuos.history import HISTORY_FORMAT, HISTORY_VERSION
from gpuos.text import quote
from gpuos.units import parse_duration
from gpuos.v1 import jobs_pb2

if TYPE_CHECKING:
    from gpuos.client import Client
    from gpuos.v1 import history_pb2

# A duration ago is a number and its unit (gpuos.units, with days and weeks): a bare number is
# neither a time nor a duration here.
_AGO = re.compile(r"^\s*\d+(?:\.\d+)?\s*[a-zA-Zµ]+\s*$")


def point_in_time(text: str, now: float | None = None) -> float:
    """Unix seconds from an RFC 3339 time (``2025-06-01T12:00:00Z``) or a duration ago (``2h``,
    ``30m``, ``7d``, ``1w``, ``90s``)."""
    if _AGO.match(text):
        try:
            ago = parse_duration(text, days=True)
        except InvalidArgument as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None  # no RFC 3339 time ends in letters
        return (time.time() if now is None else now) - ago
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{quote(text, 40)} is neither an RFC 3339 time (2025-06-01T12:00:00Z) nor a duration ago (2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{quote(text, 40)} has no time zone; end it with Z or +HH:MM")
    return moment.timestamp()


def add_trace_parser(sub: Any) -> None:
    p = sub.add_parser("trace", help="gpuosd's own history as a trace (for sim, replay and evolve)")
    tsub = p.add_subparsers(dest="trace_cmd", required=True, metavar="ACTION")
    e = tsub.add_parser(
        "export", help="write finished jobs as a trace file the simulator reads",
        description="Write gpuosd's finished jobs (submitted in [--since, --until)) as a gpuos-history trace: "
                    "requests, arrivals, run times, QoS, priority, tenants, groups, dedupe keys, outcomes. "
                    "Names, commands, environments and paths are never written. Admins export every tenant "
                    "(or --tenant); others their own jobs.",
    )
    e.add_argument("--since", type=point_in_time, default=None, metavar="T",
                   help="jobs submitted at or after T: RFC 3339 (2025-06-01T12:00:00Z) or a duration ago (2h, 7d)")
    e.add_argument("--until", type=point_in_time, default=None, metavar="T", help="jobs submitted before T")
    e.add_argument("--tenant", default="", help="only this tenant's jobs (admins; others get their own)")
    e.add_argument("--anonymize", action="store_true",
                   help="replace tenants, group names, dedupe keys and job ids by keyed hashes")
    e.add_argument("-o", "--out", dest="file", required=True, metavar="FILE", help="the trace file ('-': stdout)")


def _writable(path: str) -> str:
    """Why the export cannot be written to ``path`` ("" when it can)."""
    if path == "-":
        return ""
    target = Path(path)
    try:
        if target.is_dir():
            return f"{path} is a directory; name a file"
        parent = target.parent
        if not parent.is_dir():
            return f"{parent} does not exist"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"{parent} is not writable"
        if target.exists() and not os.access(target, os.W_OK):
            return f"{path} is not writable"
    except OSError as exc:
        return f"cannot reach {path}: {exc.strerror or exc}"
    return ""


def job_line(job: history_pb2.HistoryJob) -> dict[str, Any]:
    """One exported job in the gpuos-history format (scheduler/sim/traces.py)."""
    r = job.request
    milli = round(r.gpu_fraction * 1000) if r.HasField("gpu_fraction") else 0
    return {
        "id": job.id,
        "arrival": round(job.submitted_at.ToNanoseconds() / 1e9, 3),
        "duration": round(job.run_seconds, 3),
        "wait": round(job.first_wait_seconds, 3),
        "gpus": r.gpus if r.HasField("gpus") else 1,
        "gpu_milli": 0 if milli >= 1000 else milli,
        "memory_bytes": r.memory_bytes,
        "mig_profile": r.mig_profile,
        "gpu_types": list(r.gpu_types),
        "sharing": r.sharing,
        "qos": job.qos,
        # The API's LOW/NORMAL/HIGH (1-3, unspecified as normal) as gpuos.jobs.Priority (0-2).
        "priority": max(job.priority, jobs_pb2.LOW) - jobs_pb2.LOW,
        "tenant": job.tenant,
        "group": job.group,
        "dedupe_key": job.dedupe_key,
        "estimate": job.estimated_seconds,
        "outcome": jobs_pb2.JobState.Name(job.state).lower(),
        "reason": job.reason,
        "preemptions": job.preemptions,
    }


def export(client: Client, since: float | None = None, until: float | None = None, tenant: str = "",
           anonymize: bool = False) -> list[str]:
    """The lines of an export (header first), from the daemon ``client`` talks to."""
    gpus: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    never_ran = 0
    anonymized = anonymize
    for chunk in client.export_trace(since=since, until=until, tenant=tenant, anonymize=anonymize):
        gpus += [{"model": g.model, "memory_bytes": g.memory_bytes} for g in chunk.gpus]
        groups += [{"tenant": g.tenant, "name": g.name, "mode": g.mode, "budget": g.budget_gpu_seconds}
                   for g in chunk.groups]
        jobs += [job_line(j) for j in chunk.jobs]
        never_ran += chunk.never_ran
        anonymized = anonymized and chunk.anonymized
    header = {
        "format": HISTORY_FORMAT, "version": HISTORY_VERSION,
        "source": f"gpuosd history at {client.target} (gpuosctl trace export)",
        "exported_at": round(time.time(), 3), "since": since, "until": until, "tenant": tenant,
        "anonymized": anonymized, "jobs": len(jobs), "never_ran": never_ran, "gpus": gpus, "groups": groups,
    }
    return [json.dumps(line, separators=(",", ":")) for line in (header, *jobs)]


def _write(path: str, lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)
    if path == "-":
        sys.stdout.write(text)
        return
    # Private, as a temporary file would be (the history names tenants); no fsync: a lost export
    # is run again.
    write_atomic(path, text, mode=0o600, durable=False)


def run_trace(args: argparse.Namespace, client: Client) -> int:
    if args.since is not None and args.until is not None and args.until <= args.since:
        return fail("--until: is not after --since; the window holds no time")
    for flag, value in (("--since", args.since), ("--until", args.until)):
        if value is not None and not math.isfinite(value):
            return fail(f"{flag}: is not a time")
    problem = _writable(args.file)
    if problem:
        return fail(f"-o: {problem}")
    lines = export(client, args.since, args.until, args.tenant.strip(), args.anonymize)
    try:
        _write(args.file, lines)
    except OSError as exc:
        return fail(f"-o: cannot write {args.file}: {exc.strerror or exc}")
    header = json.loads(lines[0])
    if args.file != "-":
        left = f"; {header['never_ran']} finished jobs that never ran left out" if header["never_ran"] else ""
        print(f"exported {header['jobs']} jobs to {args.file}{left}")
    return 0
