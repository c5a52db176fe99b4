"""Reservations for work started elsewhere (the Kubernetes device plugin): hold a partition, rank GPUs.

A reservation is an EXTERNAL job: the daemon creates its partition and records it, and someone
else runs the work in it. It ends when released (by its keys: the device plugin releases those
of containers that no longer exist), or when its device is handed out again. Both are recorded
in the store, so a gpuosd restart keeps what is held and what was released.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gpuos.daemon.cluster import job_view
from gpuos.daemon.lifecycle import Lifecycle
from gpuos.devices.backend import DeviceInfo
from gpuos.errors import InvalidArgument, ResourceExhausted
from gpuos.jobs import Job, JobKind, JobSpec, JobState, Reason, Resources
from gpuos.scheduler import JobView, Policy, Snapshot
from gpuos.scheduler.framework import gpu_fits, take

if TYPE_CHECKING:
    from gpuos.store import Store


class Reservations:
    """Holds partitions on named GPUs for EXTERNAL jobs."""

    def __init__(self, store: Store, lifecycle: Lifecycle, devices: Sequence[DeviceInfo]) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.devices = devices

    def indices(self, uuids: tuple[str, ...]) -> tuple[int, ...]:
        """The indices of the GPUs named by ``uuids``. Raises InvalidArgument for a UUID not here."""
        by_uuid = {d.uuid: d.index for d in self.devices}
        unknown = [u for u in uuids if u not in by_uuid]
        if unknown:
            raise InvalidArgument("gpu_uuids", f"no GPU here has UUID {unknown[0]}")
        return tuple(by_uuid[u] for u in uuids)

    def hold(
        self, spec: JobSpec, owner_uid: int, indices: tuple[int, ...], snapshot: Callable[[], Snapshot]
    ) -> tuple[Job, dict[str, str]]:
        """Reserve a partition for ``spec`` on GPUs ``indices``; the job and the partition's environment.

        Older reservations that hold any of ``spec.reservation_keys`` are released first, then
        ``snapshot()`` is taken. Raises ResourceExhausted, naming the holders, when the GPUs have
        no room. The caller holds the control loop's lock, so no round ever sees the job pending.
        """
        self.release(spec.reservation_keys, "its device was handed out again")
        snap = snapshot()
        node = snap.nodes[0]
        gpus = {g.index: g for g in node.gpus}
        chosen = tuple(gpus[i] for i in indices)
        for gpu in chosen:
            if not gpu_fits(spec.resources, gpu):
                why = "it failed" if not gpu.healthy else f"held by {', '.join(gpu.jobs) or 'MIG slices'}"
                raise ResourceExhausted(f"GPU {gpu.index} has no room for this request ({why})")
        job, _ = self.store.submit(spec, owner_uid)
        _, place = take(job_view(job), node, chosen)
        partitioned = self.lifecycle.start(place)
        started = self.store.get(job.id)
        if partitioned is None or started.state != JobState.RUNNING or started.placement is None:
            raise ResourceExhausted(f"could not reserve: {started.message or started.state.value}")
        return started, partitioned.env

    def held(self, name_prefix: str = "") -> list[Job]:
        """The reservations held now whose name starts with ``name_prefix``, oldest first."""
        return [j for j in self.store.placed() if j.spec.kind == JobKind.EXTERNAL and j.spec.name.startswith(name_prefix)]

    def release(self, keys: Sequence[str], message: str) -> list[Job]:
        """End every reservation that holds any of ``keys``; those it ended (none for unknown keys).

        The caller holds the control loop's lock.
        """
        wanted = set(keys)
        ended = [j for j in self.held() if wanted.intersection(j.spec.reservation_keys)]
        for job in ended:
            self.lifecycle.finalize(job, JobState.SUCCEEDED, Reason.RELEASED, message, None)
        return ended


def rank(policy: Policy, snap: Snapshot, request: Resources, uuids: tuple[str, ...]) -> list[str]:
    """``uuids`` ordered by ``policy``'s score for ``request`` (fitting GPUs first, then as given)."""
    node = snap.nodes[0]
    by_uuid = {g.uuid: g for g in node.gpus}
    probe = JobView(id="(rank)", request=request, submitted_at=snap.now)
    scored = []
    for order, uuid in enumerate(uuids):
        gpu = by_uuid.get(uuid)
        if gpu is None:
            continue
        fits = gpu_fits(request, gpu)
        score = policy.score(probe, node, (gpu,), snap) if fits and not policy.first_fit else 0.0
        scored.append((not fits, -score, order, uuid))
    return [u for *_, u in sorted(scored)]
