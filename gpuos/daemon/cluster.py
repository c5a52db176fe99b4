"""The daemon's side of the shared cluster-state model (scheduler/state.py): one node, this machine.

The model is the scheduler's whole picture of the machine, and the simulator drives the same
one. The control loop keeps it in step with the store: the lifecycle applies each start, end
and requeue to it as it records them; health marks failed GPUs and foreign MIG instances; and
each round first reconciles the queue with the store (submits and cancels arrive through the
API, which writes only the store). Attained service is the model's: the store keeps, for a
restart, the service up to ``run_since``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from gpuos.devices.backend import DeviceInfo, SuspendSupport
from gpuos.groups import Group
from gpuos.jobs import Job, JobState
from gpuos.mig import Instance
from gpuos.scheduler import GpuView, JobView, NodeView, Place, Snapshot
from gpuos.scheduler.snapshot import MILLI
from gpuos.scheduler.state import ClusterState, Holding, StateError

log = logging.getLogger("gpuos.controller")

NODE = "localhost"


def job_view(job: Job) -> JobView:
    """A job of the store as the policy sees it while it waits."""
    return JobView(
        id=job.id,
        request=job.spec.resources,
        tenant=job.spec.tenant,
        priority=int(job.spec.priority),
        qos=job.spec.qos.value,
        submitted_at=job.created_at,
        attained_service=job.attained_service,
        estimated_seconds=job.spec.estimated_seconds,
        preemptions=job.preemptions,
        group=job.spec.group,
    )


def place_of(job: Job) -> Place:
    """The decision a placed job of the store stands for (to adopt it after a restart)."""
    placement = job.placement
    assert placement is not None
    granted = placement.granted
    # A share's or a slice's compute, a time-sharer's weight; a whole GPU's is all of it.
    return Place(job.id, NODE, placement.devices, granted.gpu_milli or MILLI, granted.memory_bytes,
                 granted.mig_profile, placement.mig_slot, placement.sharing)


class Cluster:
    """The model of this machine, kept in step with the store."""

    def __init__(self, devices: Sequence[DeviceInfo], suspend: SuspendSupport | None = None,
                 oversubscription: float = 1.0) -> None:
        # Jobs here can be suspended to host memory only where the backend detected it at start;
        # only then may time-sharers' limits add up past a GPU's memory (the daemon's config).
        can = suspend is not None and suspend.supported
        gpus = tuple(
            GpuView(d.index, d.model, d.memory_total, d.memory_total, uuid=d.uuid, mig_profiles=d.mig_profiles,
                    suspend=can, oversubscription=oversubscription if can else 1.0)
            for d in devices
        )
        cross = can and suspend is not None and suspend.cross_gpu
        self.state = ClusterState([NodeView(NODE, gpus, cross_gpu_restore=cross)])
        # A GPU counts as healthy in the model when health says so and it is not being drained.
        self._healthy: dict[int, bool] = {d.index: True for d in devices}
        self._draining: set[int] = set()
        # The store record each waiting job's view was built from: an unchanged record (the store
        # hands out the same object until it changes) keeps its view.
        self._synced: dict[str, Job] = {}

    # -- reading --------------------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        return self.state.snapshot(now)

    def view(self, job: Job) -> JobView:
        return self.state.view(job.id) or job_view(job)

    def attained(self, job: Job, now: float) -> float:
        """GPU-seconds of service ``job`` has had up to ``now`` (the model's one definition)."""
        if job.id in self.state.running:
            return self.state.attained(job.id, now)
        return job.attained_service

    def holding(self, job_id: str) -> Holding | None:
        return self.state.holding(job_id)

    # -- what the lifecycle applies -------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        """``job`` waits (if the model did not know it yet, or its record changed)."""
        if job.id in self.state.running:
            return
        if self._synced.get(job.id) is not job:
            self.state.submit(self._waiting_view(job))
            self._synced[job.id] = job

    def _waiting_view(self, job: Job) -> JobView:
        """``job_view``, and for a job suspended to host where it may resume (the store keeps
        that for a restart; the model keeps it while it runs)."""
        view = job_view(job)
        if job.state != JobState.PENDING or not job.suspended:
            return view
        model = self.state.gpu(NODE, job.suspended_from).model
        return replace(view, suspended=True, suspended_bytes=job.suspended_bytes, suspended_model=model,
                       suspended_gpu=(NODE, job.suspended_from))

    def place(self, place: Place, now: float, quantum: float) -> None:
        """Raises StateError when the model refuses it (then nothing changed)."""
        self.state.place(place, now, quantum=quantum)
        self._synced.pop(place.job_id, None)

    def ended(self, job_id: str, now: float, requeued: bool) -> None:
        """A placed job left its GPUs: back to the queue (``requeued``) or gone."""
        if job_id not in self.state.running:
            self.state.withdraw(job_id)
            return
        if requeued:
            self.state.requeue(job_id, now)
        else:
            self.state.finish(job_id, now)

    # -- suspend-to-host (the lifecycle applies each transfer's end) -----------------------------

    def requeue_suspended(self, job: Job, now: float) -> None:
        """``job`` (the store's record after the change) was preempted by suspension: back to
        the queue with its memory on the host, to resume where the model says it may."""
        if job.id not in self.state.running:
            return
        try:
            self.state.requeue(job.id, now, suspended=True, nbytes=job.suspended_bytes)
        except StateError as exc:
            # The model sees no room for it on the host; it waits as a job to be placed anew,
            # and the lifecycle refuses a place its suspended process cannot resume on.
            log.warning("job %s: the model refused it as suspended (%s); it waits unsuspended", job.id, exc)
            self.state.requeue(job.id, now)
        self._synced[job.id] = job

    def set_resident(self, job_id: str, resident: bool, now: float, nbytes: int | None = None) -> None:
        """A placed job's memory left its GPU (``resident`` False; it is paused meanwhile) or came
        back (True; it runs again)."""
        state = self.state
        if job_id not in state.running:
            return
        try:
            if not resident:
                state.pause(job_id, now)
                state.set_resident(job_id, False, now, nbytes)
            else:
                state.set_resident(job_id, True, now)
                state.resume(job_id, now)
        except StateError as exc:
            log.warning("job %s: the model could not follow its memory %s (%s)", job_id,
                        "back to the GPU" if resident else "to the host", exc)

    def drop_suspension(self, job_id: str) -> None:
        """A waiting suspended job's host copy is gone: it waits to restart anywhere."""
        if job_id in self.state.pending:
            self.state.drop_suspension(job_id)

    # -- devices --------------------------------------------------------------------------------

    def set_health(self, healthy: Mapping[int, bool]) -> None:
        for index, ok in healthy.items():
            self._healthy[index] = ok
            self.state.set_health(NODE, index, ok and index not in self._draining)

    @property
    def draining(self) -> frozenset[int]:
        """The GPUs taken out of service (``gpuosctl drain``)."""
        return frozenset(self._draining)

    def set_draining(self, index: int, draining: bool) -> None:
        """GPU ``index`` takes no new placement while ``draining``: the model sees it as not
        placeable, as a failed GPU, though its jobs keep running until they move or end."""
        if draining:
            self._draining.add(index)
        else:
            self._draining.discard(index)
        self.state.set_health(NODE, index, self._healthy.get(index, True) and not draining)

    def set_foreign_instances(self, foreign: Mapping[int, Sequence[Instance]]) -> None:
        for index, instances in foreign.items():
            self.state.set_foreign_instances(NODE, index, instances)

    # -- reconciling with the store -------------------------------------------------------------

    def sync(self, active: Iterable[Job], now: float) -> None:
        """Make the model hold what the store says: its waiting jobs (new ones, changed ones, none
        that left), and its placed jobs (adopted after a restart, with the service the store kept)."""
        state = self.state
        waiting: set[str] = set()
        placed: set[str] = set()
        for job in active:
            if job.state == JobState.PENDING:
                waiting.add(job.id)
            elif job.placement is not None:
                placed.add(job.id)
            self._follow(job, now)
        for job_id in [j for j in state.pending if j not in waiting]:
            state.withdraw(job_id)
            self._synced.pop(job_id, None)
        for job_id in [j for j in state.running if j not in placed]:
            state.finish(job_id, now)

    def sync_groups(self, open_groups: Iterable[Group]) -> None:
        """Hold the store's open groups (a record the store replaced is replaced; an ended group
        is dropped: its members have ended or are being stopped)."""
        state = self.state
        live: set[tuple[str, str]] = set()
        for group in open_groups:
            key = (group.tenant, group.name)
            live.add(key)
            if state.groups.get(key) is not group:
                state.set_group(group)
        for key in [k for k in state.groups if k not in live]:
            state.drop_group(*key)

    def apply(self, changed: Iterable[Job], now: float) -> None:
        """Follow the store's records that changed since the last sync (Store.changed_since), in
        commit order: what sync does, at the cost of the changes instead of the whole queue.

        Only each job's latest record counts: an earlier one is stale against what the lifecycle
        already applied to the model (a RUNNING record from before a requeue by suspension would
        otherwise be adopted back onto the GPU the job just left)."""
        state = self.state
        latest: dict[str, Job] = {}
        for job in changed:
            latest.pop(job.id, None)  # kept in the order of each job's last change
            latest[job.id] = job
        for job in latest.values():
            if job.state.terminal:
                self._synced.pop(job.id, None)
                if job.id in state.running:
                    state.finish(job.id, now)
                else:
                    state.withdraw(job.id)
            else:
                self._follow(job, now)

    def _follow(self, job: Job, now: float) -> None:
        """Take in one unfinished job's record: waiting (new, changed, or requeued by the store)
        or placed (adopted when the model does not hold it)."""
        state = self.state
        if job.state == JobState.PENDING:
            if job.id in state.running:
                state.requeue(job.id, now)  # the store requeued it (a restart): follow it
            self.enqueue(job)
        elif job.placement is not None and job.id not in state.running:
            self._adopt(job, now)

    def _adopt(self, job: Job, now: float) -> None:
        """Take in a job the store says runs (after a restart), with the service it had."""
        self.state.withdraw(job.id)
        self.state.submit(job_view(job))
        since = job.run_since if job.run_since is not None else now
        try:
            self.state.place(place_of(job), now, quantum=1.0, started_at=job.started_at or since,
                             attained=job.attained_service, since=since)
        except StateError as exc:
            # Two records claim one GPU (a store written by an older gpuosd, say): the job keeps
            # running, and the scheduler only sees less room than there is until it ends.
            self.state.withdraw(job.id)
            log.warning("job %s: its recorded placement does not fit the model (%s)", job.id, exc)
