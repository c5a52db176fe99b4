"""How gpuosctl shows things: compact tables for people, JSON for scripts.

Text in a table or a line may come from any user (job names, commands, messages, tenants), so
every cell is passed through :func:`gpuos.text.escape`: a terminal never receives a raw escape
sequence or newline. JSON escapes such characters itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from gpuos.text import escape
from gpuos.units import format_bytes
from gpuos.v1 import common_pb2, devices_pb2, jobs_pb2


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[escape(str(c)) for c in headers]] + [[escape(str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _time(ts: Timestamp, present: bool) -> str | None:
    if not present:
        return None
    return ts.ToJsonString()


def ago(ts: Timestamp, present: bool) -> str:
    if not present:
        return "-"
    seconds = max(0.0, time.time() - ts.ToNanoseconds() / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def resources_dict(r: common_pb2.Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.HasField("gpus"):
        out["gpus"] = r.gpus
    if r.HasField("gpu_fraction"):
        out["gpu_fraction"] = r.gpu_fraction
    if r.HasField("memory_bytes"):
        out["memory_bytes"] = r.memory_bytes
    if r.mig_profile:
        out["mig_profile"] = r.mig_profile
    if r.gpu_types:
        out["gpu_types"] = list(r.gpu_types)
    return out


def resources_text(r: common_pb2.Resources) -> str:
    if r.mig_profile:
        text = f"mig {r.mig_profile}"
    elif r.HasField("gpu_fraction"):
        text = f"{r.gpu_fraction:g} gpu"
    else:
        text = f"{r.gpus if r.HasField('gpus') else 1} gpu"
    if r.HasField("memory_bytes"):
        text += f", {format_bytes(r.memory_bytes)}"
    return text


def job_dict(job: jobs_pb2.Job) -> dict[str, Any]:
    spec = job.spec
    return {
        "id": job.id,
        "name": job.name,
        "state": jobs_pb2.JobState.Name(job.state),
        "reason": job.reason,
        "message": job.message,
        "exit_code": job.exit_code if job.HasField("exit_code") else None,
        "tenant": job.tenant,
        "owner_uid": job.owner_uid,
        "kind": jobs_pb2.JobKind.Name(spec.kind).lower(),
        "command": list(spec.command),
        "kernel": spec.kernel,
        "params": dict(spec.params),
        "priority": jobs_pb2.Priority.Name(spec.priority).lower(),
        "qos": spec.qos,
        "group": spec.group,
        "dedupe_key": spec.dedupe_key,
        "device": list(job.placement.devices),
        "device_uuids": list(job.placement.device_uuids),
        "partition": job.placement.partition,
        "requested": resources_dict(spec.resources),
        "granted": resources_dict(job.placement.granted) if job.HasField("placement") else {},
        "attained_service_gpu_s": round(job.attained_service, 3),
        "created_at": _time(job.created_at, job.HasField("created_at")),
        "started_at": _time(job.started_at, job.HasField("started_at")),
        "finished_at": _time(job.finished_at, job.HasField("finished_at")),
        "progress": progress_dict(job.progress) if job.HasField("progress") else None,
        "waiting": {"kind": job.waiting.kind, "message": job.waiting.message} if job.HasField("waiting") else None,
        "slo_p99_seconds": spec.slo_p99_seconds or None,
        "colocation": colocation_dict(job.colocation) if job.HasField("colocation") else None,
    }


def colocation_dict(c: jobs_pb2.Colocation) -> dict[str, Any]:
    """SLO-driven colocation's figures: for a job with an SLO, or for a throttled neighbour."""
    if c.slo_p99_seconds:
        return {
            "slo_p99_seconds": c.slo_p99_seconds,
            "p99_seconds": round(c.p99_seconds, 6),
            "attainment": round(c.attainment, 4),
            "samples": c.samples,
            "neighbour_share": round(c.neighbour_share, 3),
            "right_share": round(c.right_share, 3) if c.HasField("right_share") else None,
            "reason": c.reason,
        }
    return {"share": round(c.share, 3), "suspended": c.suspended, "reason": c.reason}


def colocation_lines(c: jobs_pb2.Colocation) -> list[str]:
    """``gpuosctl get``'s lines for :func:`colocation_dict`'s figures."""
    if c.slo_p99_seconds:
        right = (f"the SLO held with them at {c.right_share:.0%} of the time" if c.HasField("right_share")
                 else "not yet known")
        neighbours = "suspended" if c.suspended else f"{c.neighbour_share:.0%} of the time"
        return [f"slo: p99 {_duration(c.p99_seconds)} over {c.samples} requests, target {_duration(c.slo_p99_seconds)}, "
                f"{c.attainment:.1%} within it",
                f"best-effort neighbours: {neighbours}; right-sized: {right}" + (f" ({c.reason})" if c.reason else "")]
    state = "suspended" if c.suspended else f"share {c.share:.0%} of the time"
    return [f"throttled: {state}, for {c.reason}" if c.reason else f"throttled: {state}"]


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def progress_dict(p: jobs_pb2.KernelProgress) -> dict[str, Any]:
    return {
        "steps_done": p.steps_done,
        "steps_total": p.steps_total,
        "last_latency_ms": round(p.last_latency_ms, 4),
        "mean_latency_ms": round(p.mean_latency_ms, 4),
        "p50_latency_ms": round(p.p50_latency_ms, 4),
        "p99_latency_ms": round(p.p99_latency_ms, 4),
        "summary": dict(p.summary),
    }


def jobs_table(jobs: Sequence[jobs_pb2.Job]) -> str:
    rows = []
    for j in jobs:
        state = jobs_pb2.JobState.Name(j.state)
        if j.reason:
            state += f" ({j.reason})"
        devices = ",".join(str(d) for d in j.placement.devices) or "-"
        if j.placement.partition and j.placement.partition != "exclusive":
            devices += f" {j.placement.partition}"
        exit_code = str(j.exit_code) if j.HasField("exit_code") else "-"
        rows.append([j.id, j.name[:24], state, j.tenant, resources_text(j.spec.resources), devices, exit_code,
                     ago(j.created_at, j.HasField("created_at"))])
    return table(["ID", "NAME", "STATE", "TENANT", "ASKED", "GPU", "EXIT", "AGE"], rows)


def submitted_line(job_id: str, duplicate: bool) -> str:
    """What ``submit`` prints: the id first, so ``$(gpuosctl submit ...)`` scripts keep working."""
    return f"{job_id} (duplicate of an existing job)" if duplicate else job_id


def group_dict(g: jobs_pb2.Group) -> dict[str, Any]:
    return {
        "name": g.name,
        "tenant": g.tenant,
        "mode": g.mode,
        "budget_gpu_s": g.budget_gpu_seconds,
        "spent_gpu_s": round(g.spent_gpu_seconds, 3),
        "state": g.state,
        "reason": g.reason,
        "succeeded": g.succeeded,
        "created_at": _time(g.created_at, g.HasField("created_at")),
        "ended_at": _time(g.ended_at, g.HasField("ended_at")),
        "members": [job_dict(m) for m in g.members],
    }


def _budget(g: jobs_pb2.Group) -> str:
    return f"{g.budget_gpu_seconds:g} GPU-s" if g.budget_gpu_seconds else "none"


def _group_state(g: jobs_pb2.Group) -> str:
    return f"{g.state} ({g.reason})" if g.reason else g.state


def group_text(g: jobs_pb2.Group) -> str:
    """One group for people: its settings and progress, then a table of its members."""
    header = [
        f"group:     {g.name}  (tenant {g.tenant})",
        f"mode:      {g.mode}",
        f"budget:    {_budget(g)}, {g.spent_gpu_seconds:.1f} GPU-s spent",
        f"state:     {_group_state(g)}, {g.succeeded} succeeded",
    ]
    rows = []
    for m in g.members:
        state = jobs_pb2.JobState.Name(m.state)
        rows.append([m.id, m.name[:24], state, m.reason or "-", str(m.exit_code) if m.HasField("exit_code") else "-",
                     f"{m.attained_service:.1f}", ago(m.created_at, m.HasField("created_at"))])
    members = table(["ID", "NAME", "STATE", "REASON", "EXIT", "GPU-S", "AGE"], rows)
    return "\n".join(escape(line) for line in header) + "\n\n" + members


def groups_table(groups: Sequence[jobs_pb2.Group]) -> str:
    rows = [[g.name, g.tenant, g.mode, _budget(g), f"{g.spent_gpu_seconds:.1f}", g.succeeded, _group_state(g),
             ago(g.created_at, g.HasField("created_at"))] for g in groups]
    return table(["GROUP", "TENANT", "MODE", "BUDGET", "SPENT GPU-S", "SUCCEEDED", "STATE", "AGE"], rows)


def event_dict(e: jobs_pb2.Event) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "time": e.time.ToJsonString(),
        "job_id": e.job_id,
        "kind": e.kind,
        "state": jobs_pb2.JobState.Name(e.state),
        "reason": e.reason,
        "message": e.message,
        "tenant": e.tenant,
        "group": e.group,
    }


def event_line(e: jobs_pb2.Event) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(e.time.seconds))
    extra = " ".join(x for x in (e.reason and f"reason={e.reason}", e.message) if x)
    # A daemon-wide event (a policy switch) has no job and no state.
    state = jobs_pb2.JobState.Name(e.state) if e.state else ""
    return escape(f"{stamp}  {e.job_id}  {e.kind:<16} {state:<9} {extra}".rstrip())


def device_dict(d: devices_pb2.Device) -> dict[str, Any]:
    return {
        "index": d.index,
        "uuid": d.uuid,
        "model": d.model,
        "healthy": d.healthy,
        "memory_total": d.memory_total,
        "memory_used": d.memory_used,
        "sm_count": d.sm_count,
        "utilization_pct": d.utilization_pct,
        "partitioning": d.partitioning,
        "mig_profiles": [p.name for p in d.mig_profiles],
        "mig_instances": [{"profile": m.profile, "start": m.start, "uuid": m.uuid} for m in d.mig_instances],
        "mps_daemon_running": d.mps_daemon_running,
        "draining": d.draining,
        "suspend": {"supported": d.suspend_supported, "cross_gpu": d.suspend_cross_gpu, "detail": d.suspend_detail},
        "allocations": [
            {
                "job_id": a.job_id,
                "tenant": a.tenant,
                "partition": a.partition,
                "compute_milli": a.compute_milli,
                "memory_limit": a.memory_limit,
                "memory_used": a.memory_used,
                "paused": a.paused,
            }
            for a in d.allocations
        ],
    }


def devices_table(devices: Sequence[devices_pb2.Device]) -> str:
    rows = []
    for d in devices:
        holders = ", ".join(
            f"{a.job_id or a.tenant}:{a.partition}"
            + (f" {a.compute_milli / 10:g}%" if a.compute_milli < 1000 else "")
            + f" {format_bytes(a.memory_used)}/{format_bytes(a.memory_limit)}"
            + (" paused" if a.paused else "")
            for a in d.allocations
        ) or "-"
        sharing = d.partitioning
        if d.mig_instances:
            sharing += " [" + " ".join(f"{m.profile}@{m.start}" for m in d.mig_instances) + "]"
        if d.mps_daemon_running:
            sharing += " (mps daemon up)"
        rows.append([
            d.index, d.model, ("ok" if d.healthy else "FAILED") + (" draining" if d.draining else ""),
            f"{d.utilization_pct:.0f}%",
            f"{format_bytes(d.memory_used)} / {format_bytes(d.memory_total)}", sharing,
            ("any GPU of model" if d.suspend_cross_gpu else "same GPU") if d.suspend_supported else "no",
            holders,
        ])
    out = table(["GPU", "MODEL", "HEALTH", "UTIL", "MEMORY", "SHARING", "SUSPEND",
                 "JOBS (id:partition share used/limit)"], rows)
    # Detected once per machine, so said once: how jobs are suspended to host, or why they cannot be.
    details = dict.fromkeys(d.suspend_detail for d in devices if d.suspend_detail)
    return "\n".join([out, *(f"suspend-to-host: {text}" for text in details)])


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def dumps_line(data: Any) -> str:
    """``data`` as one line of JSON Lines (for output that streams, one record a line)."""
    return json.dumps(data, separators=(",", ":"))
