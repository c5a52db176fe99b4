"""The API's side of a history export: finished jobs and their groups as HistoryService messages.

Only what a trace needs crosses: the request, arrival, run time, QoS, priority, tenant, group,
dedupe key, estimate and outcome. A job's name, command, kernel parameters, environment and
working directory are never read into a message, so no export can carry them. With
``anonymize``, tenants, group names, dedupe keys and job ids go through one export's
:class:`gpuos.history.Pseudonyms`.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpuos.api.convert import _PRIORITY_OUT, STATE_TO_PB, _timestamp, resources_to_pb
from gpuos.devices.backend import DeviceInfo
from gpuos.groups import Group
from gpuos.history import HistoryJob, Pseudonyms
from gpuos.v1 import history_pb2


def gpus_to_pb(devices: Iterable[DeviceInfo]) -> list[history_pb2.HistoryGpu]:
    return [history_pb2.HistoryGpu(model=d.model, memory_bytes=d.memory_total)
            for d in sorted(devices, key=lambda d: d.index)]


def job_to_pb(entry: HistoryJob, names: Pseudonyms | None) -> history_pb2.HistoryJob:
    job, spec = entry.job, entry.job.spec

    def shown(kind: str, value: str) -> str:
        return names.of(kind, value) if names is not None else value

    first = entry.run.first_start
    out = history_pb2.HistoryJob(
        id=shown("job", job.id),
        run_seconds=entry.run.seconds,
        first_wait_seconds=max(0.0, first - job.created_at) if first is not None else 0.0,
        request=resources_to_pb(spec.resources),
        priority=_PRIORITY_OUT[spec.priority],
        qos=spec.qos.value,
        tenant=shown("tenant", spec.tenant),
        group=shown("group", spec.group),
        dedupe_key=shown("dedupe", spec.dedupe_key),
        estimated_seconds=spec.estimated_seconds,
        state=STATE_TO_PB[job.state],
        reason=job.reason,
        preemptions=job.preemptions,
    )
    submitted = _timestamp(job.created_at)
    assert submitted is not None
    out.submitted_at.CopyFrom(submitted)
    return out


def group_to_pb(group: Group, names: Pseudonyms | None) -> history_pb2.HistoryGroup:
    tenant, name = group.tenant, group.name
    if names is not None:
        tenant, name = names.of("tenant", tenant), names.of("group", name)
    return history_pb2.HistoryGroup(tenant=tenant, name=name, mode=group.spec.mode_text,
                                    budget_gpu_seconds=group.spec.budget)
