"""The messages between the evaluator and a candidate's process: a small, versioned JSON schema.

The parent (the evaluator, :mod:`gpuos.agents.sandbox`) sends requests: ``load`` (the source),
``reset`` (a fresh policy for the next trace, with the trace's request mix for FGD-like
policies), ``decide`` (a snapshot), ``quantum`` (a job and a snapshot), ``suspend`` (a job and a
snapshot: Policy.suspend), ``requeue`` (a job) and ``order`` (jobs and a snapshot). The child
answers ``hello`` (the policy's name and period), ``decisions``, ``quantum``, ``suspend``,
``requeue``, ``order`` or ``error``. One JSON object per line; each
carries ``"v": SCHEMA_VERSION`` and its ``"type"``.

Why JSON and not pickle: the child runs untrusted code, and unpickling its bytes would run code
of its choosing in the parent. Every message is decoded strictly, into the scheduler's own frozen
types (:mod:`gpuos.scheduler.snapshot`): a missing or unknown field, a wrong type (a bool is not
an integer), a non-finite float or another version raises :class:`WireError` naming the field.
What a decision *means* (does it fit, is the job waiting) is checked afterwards by the cluster
model the simulator drives, never by the child.

Snapshots repeat themselves from round to round: :class:`SnapshotEncoder` sends a node only
when its view changed since the last snapshot (``null`` stands for "as before"), and both ends
reuse a job's encoding or view while it is unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from gpuos.jobs import Resources
from gpuos.mig import Instance, MigProfile
from gpuos.scheduler.fragmentation import TaskClass
from gpuos.scheduler.snapshot import Decision, GpuView, JobView, NodeView, Place, Preempt, Snapshot, Stint

# 2: GPUs, nodes and jobs carry suspension (GpuView.suspend, oversubscription, memory_suspended;
# NodeView.cross_gpu_restore; JobView.suspended and where it may resume), and ``suspend`` asks.
SCHEMA_VERSION = 2
# A line longer than this is refused unread: no answer of a policy needs it, and the parent must
# not buffer without bound what an untrusted process writes.
MAX_MESSAGE = 64 << 20
ERROR_KINDS = frozenset({"crash", "memory", "forbidden"})


class WireError(ValueError):
    """A message that breaks the schema; the text names the field (``decisions[3].gpus[0]``)."""


class ChildError(RuntimeError):
    """The child reported a failure of the candidate (``kind``: crash, memory or forbidden)."""

    def __init__(self, kind: str, error: str) -> None:
        super().__init__(f"{kind}: {error}")
        self.kind = kind
        self.error = error


def _names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


_RESOURCES = _names(Resources)
_PROFILE = _names(MigProfile)
_INSTANCE = _names(Instance)
_GPU = _names(GpuView)
_NODE = _names(NodeView)
_JOB = _names(JobView)
_TASK = _names(TaskClass)
_STINT = _names(Stint)
_SNAPSHOT = frozenset({"now", "profiles", "nodes", "pending", "running"})
_PLACE = _names(Place) | {"kind"}
_PREEMPT = _names(Preempt) | {"kind"}


# -- strict readers ---------------------------------------------------------------------------


def _obj(data: Any, where: str, names: frozenset[str]) -> dict[str, Any]:
    if type(data) is not dict:
        raise WireError(f"{where}: expected an object, got {type(data).__name__}")
    if data.keys() != names:
        unknown = sorted(set(data) - names)
        if unknown:
            raise WireError(f"{where}.{unknown[0]}: unknown field")
        raise WireError(f"{where}.{sorted(names - set(data))[0]}: missing")
    return data


def _int(value: Any, where: str) -> int:
    if type(value) is not int:
        raise WireError(f"{where}: expected an integer, got {type(value).__name__}")
    return value


def _float(value: Any, where: str) -> float:
    if type(value) is int:
        return float(value)
    if type(value) is not float or not math.isfinite(value):
        raise WireError(f"{where}: expected a finite number, got {value!r:.40}")
    return value


def _str(value: Any, where: str) -> str:
    if type(value) is not str:
        raise WireError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise WireError(f"{where}: expected true or false, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if type(value) is not list:
        raise WireError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _ints(value: Any, where: str) -> tuple[int, ...]:
    return tuple(_int(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _strs(value: Any, where: str) -> tuple[str, ...]:
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


# -- the scheduler's types ----------------------------------------------------------------------


def encode_resources(r: Resources) -> dict[str, Any]:
    return {"gpus": r.gpus, "gpu_milli": r.gpu_milli, "memory_bytes": r.memory_bytes,
            "mig_profile": r.mig_profile, "gpu_types": list(r.gpu_types), "sharing": r.sharing}


def decode_resources(data: Any, where: str = "resources") -> Resources:
    d = _obj(data, where, _RESOURCES)
    return Resources(
        _int(d["gpus"], f"{where}.gpus"), _int(d["gpu_milli"], f"{where}.gpu_milli"),
        _int(d["memory_bytes"], f"{where}.memory_bytes"), _str(d["mig_profile"], f"{where}.mig_profile"),
        _strs(d["gpu_types"], f"{where}.gpu_types"), _str(d["sharing"], f"{where}.sharing"),
    )


def encode_job(j: JobView) -> dict[str, Any]:
    return {
        "id": j.id, "request": encode_resources(j.request), "tenant": j.tenant, "priority": j.priority,
        "qos": j.qos, "submitted_at": j.submitted_at, "started_at": j.started_at,
        "attained_service": j.attained_service, "estimated_seconds": j.estimated_seconds,
        "cpu_milli": j.cpu_milli, "host_memory": j.host_memory, "node": j.node, "gpus": list(j.gpus),
        "paused": j.paused, "preemptions": j.preemptions, "service_rate": j.service_rate,
        "service_since": j.service_since,
        "stints": [{"start": s.start, "stop": s.stop, "service": s.service} for s in j.stints],
        "group": j.group, "suspended": j.suspended, "suspended_bytes": j.suspended_bytes,
        "suspended_model": j.suspended_model,
        "suspended_gpu": None if j.suspended_gpu is None else list(j.suspended_gpu),
    }


def decode_job(data: Any, where: str = "job") -> JobView:
    d = _obj(data, where, _JOB)
    started = d["started_at"]
    return JobView(
        id=_str(d["id"], f"{where}.id"),
        request=decode_resources(d["request"], f"{where}.request"),
        tenant=_str(d["tenant"], f"{where}.tenant"),
        priority=_int(d["priority"], f"{where}.priority"),
        qos=_str(d["qos"], f"{where}.qos"),
        submitted_at=_float(d["submitted_at"], f"{where}.submitted_at"),
        started_at=None if started is None else _float(started, f"{where}.started_at"),
        attained_service=_float(d["attained_service"], f"{where}.attained_service"),
        estimated_seconds=_float(d["estimated_seconds"], f"{where}.estimated_seconds"),
        cpu_milli=_int(d["cpu_milli"], f"{where}.cpu_milli"),
        host_memory=_int(d["host_memory"], f"{where}.host_memory"),
        node=_str(d["node"], f"{where}.node"),
        gpus=_ints(d["gpus"], f"{where}.gpus"),
        paused=_bool(d["paused"], f"{where}.paused"),
        preemptions=_int(d["preemptions"], f"{where}.preemptions"),
        service_rate=_float(d["service_rate"], f"{where}.service_rate"),
        service_since=_float(d["service_since"], f"{where}.service_since"),
        stints=tuple(_decode_stint(s, f"{where}.stints[{i}]") for i, s in enumerate(_list(d["stints"], f"{where}.stints"))),
        group=_str(d["group"], f"{where}.group"),
        suspended=_bool(d["suspended"], f"{where}.suspended"),
        suspended_bytes=_int(d["suspended_bytes"], f"{where}.suspended_bytes"),
        suspended_model=_str(d["suspended_model"], f"{where}.suspended_model"),
        suspended_gpu=_gpu_ref(d["suspended_gpu"], f"{where}.suspended_gpu"),
    )


def _gpu_ref(value: Any, where: str) -> tuple[str, int] | None:
    """A (node, GPU index) pair, sent as ``[node, index]``, or null."""
    if value is None:
        return None
    pair = _list(value, where)
    if len(pair) != 2:
        raise WireError(f"{where}: expected [node, index], got {len(pair)} items")
    return _str(pair[0], f"{where}[0]"), _int(pair[1], f"{where}[1]")


def _decode_stint(data: Any, where: str) -> Stint:
    d = _obj(data, where, _STINT)
    return Stint(_float(d["start"], f"{where}.start"), _float(d["stop"], f"{where}.stop"),
                 _float(d["service"], f"{where}.service"))


def _encode_profile(p: MigProfile) -> dict[str, Any]:
    return {"name": p.name, "slices": p.slices, "memory_bytes": p.memory_bytes,
            "memory_slices": p.memory_slices, "max_count": p.max_count, "placements": list(p.placements)}


def _decode_profile(data: Any, where: str) -> MigProfile:
    d = _obj(data, where, _PROFILE)
    return MigProfile(
        _str(d["name"], f"{where}.name"), _int(d["slices"], f"{where}.slices"),
        _int(d["memory_bytes"], f"{where}.memory_bytes"), _int(d["memory_slices"], f"{where}.memory_slices"),
        _int(d["max_count"], f"{where}.max_count"), _ints(d["placements"], f"{where}.placements"),
    )


def _decode_instance(data: Any, where: str) -> Instance:
    d = _obj(data, where, _INSTANCE)
    return Instance(_str(d["profile"], f"{where}.profile"), _int(d["start"], f"{where}.start"))


def _encode_gpu(g: GpuView, profiles: int) -> dict[str, Any]:
    return {
        "index": g.index, "model": g.model, "memory_total": g.memory_total, "memory_free": g.memory_free,
        "milli_free": g.milli_free, "healthy": g.healthy, "uuid": g.uuid,
        "mig_profiles": profiles, "mig_slices_used": g.mig_slices_used,
        "jobs": list(g.jobs), "sharing": g.sharing,
        "mig_instances": [{"profile": i.profile, "start": i.start} for i in g.mig_instances],
        "suspend": g.suspend, "oversubscription": g.oversubscription, "memory_suspended": g.memory_suspended,
    }


def _decode_gpu(data: Any, where: str, tables: Sequence[tuple[MigProfile, ...]]) -> GpuView:
    d = _obj(data, where, _GPU)
    table = _int(d["mig_profiles"], f"{where}.mig_profiles")
    if not 0 <= table < len(tables):
        raise WireError(f"{where}.mig_profiles: no profile table {table}")
    instances = _list(d["mig_instances"], f"{where}.mig_instances")
    return GpuView(
        index=_int(d["index"], f"{where}.index"),
        model=_str(d["model"], f"{where}.model"),
        memory_total=_int(d["memory_total"], f"{where}.memory_total"),
        memory_free=_int(d["memory_free"], f"{where}.memory_free"),
        milli_free=_int(d["milli_free"], f"{where}.milli_free"),
        healthy=_bool(d["healthy"], f"{where}.healthy"),
        uuid=_str(d["uuid"], f"{where}.uuid"),
        mig_profiles=tables[table],
        mig_slices_used=_int(d["mig_slices_used"], f"{where}.mig_slices_used"),
        jobs=_strs(d["jobs"], f"{where}.jobs"),
        sharing=_str(d["sharing"], f"{where}.sharing"),
        mig_instances=tuple(_decode_instance(x, f"{where}.mig_instances[{i}]") for i, x in enumerate(instances)),
        suspend=_bool(d["suspend"], f"{where}.suspend"),
        oversubscription=_float(d["oversubscription"], f"{where}.oversubscription"),
        memory_suspended=_int(d["memory_suspended"], f"{where}.memory_suspended"),
    )


def encode_task_class(c: TaskClass) -> dict[str, Any]:
    return {"gpus": c.gpus, "milli": c.milli, "cpu_milli": c.cpu_milli, "gpu_types": list(c.gpu_types),
            "weight": c.weight}


def decode_task_class(data: Any, where: str = "task") -> TaskClass:
    d = _obj(data, where, _TASK)
    return TaskClass(_int(d["gpus"], f"{where}.gpus"), _int(d["milli"], f"{where}.milli"),
                     _int(d["cpu_milli"], f"{where}.cpu_milli"), _strs(d["gpu_types"], f"{where}.gpu_types"),
                     _float(d["weight"], f"{where}.weight"))


def encode_decision(d: Decision) -> dict[str, Any]:
    if isinstance(d, Place):
        return {"kind": "place", "job_id": d.job_id, "node": d.node, "gpus": list(d.gpus), "milli": d.milli,
                "memory": d.memory, "mig_profile": d.mig_profile, "mig_slot": d.mig_slot, "sharing": d.sharing}
    return {"kind": "preempt", "job_id": d.job_id, "reason": d.reason}


def decode_decision(data: Any, where: str = "decision") -> Decision:
    kind = data.get("kind") if type(data) is dict else None
    if kind == "preempt":
        d = _obj(data, where, _PREEMPT)
        return Preempt(_str(d["job_id"], f"{where}.job_id"), _str(d["reason"], f"{where}.reason"))
    if kind != "place":
        raise WireError(f"{where}.kind: expected 'place' or 'preempt', got {kind!r:.40}")
    d = _obj(data, where, _PLACE)
    return Place(
        _str(d["job_id"], f"{where}.job_id"), _str(d["node"], f"{where}.node"), _ints(d["gpus"], f"{where}.gpus"),
        _int(d["milli"], f"{where}.milli"), _int(d["memory"], f"{where}.memory"),
        _str(d["mig_profile"], f"{where}.mig_profile"), _int(d["mig_slot"], f"{where}.mig_slot"),
        _str(d["sharing"], f"{where}.sharing"),
    )


# -- snapshots, with what stays the same left out ---------------------------------------------


class SnapshotEncoder:
    """Encodes a sequence of snapshots for one :class:`SnapshotDecoder`, leaving out what the
    other end already has (views are immutable, so "unchanged" is "the same object"):

    - a node unchanged since the previous snapshot goes as ``null``;
    - a job whose view is the one of the previous snapshot goes as its id alone;
    - a GPU's MIG profiles go as the index of a table, each table sent once (in ``profiles``,
      the tables new with this snapshot).
    """

    def __init__(self) -> None:
        self._nodes: list[tuple[NodeView, dict[str, Any]]] = []
        self._jobs: dict[str, JobView] = {}
        # A changed node keeps most of its GPU views (the model rebuilds only those it touched).
        self._gpus: dict[tuple[int, int], tuple[GpuView, dict[str, Any]]] = {}
        self._tables: dict[tuple[MigProfile, ...], int] = {}
        self._new_tables: list[list[dict[str, Any]]] = []

    def encode(self, snap: Snapshot) -> dict[str, Any]:
        previous = self._nodes
        nodes: list[dict[str, Any] | None] = []
        kept: list[tuple[NodeView, dict[str, Any]]] = []
        for i, node in enumerate(snap.nodes):
            if i < len(previous) and previous[i][0] is node:
                nodes.append(None)
                kept.append(previous[i])
            else:
                encoded = self._encode_node(i, node)
                nodes.append(encoded)
                kept.append((node, encoded))
        self._nodes = kept
        # Only the jobs of this snapshot are remembered, so a long trace does not grow the cache.
        known, self._jobs = self._jobs, {}
        tables, self._new_tables = self._new_tables, []
        return {"now": snap.now, "profiles": tables, "nodes": nodes,
                "pending": self._encode_jobs(snap.pending, known), "running": self._encode_jobs(snap.running, known)}

    def _table(self, profiles: tuple[MigProfile, ...]) -> int:
        index = self._tables.get(profiles)
        if index is None:
            index = self._tables[profiles] = len(self._tables)
            self._new_tables.append([_encode_profile(p) for p in profiles])
        return index

    def _encode_node(self, pos: int, node: NodeView) -> dict[str, Any]:
        gpus = []
        for gpu in node.gpus:
            key = (pos, gpu.index)
            hit = self._gpus.get(key)
            if hit is None or hit[0] is not gpu:
                hit = self._gpus[key] = (gpu, _encode_gpu(gpu, self._table(gpu.mig_profiles)))
            gpus.append(hit[1])
        return {"name": node.name, "gpus": gpus, "cpu_milli_free": node.cpu_milli_free,
                "host_memory_free": node.host_memory_free, "cross_gpu_restore": node.cross_gpu_restore}

    def _encode_jobs(self, jobs: Iterable[JobView], known: dict[str, JobView]) -> list[Any]:
        out: list[Any] = []
        for view in jobs:
            self._jobs[view.id] = view
            same = known.get(view.id) is view
            out.append(view.id if same else encode_job(view))
        return out


class SnapshotDecoder:
    """The other end of one :class:`SnapshotEncoder`."""

    def __init__(self) -> None:
        self._nodes: tuple[NodeView, ...] = ()
        self._jobs: dict[str, JobView] = {}
        self._gpus: dict[tuple[int, int], tuple[dict[str, Any], GpuView]] = {}
        self._tables: list[tuple[MigProfile, ...]] = []

    def decode(self, data: Any, where: str = "snapshot") -> Snapshot:
        d = _obj(data, where, _SNAPSHOT)
        for t, table in enumerate(_list(d["profiles"], f"{where}.profiles")):
            rows = _list(table, f"{where}.profiles[{t}]")
            self._tables.append(tuple(_decode_profile(p, f"{where}.profiles[{t}][{i}]") for i, p in enumerate(rows)))
        nodes = []
        for i, raw in enumerate(_list(d["nodes"], f"{where}.nodes")):
            if raw is None:
                if i >= len(self._nodes):
                    raise WireError(f"{where}.nodes[{i}]: 'as before', but there was no node {i} before")
                nodes.append(self._nodes[i])
            else:
                nodes.append(self._decode_node(i, raw, f"{where}.nodes[{i}]"))
        self._nodes = tuple(nodes)
        known, self._jobs = self._jobs, {}
        pending = self._decode_jobs(d["pending"], f"{where}.pending", known)
        running = self._decode_jobs(d["running"], f"{where}.running", known)
        return Snapshot(_float(d["now"], f"{where}.now"), self._nodes, pending, running)

    def _decode_node(self, pos: int, data: Any, where: str) -> NodeView:
        d = _obj(data, where, _NODE)
        gpus = []
        for i, raw in enumerate(_list(d["gpus"], f"{where}.gpus")):
            hit = self._gpus.get((pos, i))
            # Equal JSON decodes to an equal view: comparing the raw objects (in C) is the cheap way.
            if hit is None or hit[0] != raw:
                hit = self._gpus[(pos, i)] = (raw, _decode_gpu(raw, f"{where}.gpus[{i}]", self._tables))
            gpus.append(hit[1])
        return NodeView(_str(d["name"], f"{where}.name"), tuple(gpus),
                        _int(d["cpu_milli_free"], f"{where}.cpu_milli_free"),
                        _int(d["host_memory_free"], f"{where}.host_memory_free"),
                        _bool(d["cross_gpu_restore"], f"{where}.cross_gpu_restore"))

    def _decode_jobs(self, data: Any, where: str, known: dict[str, JobView]) -> tuple[JobView, ...]:
        out = []
        for i, raw in enumerate(_list(data, where)):
            job: JobView
            if type(raw) is str:
                found = known.get(raw)
                if found is None:
                    raise WireError(f"{where}[{i}]: job {raw!r:.60} 'as before', but it was not in the last snapshot")
                job = found
            else:
                job = decode_job(raw, f"{where}[{i}]")
            self._jobs[job.id] = job
            out.append(job)
        return tuple(out)


def encode_snapshot(snap: Snapshot) -> dict[str, Any]:
    """One snapshot on its own (everything spelled out)."""
    return SnapshotEncoder().encode(snap)


def decode_snapshot(data: Any) -> Snapshot:
    return SnapshotDecoder().decode(data)


# -- messages -----------------------------------------------------------------------------------


def dumps(message_type: str, /, **payload: Any) -> bytes:
    """One message as the line that carries it."""
    return json.dumps({"v": SCHEMA_VERSION, "type": message_type, **payload}, separators=(",", ":"),
                      allow_nan=False).encode() + b"\n"


def _refuse_constant(name: str) -> Any:
    raise WireError(f"{name} is not a number this schema carries")


def loads(line: bytes, expected: Sequence[str]) -> dict[str, Any]:
    """The message on ``line``, of one of the ``expected`` types (or ``error``), with its
    envelope checked; the caller checks the rest of its fields."""
    if len(line) > MAX_MESSAGE:
        raise WireError(f"message of {len(line)} bytes exceeds {MAX_MESSAGE}")
    try:
        data = json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"not a JSON message: {str(exc)[:200]}") from None
    if type(data) is not dict:
        raise WireError(f"message: expected an object, got {type(data).__name__}")
    if data.get("v") != SCHEMA_VERSION or type(data.get("v")) is not int:
        raise WireError(f"v: schema version {data.get('v')!r:.20} is not {SCHEMA_VERSION}")
    kind = data.get("type")
    if kind == "error":
        d = _obj(data, "error", frozenset({"v", "type", "kind", "error"}))
        what = _str(d["kind"], "error.kind")
        if what not in ERROR_KINDS:
            raise WireError(f"error.kind: {what!r:.40} is not one of {sorted(ERROR_KINDS)}")
        raise ChildError(what, _str(d["error"], "error.error")[:4000])
    if kind not in expected:
        raise WireError(f"type: expected {' or '.join(expected)}, got {kind!r:.40}")
    return data


@dataclass(frozen=True)
class Hello:
    """What the child says once the candidate is loaded, and after each ``reset``."""

    name: str
    period: float
    seccomp: bool


def decode_hello(line: bytes) -> Hello:
    d = _obj(loads(line, ("hello",)), "hello", frozenset({"v", "type", "name", "period", "seccomp"}))
    return Hello(_str(d["name"], "hello.name")[:200], _float(d["period"], "hello.period"),
                 _bool(d["seccomp"], "hello.seccomp"))


def decode_decisions(line: bytes) -> list[Decision]:
    d = _obj(loads(line, ("decisions",)), "decisions", frozenset({"v", "type", "decisions"}))
    return [decode_decision(x, f"decisions[{i}]") for i, x in enumerate(_list(d["decisions"], "decisions"))]


def decode_quantum(line: bytes) -> float:
    d = _obj(loads(line, ("quantum",)), "quantum", frozenset({"v", "type", "value"}))
    return _float(d["value"], "quantum.value")


def decode_suspend(line: bytes) -> bool:
    d = _obj(loads(line, ("suspend",)), "suspend", frozenset({"v", "type", "value"}))
    return _bool(d["value"], "suspend.value")


def decode_requeue(line: bytes) -> bool:
    d = _obj(loads(line, ("requeue",)), "requeue", frozenset({"v", "type", "value"}))
    return _bool(d["value"], "requeue.value")


def decode_order(line: bytes) -> list[str]:
    d = _obj(loads(line, ("order",)), "order", frozenset({"v", "type", "ids"}))
    return list(_strs(d["ids"], "order.ids"))
