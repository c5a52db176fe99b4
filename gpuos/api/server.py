"""The gRPC servicers: JobService, DeviceService, PolicyService, plus health and reflection.

Handlers check who is calling, convert the request once, call into the daemon only through
:class:`gpuos.api.service.DaemonService`, and map gpuos errors to gRPC status codes in one place
(:func:`_handled`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gpuos.api import convert, history
from gpuos.api.admission import admit
from gpuos.api.fairness import StreamGate
from gpuos.api.identity import Authenticator, Identity
from gpuos.api.loop import ALL, EventFeed, LoopServer, follow_key
from gpuos.api.service import DaemonService
from gpuos.devices.backend import MigInstance
from gpuos.errors import (
    BackendError,
    FailedPrecondition,
    GpuosError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from gpuos.groups import GROUP_CANCELLED, Group, GroupSpec, check_name
from gpuos.guard import DeployStatus, parse_guard, require_readable
from gpuos.jobs import Job, JobKind, JobSpec, JobState, PartitionKind, Reason
from gpuos.policy_choice import resolve
from gpuos.scheduler import Policy, available
from gpuos.shadowing import ShadowState
from gpuos.store import MAX_BATCH_JOBS, Submitted, decode_page_token, encode_page_token
from gpuos.text import clip_utf8, quote
from gpuos.v1 import devices_pb2, history_pb2, jobs_pb2, policy_pb2

log = logging.getLogger("gpuos.api")

_STATUS: list[tuple[type[GpuosError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (BackendError, grpc.StatusCode.UNAVAILABLE),
]
LOG_CHUNK = 1 << 16
MAX_STATUS_MESSAGE = 1024
F = TypeVar("F", bound=Callable[..., Any])


def status_of(exc: GpuosError) -> grpc.StatusCode:
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _status_and_details(exc: Exception, handler: str) -> tuple[grpc.StatusCode, str]:
    """The status a handler's error becomes. Messages quote input through gpuos.text.quote; the
    cap is the backstop for any that does not, so no status outgrows what clients accept."""
    if isinstance(exc, GpuosError):
        return status_of(exc), clip_utf8(str(exc), MAX_STATUS_MESSAGE)
    log.error("unexpected error in %s", handler, exc_info=exc)
    return grpc.StatusCode.INTERNAL, clip_utf8(f"internal error: {type(exc).__name__}: {exc}", MAX_STATUS_MESSAGE)


def _active(context: Any) -> bool:
    """Whether the call is still wanted (a unary handler in grpc.aio's thread pool cannot tell,
    and then counts as wanted: its waits are bounded)."""
    is_active = getattr(context, "is_active", None)
    return bool(is_active()) if is_active is not None else True


def _handled(fn: F) -> F:
    """Map gpuos errors raised by a handler (unary or streaming) to a gRPC status with its message."""

    def fail(context: grpc.ServicerContext, exc: Exception) -> None:
        context.abort(*_status_and_details(exc, fn.__name__))

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coroutine(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                code, details = _status_and_details(exc, fn.__name__)
                await context.abort(code, details)

        return coroutine  # type: ignore[return-value]

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for message in fn(self, request, context):
                    yield message
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                if not context.done():
                    code, details = _status_and_details(exc, fn.__name__)
                    await context.abort(code, details)

        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            fail(context, exc)

    return unary  # type: ignore[return-value]


# A follower is woken by the commits it follows (gpuos/api/loop.py EventFeed); it also reads
# again after this long without one, as a backstop that costs 1,000 idle followers 200 reads a
# second (at 0.5 s it was 2,000, which doubled other calls' latency).
FOLLOW_BACKSTOP = 5.0
# Event sequence numbers are SQLite integers (signed 64-bit); the API's field is unsigned.
MAX_SEQ = 2**63 - 1
# List pages: jobs per page by default and at most, and the bytes after which a page ends early
# (a job's spec can be as large as ARG_MAX; gRPC's default message limit is 4 MiB).
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000
MAX_PAGE_BYTES = 2 << 20


class _Base:
    def __init__(self, service: DaemonService, streams: StreamGate, feed: EventFeed) -> None:
        self.service = service
        self.streams = streams
        self.feed = feed

    def identity(self, context: grpc.ServicerContext) -> Identity:
        return identify(context, self.service.auth)


class JobServicer(_Base):
    @_handled
    async def Submit(self, request: jobs_pb2.SubmitRequest,
                     context: grpc.aio.ServicerContext) -> jobs_pb2.SubmitResponse:
        who = self.identity(context)
        tenant = request.spec.tenant.strip() or who.name
        if tenant != who.name and not who.admin:
            raise PermissionDenied(f"tenant: {who.name} may submit only as tenant {who.name!r}, not {quote(tenant)}")
        if len(request.idempotency_key) > 128:
            raise InvalidArgument("idempotency_key", "is longer than 128 characters")
        spec, group = self._submission(request, who)
        job, outcome = await asyncio.wrap_future(
            self.service.store.submit_later(spec, who.uid, request.idempotency_key, group))
        self.service.wake()
        return jobs_pb2.SubmitResponse(job=convert.job_to_pb(job), duplicate=outcome is Submitted.DUPLICATE)

    def _submission(self, request: jobs_pb2.SubmitRequest, who: Identity) -> tuple[JobSpec, GroupSpec | None]:
        """A submit's checked spec and group options (InvalidArgument naming the field)."""
        tenant = request.spec.tenant.strip() or who.name
        if tenant != who.name and not who.admin:
            raise PermissionDenied(f"tenant: {who.name} may submit only as tenant {who.name!r}, not {quote(tenant)}")
        if len(request.idempotency_key) > 128:
            raise InvalidArgument("idempotency_key", "is longer than 128 characters")
        spec = convert.spec_from_pb(request.spec, convert._label(tenant, "tenant", convert.MAX_TENANT))
        spec = admit(spec, self.service.devices, self.service.mps_available)
        return spec, convert.group_options_from_pb(request)

    @_handled
    def SubmitBatch(self, request: jobs_pb2.SubmitBatchRequest,
                    context: grpc.ServicerContext) -> jobs_pb2.SubmitBatchResponse:
        who = self.identity(context)
        if not request.jobs:
            raise InvalidArgument("jobs", "is empty; give one or more submits")
        if len(request.jobs) > MAX_BATCH_JOBS:
            raise InvalidArgument("jobs", f"holds {len(request.jobs)} submits; at most {MAX_BATCH_JOBS} per batch")
        items: list[tuple[JobSpec, str, GroupSpec | None]] = []
        for i, one in enumerate(request.jobs):
            try:
                spec, group = self._submission(one, who)
            except InvalidArgument as exc:
                raise InvalidArgument(f"jobs[{i}].{exc.field}", exc.problem) from None
            except (PermissionDenied, ResourceExhausted) as exc:
                raise type(exc)(f"jobs[{i}]: {exc}") from None
            items.append((spec, one.idempotency_key, group))
        results = self.service.store.submit_batch(items, who.uid)
        self.service.wake()
        reply = jobs_pb2.SubmitBatchResponse()
        for job, outcome in results:
            reply.jobs.append(jobs_pb2.SubmitResponse(job=convert.job_to_pb(job),
                                                      duplicate=outcome is Submitted.DUPLICATE))
        return reply

    def _visible(self, job_id: str, who: Identity) -> Job:
        # Prefixes resolve among the caller's own jobs only: another tenant's job sharing the
        # prefix must not make it ambiguous (that would reveal that the job exists).
        job = self.service.store.get(job_id, "" if who.admin else who.name)
        if not who.may_see(job.spec.tenant):
            # The same answer as for a job that does not exist: ids of others' jobs are not revealed.
            raise NotFound(f"no job with id {quote(job_id)}")
        return job

    def _job_pb(self, job: Job) -> jobs_pb2.Job:
        progress = self.service.kernel_progress(job.id) if job.spec.kind == JobKind.KERNEL else None
        waiting = self.service.waiting(job.id) if job.state == JobState.PENDING else None
        return convert.job_to_pb(job, progress, waiting, self.service.colocation(job.id) if job.state.active else None)

    @_handled
    def Get(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return self._job_pb(self._visible(request.id, self.identity(context)))

    @_handled
    def List(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        who = self.identity(context)
        tenant = request.tenant.strip()
        if tenant and not who.may_see(tenant):
            raise PermissionDenied(f"tenant: {who.name} may not list the jobs of tenant {quote(tenant)}")
        if not who.admin:
            tenant = who.name
        after, floor = decode_page_token(request.page_token) if request.page_token else (0, 0)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = self.service.store.page(convert.states_from_pb(list(request.states)), tenant, after=after, size=size,
                                       newest=request.limit, floor=floor)
        reply = jobs_pb2.ListJobsResponse()
        used = 0
        for i, job in enumerate(page.jobs):
            message = self._job_pb(job)
            used += message.ByteSize()
            if used > MAX_PAGE_BYTES and i:
                # Big specs (environments up to ARG_MAX) end the page early instead of the reply
                # outgrowing what clients accept; the rest follows on the next page.
                reply.next_page_token = encode_page_token(page.jobs[i - 1].seq, page.floor)
                return reply
            reply.jobs.append(message)
        if page.next_after:
            reply.next_page_token = encode_page_token(page.next_after, page.floor)
        return reply

    @_handled
    def Cancel(self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        job = self._visible(request.id, self.identity(context))
        store = self.service.store
        if job.state.terminal:
            raise FailedPrecondition(f"job {job.id} already ended ({job.state.value})")
        try:
            job = store.update(job.id, expect={JobState.PENDING}, state=JobState.CANCELLED, reason="cancelled-by-user",
                               message="cancelled before it started", finished_at=time.time())
        except FailedPrecondition:
            # It started (or ended) meanwhile: ask the controller to stop its process.
            try:
                job = store.update(job.id, expect={JobState.RUNNING, JobState.PAUSED}, cancel_requested=True,
                                   cancel_reason=Reason.CANCELLED_BY_USER, event="cancel-requested")
            except FailedPrecondition:
                return convert.job_to_pb(store.get(job.id))
            self.service.wake()
            deadline = time.time() + self.service.kill_grace_seconds + 3.0
            seq = store.last_event_seq
            while time.time() < deadline and _active(context):
                job = store.get(job.id)
                if job.state.terminal:
                    break
                store.wait_for_events(seq, 0.2)
                seq = store.last_event_seq
        return convert.job_to_pb(job)

    @_handled
    def SetPriority(self, request: jobs_pb2.SetPriorityRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        job = self._visible(request.id, self.identity(context))
        if request.priority == jobs_pb2.PRIORITY_UNSPECIFIED or request.priority not in convert.PRIORITY_FROM_PB:
            raise InvalidArgument("priority", f"{request.priority} is not a priority; use LOW, NORMAL or HIGH")
        job = self.service.store.set_priority(job.id, convert.PRIORITY_FROM_PB[request.priority])
        self.service.wake()
        return self._job_pb(job)

    @_handled
    def Stop(self, request: jobs_pb2.StopJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        job = self._visible(request.id, self.identity(context))
        store = self.service.store
        if job.spec.kind != JobKind.KERNEL:
            raise FailedPrecondition(f"job {job.id} is a {job.spec.kind.value} job; only kernel jobs stop at a step "
                                     "boundary (cancel stops any job)")
        if job.state.terminal:
            raise FailedPrecondition(f"job {job.id} already ended ({job.state.value})")
        try:
            job = store.update(job.id, expect={JobState.PENDING}, state=JobState.CANCELLED,
                               reason=Reason.STOPPED_AT_STEP, message="stopped before it started",
                               finished_at=time.time())
        except FailedPrecondition:
            try:
                job = store.update(job.id, expect={JobState.RUNNING, JobState.PAUSED}, stop_requested=True,
                                   event="stop-requested")
            except FailedPrecondition:
                job = store.get(job.id)
        self.service.wake()
        return self._job_pb(job)

    def _group_tenant(self, tenant: str, who: Identity) -> str:
        tenant = tenant.strip() or who.name
        if not who.may_see(tenant):
            raise PermissionDenied(f"tenant: {who.name} may not see the groups of tenant {quote(tenant)}")
        return tenant

    def _group_pb(self, group: Group, members: list[Job] | None = None) -> jobs_pb2.Group:
        if members is None:
            members = self.service.store.members(group.tenant, group.name) if group.open else []
        running = sum(self.service.service_of(m) for m in members if m.state.active)
        return convert.group_to_pb(group, running, [self._job_pb(m) for m in members])

    @_handled
    def GetGroup(self, request: jobs_pb2.GetGroupRequest, context: grpc.ServicerContext) -> jobs_pb2.Group:
        who = self.identity(context)
        tenant = self._group_tenant(request.tenant, who)
        name = check_name(request.name.strip())
        group = self.service.store.group(tenant, name)
        return self._group_pb(group, self.service.store.members(tenant, name))

    @_handled
    def ListGroups(self, request: jobs_pb2.ListGroupsRequest,
                   context: grpc.ServicerContext) -> jobs_pb2.ListGroupsResponse:
        who = self.identity(context)
        tenant = self._group_tenant(request.tenant, who)
        reply = jobs_pb2.ListGroupsResponse()
        for group in self.service.store.groups(tenant):
            shown = self._group_pb(group)
            del shown.members[:]
            reply.groups.append(shown)
        return reply

    @_handled
    def CancelGroup(self, request: jobs_pb2.CancelGroupRequest, context: grpc.ServicerContext) -> jobs_pb2.Group:
        who = self.identity(context)
        tenant = self._group_tenant(request.tenant, who)
        name = check_name(request.name.strip())
        group = self.service.store.end_group(tenant, name, GROUP_CANCELLED)
        self.service.wake()
        return self._group_pb(group, self.service.store.members(tenant, name))

    @_handled
    async def Watch(self, request: jobs_pb2.WatchRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[jobs_pb2.Event]:
        who = self.identity(context)
        store = self.service.store
        job_id = ""
        if request.job_id:
            job_id = self._visible(request.job_id, who).id
        group = ""
        if request.group:
            group = check_name(request.group.strip())
            store.group(who.name, group)  # NotFound for an unknown group
        seq = request.since_seq
        if seq > MAX_SEQ:
            raise InvalidArgument("since_seq", f"{seq} is beyond any event's sequence number (at most {MAX_SEQ})")
        # A tenant's stream reads only its own events: others' events cost its stream nothing.
        # (A group is a tenant's: an admin follows their own group's.)
        tenant = who.name if group or not who.admin else ALL
        while True:
            # Every event up to `top` is readable now; a short batch holds all of them that match,
            # so the stream moves past the others' events too instead of waking for them again.
            top = store.last_event_seq
            batch = store.events(seq, job_id, 500, tenant, group)
            for event in batch:
                seq = event.seq
                await self.streams.apace(who.name)
                yield convert.event_to_pb(event)
            if len(batch) == 500:
                continue
            seq = max(seq, top)
            if not request.follow:
                return
            # Ended by memory, which the store updates after the window of recent events: the
            # event that ended it is then in reach of this read (SQLite may show the end sooner).
            if job_id and store.active_job(job_id) is None and not store.events(seq, job_id, 1):
                return
            if store.last_event_seq <= seq:  # nothing new since the read: wait on the loop
                await self.feed.wait(follow_key(job_id, tenant, group), FOLLOW_BACKSTOP)

    @_handled
    async def Logs(self, request: jobs_pb2.LogsRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[jobs_pb2.LogChunk]:
        job = self._visible(request.job_id, self.identity(context))
        offsets = {"stdout": 0, "stderr": 0}
        while True:
            # Read the state before the files: everything written before the job ended is then sent.
            finished = self.service.store.get(job.id).state.terminal
            sent = False
            for stream in offsets:
                path = self.service.log_path(job.id, stream)
                try:
                    with open(path, "rb") as f:
                        f.seek(offsets[stream])
                        while data := f.read(LOG_CHUNK):
                            offsets[stream] += len(data)
                            sent = True
                            await self.streams.apace(job.spec.tenant)
                            yield jobs_pb2.LogChunk(stream=stream, data=data)
                except FileNotFoundError:
                    pass
            if not request.follow or (finished and not sent):
                return
            if not sent:
                await asyncio.sleep(0.1)


# Where an MPS client and its server share memory (POSIX shm_open).
MPS_SHM = "/dev/shm"


def _mig_instance(m: MigInstance) -> devices_pb2.MigInstanceInfo:
    return devices_pb2.MigInstanceInfo(profile=m.profile, start=m.start, uuid=m.uuid, gpu_instance_id=m.index,
                                       compute_instance_id=m.compute_instance)


class DeviceServicer(_Base):
    @_handled
    def List(self, request: devices_pb2.ListDevicesRequest, context: grpc.ServicerContext) -> devices_pb2.ListDevicesResponse:
        who = self.identity(context)
        out = devices_pb2.ListDevicesResponse(backend=self.service.backend_name)
        out.devices.extend(self._devices(who))
        return out

    @_handled
    def InjectFault(self, request: devices_pb2.InjectFaultRequest, context: grpc.ServicerContext) -> devices_pb2.Device:
        who = self.identity(context)
        if not who.admin:
            raise PermissionDenied(f"{who.name} may not inject faults; only admins may")
        service = self.service
        if request.index >= len(service.devices):
            raise InvalidArgument("index", f"there is no GPU {request.index}; GPUs are 0..{len(service.devices) - 1}")
        kinds = devices_pb2.InjectFaultRequest
        if request.kind in (kinds.GPU_FAILURE, kinds.GPU_RECOVERY):
            service.set_gpu_failed(request.index, request.kind == kinds.GPU_FAILURE)
        elif request.kind == kinds.MPS_DAEMON_CRASH:
            service.crash_mps_daemon(request.index)
        else:
            raise InvalidArgument("kind", "name a fault: GPU_FAILURE, GPU_RECOVERY or MPS_DAEMON_CRASH")
        service.check_now()
        return next(d for d in self._devices(who) if d.index == request.index)

    @_handled
    def Reserve(self, request: devices_pb2.ReserveRequest, context: grpc.ServicerContext) -> devices_pb2.Reservation:
        who = self.identity(context)
        if not who.admin:
            raise PermissionDenied(f"{who.name} may not reserve partitions; only admins (the device plugin) may")
        uuids = tuple(convert._text(u, "gpu_uuids", 128) for u in request.gpu_uuids)
        if not uuids or len(set(uuids)) != len(uuids):
            raise InvalidArgument("gpu_uuids", "name one or more distinct GPUs by UUID")
        resources = convert.resources_from_pb(request.resources)
        if resources.executor:
            raise InvalidArgument("resources.sharing", "executor runs gpuosd's kernel jobs; a reservation cannot use it")
        if resources.gpu_milli or resources.mig_profile or resources.timeslice:
            if len(uuids) != 1:
                raise InvalidArgument("gpu_uuids", "a share or a MIG slice is on exactly one GPU")
        else:
            resources = replace(resources, gpus=len(uuids))
        keys = tuple(convert._label(k, "keys", 128) for k in request.keys)
        # No commas: the API shows a reservation's keys comma-joined (see convert.job_to_pb).
        if any("," in k or not k for k in keys):
            raise InvalidArgument("keys", "keys are non-empty and hold no commas")
        name = convert._label(request.name.strip() or "reservation", "name", convert.MAX_NAME)
        spec = JobSpec(name=name, kind=JobKind.EXTERNAL, resources=resources, reservation_keys=keys, tenant=who.name)
        admit(spec, self.service.devices, self.service.mps_available)
        job, env = self.service.reserve(spec, who.uid, uuids)
        env = {**env, "GPUOS_JOB_ID": job.id}
        env.setdefault("NVIDIA_VISIBLE_DEVICES", env.get("CUDA_VISIBLE_DEVICES", ""))
        out = devices_pb2.Reservation(job_id=job.id, env=env)
        placement = job.placement
        if placement is not None and placement.mig_uuid:
            instance = next((m for m in self.service.mig_instances(placement.devices[0])
                             if m.uuid == placement.mig_uuid), None)
            if instance is not None:
                out.mig_instance.CopyFrom(_mig_instance(instance))
        pipe = env.get("CUDA_MPS_PIPE_DIRECTORY")
        if pipe:
            # A container reaches the MPS control daemon through its pipe directory; its clients
            # and the MPS server exchange work through POSIX shared memory, so the container needs
            # the /dev/shm the daemon's server uses (the host's: gpuosd runs with host IPC). The
            # log directory only has to exist where CUDA_MPS_LOG_DIRECTORY points: the daemon and
            # server write it, clients do not.
            out.mounts.append(devices_pb2.HostMount(host_path=pipe, container_path=pipe, read_only=False))
            logs = env.get("CUDA_MPS_LOG_DIRECTORY")
            if logs:
                out.mounts.append(devices_pb2.HostMount(host_path=logs, container_path=logs, read_only=True))
            out.mounts.append(devices_pb2.HostMount(host_path=MPS_SHM, container_path=MPS_SHM, read_only=False))
        return out

    @_handled
    def Release(self, request: devices_pb2.ReleaseRequest, context: grpc.ServicerContext) -> devices_pb2.ReleaseReply:
        who = self.identity(context)
        if not who.admin:
            raise PermissionDenied(f"{who.name} may not release reservations; only admins (the device plugin) may")
        keys = tuple(convert._label(k, "keys", 128) for k in request.keys)
        if any(not k for k in keys):
            raise InvalidArgument("keys", "keys are non-empty")
        return devices_pb2.ReleaseReply(released=len(self.service.release(keys)))

    @_handled
    def ListReservations(
        self, request: devices_pb2.ListReservationsRequest, context: grpc.ServicerContext
    ) -> devices_pb2.ListReservationsReply:
        who = self.identity(context)
        if not who.admin:
            raise PermissionDenied(f"{who.name} may not list reservations; only admins (the device plugin) may")
        prefix = convert._text(request.name_prefix, "name_prefix", convert.MAX_NAME)
        out = devices_pb2.ListReservationsReply()
        uuid_of = {d.index: d.uuid for d in self.service.devices}
        for job in self.service.reservations(prefix):
            placement = job.placement
            indices = placement.devices if placement is not None else ()
            out.reservations.append(devices_pb2.ReservationInfo(
                job_id=job.id, name=job.spec.name, keys=list(job.spec.reservation_keys),
                gpu_uuids=[uuid_of.get(i, "") for i in indices],
                resources=convert.resources_to_pb(job.spec.resources),
            ))
        return out

    @_handled
    def Rank(self, request: devices_pb2.RankRequest, context: grpc.ServicerContext) -> devices_pb2.RankResponse:
        self.identity(context)
        resources = convert.resources_from_pb(request.resources)
        uuids = tuple(convert._text(u, "gpu_uuids", 128) for u in request.gpu_uuids)
        return devices_pb2.RankResponse(gpu_uuids=self.service.rank(resources, uuids))

    @_handled
    def Drain(self, request: devices_pb2.DrainRequest, context: grpc.ServicerContext) -> devices_pb2.DrainReply:
        who = self.identity(context)
        if not who.admin:
            raise PermissionDenied(f"{who.name} may not drain GPUs; only admins may")
        service = self.service
        if request.index >= len(service.devices):
            raise InvalidArgument("index", f"there is no GPU {request.index}; GPUs are 0..{len(service.devices) - 1}")
        if request.undrain and request.requeue:
            raise InvalidArgument("requeue", "applies to a drain, not to an undrain")
        plan = service.drain(request.index, undrain=request.undrain, requeue=request.requeue)
        device = next(d for d in self._devices(who) if d.index == request.index)
        return devices_pb2.DrainReply(device=device, message=plan.message, migrating=list(plan.migrate),
                                      requeued=list(plan.requeue), staying=list(plan.stay))

    def _devices(self, who: Identity) -> list[devices_pb2.Device]:
        service = self.service
        statuses = {s.index: s for s in service.statuses()}
        active = [j for j in service.store.placed() if j.placement is not None]
        draining = service.draining()
        out = []
        for info in service.devices:
            status = statuses.get(info.index)
            used_by_pid = {p.pid: p.memory_used for p in status.processes} if status else {}
            holders = [j for j in active if info.index in j.placement.devices]  # type: ignore[union-attr]
            device = devices_pb2.Device(
                index=info.index,
                uuid=info.uuid,
                model=info.model,
                memory_total=info.memory_total,
                memory_used=status.memory_used if status else 0,
                sm_count=info.sm_count,
                utilization_pct=status.utilization_pct if status else 0.0,
                healthy=status.healthy if status else False,
                backend=service.backend_name,
                mig_profiles=[
                    devices_pb2.MigProfileInfo(name=p.name, slices=p.slices, memory_bytes=p.memory_bytes,
                                               max_count=p.max_count, memory_slices=p.memory_slices,
                                               placements=list(p.placements))
                    for p in info.mig_profiles
                ],
            )
            kinds = {j.placement.partition.kind for j in holders}  # type: ignore[union-attr]
            if not kinds:
                device.partitioning = "idle"
            elif PartitionKind.MIG in kinds:
                device.partitioning = PartitionKind.MIG.value
            else:
                device.partitioning = min(k.value for k in kinds)
            device.mig_instances.extend(_mig_instance(m) for m in service.mig_instances(info.index))
            device.mps_daemon_running = service.mps_running(info.index)
            suspend = service.suspend_support
            device.suspend_supported = suspend.supported
            device.suspend_detail = suspend.detail
            device.suspend_cross_gpu = suspend.cross_gpu
            device.draining = info.index in draining
            device.numa_node = info.numa_node
            device.minor_number = info.minor_number
            for job in holders:
                placement = job.placement
                assert placement is not None
                visible = who.may_see(job.spec.tenant)
                device.allocations.append(
                    devices_pb2.Allocation(
                        job_id=job.id if visible else "",
                        tenant=job.spec.tenant if visible else "(other tenant)",
                        partition=str(placement.partition),
                        compute_milli=placement.granted.gpu_milli or 1000,
                        memory_limit=placement.granted.memory_bytes,
                        memory_used=used_by_pid.get(job.child_pid, 0),
                        paused=job.state == JobState.PAUSED,
                    )
                )
            out.append(device)
        return out


class PolicyServicer(_Base):
    @_handled
    def List(self, request: policy_pb2.ListPoliciesRequest, context: grpc.ServicerContext) -> policy_pb2.ListPoliciesResponse:
        self.identity(context)
        status = self.service.policy_status()
        active = status.choice.name
        policies = [_info(name, cls, active=name == active) for name, cls in available().items()]
        if active not in available():
            # The active policy came from a policy file: listed too, so `policy list` shows what runs.
            policies.append(_active_info(status))
        return policy_pb2.ListPoliciesResponse(policies=policies)

    def _admin(self, context: grpc.ServicerContext, what: str) -> None:
        who = self.identity(context)
        if not who.admin:
            raise PermissionDenied(f"{who.name} may not {what}; the scheduling policy applies to every tenant")

    @_handled
    def Set(self, request: policy_pb2.SetPolicyRequest, context: grpc.ServicerContext) -> policy_pb2.PolicyInfo:
        self._admin(context, "change the scheduling policy")
        guard = None
        if request.guard:
            guard = parse_guard(request.guard, request.window, request.min_samples)
            require_readable(guard)
        elif request.window or request.min_samples:
            raise InvalidArgument("window", "a window (and min_samples) only go with a guard")
        choice, policy = resolve(request.name, request.source, request.filename)
        self.service.deploy(choice, policy, guard)
        return _info(policy.name, type(policy), active=True, filename=choice.filename)

    @_handled
    def Status(self, request: policy_pb2.PolicyStatusRequest, context: grpc.ServicerContext) -> policy_pb2.PolicyStatus:
        self.identity(context)
        status = self.service.policy_status()
        out = policy_pb2.PolicyStatus(
            active=_active_info(status), rollbacks=status.rollbacks,
            switches=[policy_pb2.PolicySwitch(time=s.time, from_policy=s.from_policy, to_policy=s.to_policy,
                                              kind=s.kind, reason=s.reason) for s in status.switches],
            shadow=_shadow_status(self.service.shadow_state(0)),
        )
        watch = status.watch
        if watch is not None:
            spec = watch.spec
            guard = policy_pb2.GuardStatus(text=spec.text, metric=spec.metric, op=spec.op, bound=spec.bound,
                                           window_seconds=spec.window, min_samples=spec.min_samples,
                                           previous=watch.previous.name, since=watch.since)
            reading = status.reading
            if reading is not None:
                guard.value, guard.samples, guard.judged, guard.read_at = (
                    reading.value, reading.samples, reading.judged, reading.at)
            out.guard.CopyFrom(guard)
        return out

    @_handled
    def Shadow(self, request: policy_pb2.ShadowRequest, context: grpc.ServicerContext) -> policy_pb2.ShadowStatus:
        self._admin(context, "shadow a scheduling policy")
        if request.off:
            self.service.stop_shadow()
        else:
            ref = request.candidate
            choice, policy = resolve(ref.name, ref.source, ref.filename)
            self.service.start_shadow(choice, policy)
        return _shadow_status(self.service.shadow_state(0))

    @_handled
    def ShadowReport(self, request: policy_pb2.ShadowReportRequest,
                     context: grpc.ServicerContext) -> policy_pb2.ShadowReportResponse:
        # Admins only: the examples name every tenant's jobs.
        self._admin(context, "read the shadow's report")
        state = self.service.shadow_state(request.examples or 10)
        out = policy_pb2.ShadowReportResponse(
            status=_shadow_status(state), counts=policy_pb2.ShadowCounts(**state.counts),
            examples=[policy_pb2.ShadowDiff(
                time=d.time, placed_only_by_active=d.placed_only_by_active,
                placed_only_by_candidate=d.placed_only_by_candidate, other_gpus=d.other_gpus,
                order_differs=d.order_differs, preempted_only_by_active=d.preempted_only_by_active,
                preempted_only_by_candidate=d.preempted_only_by_candidate) for d in state.examples],
        )
        if request.no_simulation:
            out.simulation_note = "not simulated (asked not to)"
            return out
        effect = self.service.shadow_effect()
        out.simulated_jobs, out.left_out_jobs, out.simulation_note = effect.jobs, effect.left_out, effect.note
        for field, figures in (("active", effect.active), ("candidate", effect.candidate)):
            if figures is not None:
                getattr(out, field).CopyFrom(policy_pb2.SimulatedEffect(
                    policy=figures.policy, mean_jct=figures.mean_jct, p99_queue_delay_ls=figures.p99_queue_delay_ls,
                    slo_attainment=figures.slo_attainment))
        return out


def _shadow_status(state: ShadowState) -> policy_pb2.ShadowStatus:
    return policy_pb2.ShadowStatus(on=state.on, candidate=state.candidate, since=state.since, rounds=state.rounds,
                                   differing_rounds=state.differing_rounds, disabled_reason=state.disabled_reason)


def _info(name: str, cls: type[Policy], active: bool, filename: str = "") -> policy_pb2.PolicyInfo:
    return policy_pb2.PolicyInfo(name=name, description=cls.description, active=active,
                                 provenance=cls.provenance, verified_gain=cls.verified_gain, filename=filename)


def _active_info(status: DeployStatus) -> policy_pb2.PolicyInfo:
    return _info(status.choice.name, status.policy, active=True, filename=status.choice.filename)


class HistoryServicer(_Base):
    @_handled
    async def ExportTrace(self, request: history_pb2.ExportTraceRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[history_pb2.HistoryChunk]:
        who = self.identity(context)
        tenant = request.tenant.strip()
        if not who.admin:
            if tenant and tenant != who.name:
                raise PermissionDenied(f"tenant: {who.name} may export only their own jobs, not {quote(tenant)}'s")
            tenant = who.name
        since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else None
        until = request.until.ToNanoseconds() / 1e9 if request.HasField("until") else None
        if since is not None and until is not None and until <= since:
            raise InvalidArgument("until", "is not after since")
        names = history.Pseudonyms() if request.anonymize else None
        store = self.service.store
        groups: dict[tuple[str, str], Group] = {}
        first = True
        after = 0
        while True:
            entries, after = store.history(since=since, until=until, tenant=tenant, after=after)
            ran = [e for e in entries if e.run.first_start is not None]
            chunk = history_pb2.HistoryChunk(jobs=[history.job_to_pb(e, names) for e in ran],
                                             anonymized=request.anonymize, never_ran=len(entries) - len(ran))
            if first:
                chunk.gpus.extend(history.gpus_to_pb(self.service.devices))
                first = False
            for entry in ran:
                spec = entry.job.spec
                if spec.group and (spec.tenant, spec.group) not in groups:
                    try:
                        groups[(spec.tenant, spec.group)] = store.group(spec.tenant, spec.group)
                    except NotFound:
                        pass  # purged since
            if not after:
                chunk.groups.extend(history.group_to_pb(g, names) for g in groups.values())
            await self.streams.apace(who.name)
            yield chunk
            if not after:
                return


def _register(server: grpc.Server, servicer: _Base, service: ServiceDescriptor, streams: StreamGate) -> None:
    """Serve ``service`` with ``servicer``, parsing requests ourselves.

    grpcio answers a request it cannot parse with INTERNAL; a malformed request is the caller's
    error, so the handlers take raw bytes and answer INVALID_ARGUMENT instead. Every call is
    identified here first, so a caller who may not call at all (another user of a non-root
    gpuosd, a TCP caller without credentials) is refused by every method alike.
    """
    handlers = {}
    for method in service.methods:
        request_cls = GetMessageClass(method.input_type)
        response_cls = GetMessageClass(method.output_type)
        impl = getattr(servicer, method.name)

        def parse(raw: bytes, context: grpc.ServicerContext, request_cls: Any = request_cls) -> Any:
            try:
                return request_cls.FromString(raw)
            except DecodeError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request: not a valid {request_cls.DESCRIPTOR.full_name}: {exc}")

        def caller(context: grpc.ServicerContext) -> Identity:
            try:
                return servicer.identity(context)
            except GpuosError as exc:
                context.abort(status_of(exc), str(exc))
                raise  # abort raises; this line only tells type checkers so

        async def opened(raw: bytes, context: grpc.aio.ServicerContext,
                         request_cls: Any = request_cls) -> tuple[Any, str]:
            """A coroutine call's request and caller's tenant (parse and caller, awaiting abort)."""
            try:
                request = request_cls.FromString(raw)
            except DecodeError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"request: not a valid {request_cls.DESCRIPTOR.full_name}: {exc}")
            try:
                tenant = servicer.identity(context).name
            except GpuosError as exc:
                await context.abort(status_of(exc), str(exc))
            streams.note_call(tenant)
            return request, tenant

        if method.server_streaming:
            # A coroutine on the server's loop (gpuos/api/loop.py): it holds no thread while it waits.
            async def stream(raw: bytes, context: grpc.aio.ServicerContext, impl: Any = impl,
                             opened: Any = opened) -> Any:
                request, tenant = await opened(raw, context)
                try:
                    release = streams.enter(tenant)
                except GpuosError as exc:
                    await context.abort(status_of(exc), str(exc))
                # However the call ends (the client gone included: the task is cancelled), the
                # finally counts the stream closed.
                try:
                    async for message in impl(request, context):
                        yield message
                finally:
                    release()

            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                stream, response_serializer=response_cls.SerializeToString
            )
        elif inspect.iscoroutinefunction(impl):
            # The hot path (Submit): a coroutine that awaits the store's commit on the loop
            # instead of hopping to a pool thread that would wait for it.
            async def awaited(raw: bytes, context: grpc.aio.ServicerContext, impl: Any = impl,
                              opened: Any = opened) -> Any:
                request, _ = await opened(raw, context)
                return await impl(request, context)

            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                awaited, response_serializer=response_cls.SerializeToString
            )
        else:
            def unary(raw: bytes, context: grpc.ServicerContext, impl: Any = impl, parse: Any = parse) -> Any:
                request = parse(raw, context)
                streams.note_call(caller(context).name)
                return impl(request, context)

            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                unary, response_serializer=response_cls.SerializeToString
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


SERVICES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
    devices_pb2.DESCRIPTOR.services_by_name["DeviceService"],
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"],
    history_pb2.DESCRIPTOR.services_by_name["HistoryService"],
)
SERVICE_NAMES = tuple(s.full_name for s in SERVICES)


# Worker threads for the unary calls (streams are coroutines on the loop and take none).
MAX_WORKERS = 256
# Streams open at once, all tenants together: each costs a task, buffers and a connection's share.
MAX_STREAMS = 16384


def build_server(
    service: DaemonService, *, max_streams_per_tenant: int, stream_messages_per_second: float,
    max_workers: int = MAX_WORKERS,
) -> tuple[LoopServer, health.HealthServicer]:
    """A gRPC server with gpuos's services over ``service``, the standard health service and reflection.

    A tenant holds at most ``max_streams_per_tenant`` streams (Watch, Logs) open; while other
    tenants are calling, its streams send at most ``stream_messages_per_second`` messages (0: no
    pacing; see StreamGate).
    """
    def make() -> grpc.aio.Server:
        return grpc.aio.server(
            migration_thread_pool=futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gpuos-rpc"),
            options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.so_reuseport", 0)],
        )

    loop_server = LoopServer(make)
    server = loop_server.server
    feed = EventFeed(loop_server.loop)
    service.store.listen(feed.committed)
    streams = StreamGate(max_streams_per_tenant, MAX_STREAMS, stream_messages_per_second)
    servicers = (JobServicer(service, streams, feed), DeviceServicer(service, streams, feed),
                 PolicyServicer(service, streams, feed), HistoryServicer(service, streams, feed))
    for descriptor, servicer in zip(SERVICES, servicers, strict=True):
        _register(server, servicer, descriptor, streams)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    return loop_server, health_servicer


def identify(context: grpc.ServicerContext, auth: Authenticator) -> Identity:
    """The caller of the RPC in ``context``: what gRPC knows of it, handed to ``auth``."""
    peer = context.peer()
    common_name = bearer = None
    if peer.startswith(("ipv4:", "ipv6:")):
        names = context.auth_context().get("x509_common_name") or []
        common_name = names[0].decode("utf-8", "replace") if names else None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                bearer = value[len("Bearer "):].strip()
    return auth.identify(peer, common_name, bearer)
