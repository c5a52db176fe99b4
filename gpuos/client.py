"""``gpuos.Client``: the Python API to a running gpuosd, with the operations ``gpuosctl`` offers.

Methods return the protobuf messages of ``gpuos.v1`` (attributes read like plain objects) and
raise :class:`ApiError` with the daemon's status code and message when a call fails.
"""

from __future__ import annotations

import builtins
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc

from gpuos.units import parse_bytes, parse_duration
from gpuos.v1 import (
    common_pb2,
    devices_pb2,
    devices_pb2_grpc,
    history_pb2,
    history_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)

TERMINAL = (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED)
_PRIORITIES = {"low": jobs_pb2.LOW, "normal": jobs_pb2.NORMAL, "high": jobs_pb2.HIGH}


class ApiError(RuntimeError):
    """A call the daemon refused or could not answer."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


def default_target(socket_path: str | None = None, addr: str | None = None) -> str:
    if addr:
        return addr
    from gpuos.daemon.config import default_socket

    return "unix:" + (socket_path or default_socket())


def read_token(path: str) -> str:
    """The bearer token in ``path``: its first word (so a line of the daemon's token file works too)."""
    try:
        with open(path, encoding="utf-8") as f:
            words = f.read().split()
    except OSError as exc:
        raise ValueError(f"token file {path} cannot be read: {exc.strerror}") from None
    if not words:
        raise ValueError(f"token file {path} is empty")
    return words[0]


class Client:
    """A connection to gpuosd over its Unix socket (default) or a TCP address.

    Over TCP, ``tls_ca`` (with ``tls_cert`` and ``tls_key`` for mutual TLS) makes the channel
    TLS, and ``token`` is sent as ``authorization: Bearer TOKEN`` with every call.
    """

    def __init__(self, socket: str | None = None, addr: str | None = None, timeout: float = 30.0, *,
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 token: str | None = None) -> None:
        self.target = default_target(socket, addr)
        self.timeout = timeout
        # Per-call metadata, not call credentials: grpc refuses those on a plain channel, and a
        # token over loopback TCP without TLS is a supported setup.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        if tls_ca or tls_cert or tls_key:
            pem = {}
            for name, path in (("tls_ca", tls_ca), ("tls_cert", tls_cert), ("tls_key", tls_key)):
                if path:
                    try:
                        with open(path, "rb") as f:
                            pem[name] = f.read()
                    except OSError as exc:
                        raise ValueError(f"{name} {path} cannot be read: {exc.strerror}") from None
            credentials = grpc.ssl_channel_credentials(root_certificates=pem.get("tls_ca"),
                                                       private_key=pem.get("tls_key"),
                                                       certificate_chain=pem.get("tls_cert"))
            self._channel = grpc.secure_channel(self.target, credentials)
        else:
            self._channel = grpc.insecure_channel(self.target)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._devices = devices_pb2_grpc.DeviceServiceStub(self._channel)
        self._policies = policy_pb2_grpc.PolicyServiceStub(self._channel)
        self._history = history_pb2_grpc.HistoryServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None = None, retries: int = 0):  # type: ignore[no-untyped-def]
        for attempt in range(retries + 1):
            try:
                return method(request, timeout=timeout or self.timeout, wait_for_ready=attempt > 0,
                              metadata=self._metadata)
            except grpc.RpcError as exc:
                error = self._error(exc)
                if error.code == grpc.StatusCode.UNAVAILABLE and attempt < retries:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise error from None
        raise AssertionError("unreachable")

    def _error(self, exc: grpc.RpcError) -> ApiError:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or code.name  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE and "Permission denied" in details and self.target.startswith("unix:"):
            # The kernel refused the connection (the socket's mode): say whose gpuosd it is and why.
            return ApiError(grpc.StatusCode.PERMISSION_DENIED, socket_refusal(self.target[len("unix:"):]))
        return ApiError(code, details)

    def _stream(self, method, request, timeout: float | None = None) -> Iterator:  # type: ignore[no-untyped-def]
        try:
            yield from method(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.CANCELLED:
                return
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
                raise TimeoutError(exc.details()) from None  # type: ignore[attr-defined]
            raise self._error(exc) from None

    # -- jobs -----------------------------------------------------------------------------------

    def submit(self, command: Sequence[str] = (), **options: Any) -> jobs_pb2.Job:
        """Submit a process job (``command``) or a kernel job (``kernel`` and ``params``); the
        options are :meth:`submit_request`'s.

        Returns the job once the daemon has made it durable. Retries are safe: the request
        carries an idempotency key, so a retry after a lost reply cannot start the job twice.

        ``group`` makes the job a member of that group of the tenant's (created by the first
        submit that names it, with ``group_mode`` "all", "first-success" or "best-of:K" and a
        budget of ``group_budget`` GPU-seconds). With ``dedupe_key`` (see
        :func:`gpuos.dedupe.key_for`), a pending, running or recently succeeded job of the tenant
        with the same key is returned instead of a new one; :meth:`submit_reply` says which.
        ``slo_p99`` (with ``qos="LS"``): a target for the job's p99 request latency, in seconds
        or as "20ms"; the job reports each request with :func:`gpuos.report_latency`.
        """
        return self.submit_reply(command, **options).job

    def submit_reply(self, command: Sequence[str] = (), **options: Any) -> jobs_pb2.SubmitResponse:
        """:meth:`submit`'s whole reply: the job, and ``duplicate`` when a dedupe key matched."""
        return self._call(self._jobs.Submit, self.submit_request(command, **options), retries=3)

    @staticmethod
    def submit_request(
        command: Sequence[str] = (),
        *,
        kernel: str = "",
        params: Mapping[str, object] | None = None,
        name: str = "",
        gpus: int | None = None,
        gpu_fraction: float | None = None,
        memory: int | str | None = None,
        mig_profile: str = "",
        gpu_types: Sequence[str] = (),
        sharing: str = "",
        priority: str = "normal",
        tenant: str = "",
        qos: str = "",
        env: Mapping[str, str] | None = None,
        cwd: str = "",
        estimated_seconds: float = 0.0,
        idempotency_key: str | None = None,
        group: str = "",
        group_mode: str = "",
        group_budget: float = 0.0,
        dedupe_key: str = "",
        slo_p99: float | str = 0.0,
    ) -> jobs_pb2.SubmitRequest:
        """The SubmitRequest :meth:`submit` sends (for :meth:`submit_batch`); same arguments."""
        resources = common_pb2.Resources(mig_profile=mig_profile, gpu_types=list(gpu_types), sharing=sharing)
        if gpus is not None:
            resources.gpus = gpus
        if gpu_fraction is not None:
            resources.gpu_fraction = gpu_fraction
        if memory is not None:
            resources.memory_bytes = parse_bytes(memory) if isinstance(memory, str) else memory
        if priority.lower() not in _PRIORITIES:
            raise ValueError(f"priority {priority!r} is not one of high, normal, low")
        spec = jobs_pb2.JobSpec(
            name=name,
            command=list(command),
            kernel=kernel,
            params={k: str(v) for k, v in (params or {}).items()},
            resources=resources,
            priority=_PRIORITIES[priority.lower()],
            tenant=tenant,
            qos=qos,
            env=dict(env or {}),
            cwd=cwd,
            estimated_seconds=estimated_seconds,
            group=group,
            dedupe_key=dedupe_key,
            slo_p99_seconds=parse_duration(slo_p99, "slo_p99") if isinstance(slo_p99, str) else slo_p99,
        )
        options = jobs_pb2.GroupOptions(mode=group_mode, budget_gpu_seconds=group_budget)
        return jobs_pb2.SubmitRequest(spec=spec, idempotency_key=idempotency_key or uuid.uuid4().hex,
                                      group_options=options)

    def submit_batch(self, requests: Sequence[jobs_pb2.SubmitRequest]) -> builtins.list[jobs_pb2.SubmitResponse]:
        """Submit up to 10,000 jobs in one durable commit, all or none (a bad one refuses the
        batch, naming its index). One reply per request, in order: ``.job`` and ``.duplicate``."""
        reply = self._call(self._jobs.SubmitBatch, jobs_pb2.SubmitBatchRequest(jobs=list(requests)), retries=3)
        return builtins.list(reply.jobs)

    def submit_group(
        self, group: str, variants: Sequence[Mapping[str, object]], *, mode: str = "first-success",
        budget: float = 0.0,
    ) -> builtins.list[jobs_pb2.Job]:
        """Launch the ``variants`` of one piece of work as group ``group`` in one commit.

        Each variant is the keyword arguments of :meth:`submit` (``command=[...]``, ``gpus=1``...).
        In ``first-success`` mode the first member to succeed stops the others; ``best-of:K``
        stops them after K successes; ``all`` runs them all. ``budget`` bounds the GPU-seconds of
        the whole group (0: no bound).
        """
        requests = [
            self.submit_request(**{**variant, "group": group, "group_mode": mode, "group_budget": budget})  # type: ignore[arg-type]
            for variant in variants
        ]
        return [r.job for r in self.submit_batch(requests)]

    def set_priority(self, job_id: str, priority: str) -> jobs_pb2.Job:
        """Steer: give a pending or running job a new priority (high, normal, low)."""
        if priority.lower() not in _PRIORITIES:
            raise ValueError(f"priority {priority!r} is not one of high, normal, low")
        request = jobs_pb2.SetPriorityRequest(id=job_id, priority=_PRIORITIES[priority.lower()])
        return self._call(self._jobs.SetPriority, request)

    def stop(self, job_id: str) -> jobs_pb2.Job:
        """Steer: a running kernel job stops at its next step boundary, keeping its progress."""
        return self._call(self._jobs.Stop, jobs_pb2.StopJobRequest(id=job_id))

    def group(self, name: str, tenant: str = "") -> jobs_pb2.Group:
        """A group with its members."""
        return self._call(self._jobs.GetGroup, jobs_pb2.GetGroupRequest(name=name, tenant=tenant))

    def groups(self, tenant: str = "") -> builtins.list[jobs_pb2.Group]:
        """The tenant's groups (without members), oldest first."""
        return builtins.list(self._call(self._jobs.ListGroups, jobs_pb2.ListGroupsRequest(tenant=tenant)).groups)

    def cancel_group(self, name: str, tenant: str = "") -> jobs_pb2.Group:
        """End a group: its pending members are cancelled and its running ones stopped."""
        return self._call(self._jobs.CancelGroup, jobs_pb2.CancelGroupRequest(name=name, tenant=tenant))

    def group_events(self, name: str, follow: bool = False, since: int = 0) -> Iterator[jobs_pb2.Event]:
        """The events of a group's members, in order; with ``follow``, until the caller stops."""
        yield from self._stream(self._jobs.Watch, jobs_pb2.WatchRequest(group=name, since_seq=since, follow=follow))

    def wait_group(self, name: str, timeout: float | None = None) -> jobs_pb2.Group:
        """Block until every member of the group has ended; returns the group."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            group = self.group(name)
            if all(m.state in TERMINAL for m in group.members):
                return group
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"group {name} still has members running")
            time.sleep(0.1)

    def get(self, job_id: str) -> jobs_pb2.Job:
        return self._call(self._jobs.Get, jobs_pb2.GetJobRequest(id=job_id))

    def list(self, states: Sequence[str] = (), tenant: str = "", limit: int = 0) -> builtins.list[jobs_pb2.Job]:
        """Every job (or the newest ``limit``) in submission order, fetched page by page."""
        return builtins.list(self.iter_jobs(states, tenant, limit))

    def iter_jobs(
        self, states: Sequence[str] = (), tenant: str = "", limit: int = 0, page_size: int = 0
    ) -> Iterator[jobs_pb2.Job]:
        """Jobs in submission order, asking for the next page only when the last one is used up."""
        token = ""
        while True:
            reply = self.list_page(states, tenant, limit, page_size, token)
            yield from reply.jobs
            token = reply.next_page_token
            if not token:
                return

    def list_page(
        self, states: Sequence[str] = (), tenant: str = "", limit: int = 0, page_size: int = 0, page_token: str = ""
    ) -> jobs_pb2.ListJobsResponse:
        """One page of jobs; its ``next_page_token`` (empty on the last page) asks for the next."""
        request = jobs_pb2.ListJobsRequest(
            states=[jobs_pb2.JobState.Value(s.upper()) for s in states], tenant=tenant, limit=limit,
            page_size=page_size, page_token=page_token,
        )
        return self._call(self._jobs.List, request)

    def cancel(self, job_id: str) -> jobs_pb2.Job:
        return self._call(self._jobs.Cancel, jobs_pb2.CancelJobRequest(id=job_id))

    def logs(self, job_id: str, follow: bool = False) -> Iterator[tuple[str, bytes]]:
        """(stream, data) chunks of the job's stdout and stderr."""
        for chunk in self._stream(self._jobs.Logs, jobs_pb2.LogsRequest(job_id=job_id, follow=follow)):
            yield chunk.stream, chunk.data

    def events(self, follow: bool = False, job_id: str = "", since: int = 0) -> Iterator[jobs_pb2.Event]:
        request = jobs_pb2.WatchRequest(job_id=job_id, since_seq=since, follow=follow)
        yield from self._stream(self._jobs.Watch, request)

    def wait(self, job_id: str, timeout: float | None = None) -> jobs_pb2.Job:
        """Block until the job ends; returns it in its final state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        while job.state not in TERMINAL:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            request = jobs_pb2.WatchRequest(job_id=job.id, follow=True)
            try:
                for event in self._stream(self._jobs.Watch, request, remaining):
                    if event.state in TERMINAL:
                        break
            except TimeoutError:
                raise TimeoutError(f"job {job.id} is still {jobs_pb2.JobState.Name(job.state)}") from None
            job = self.get(job.id)
        return job

    # -- devices and policies -------------------------------------------------------------------

    def devices(self) -> devices_pb2.ListDevicesResponse:
        return self._call(self._devices.List, devices_pb2.ListDevicesRequest())

    FAULTS = {
        "gpu-fail": devices_pb2.InjectFaultRequest.GPU_FAILURE,
        "gpu-restore": devices_pb2.InjectFaultRequest.GPU_RECOVERY,
        "mps-crash": devices_pb2.InjectFaultRequest.MPS_DAEMON_CRASH,
    }

    def inject_fault(self, index: int, kind: str) -> devices_pb2.Device:
        """Admins: make a fault happen on GPU ``index`` (``gpu-fail``, ``gpu-restore``, ``mps-crash``)."""
        if kind not in self.FAULTS:
            raise ValueError(f"fault {kind!r} is not one of {', '.join(self.FAULTS)}")
        return self._call(self._devices.InjectFault, devices_pb2.InjectFaultRequest(index=index, kind=self.FAULTS[kind]))

    def drain(self, index: int, *, undrain: bool = False, requeue: bool = False) -> devices_pb2.DrainReply:
        """Admins: take GPU ``index`` out of service (``requeue``: restart elsewhere the jobs that
        cannot move), or put it back (``undrain``)."""
        return self._call(self._devices.Drain, devices_pb2.DrainRequest(index=index, undrain=undrain, requeue=requeue))

    def reserve(
        self, name: str, gpu_uuids: Sequence[str], resources: common_pb2.Resources, keys: Sequence[str] = ()
    ) -> devices_pb2.Reservation:
        """Admins: hold a partition for work gpuosd does not start (see DeviceService.Reserve)."""
        request = devices_pb2.ReserveRequest(name=name, gpu_uuids=list(gpu_uuids), resources=resources, keys=list(keys))
        return self._call(self._devices.Reserve, request)

    def release(self, keys: Sequence[str]) -> int:
        """Admins: end the reservations holding any of ``keys``; how many ended (0 for unknown keys)."""
        if isinstance(keys, str):
            raise ValueError("keys is a sequence of keys, not one string")
        return int(self._call(self._devices.Release, devices_pb2.ReleaseRequest(keys=list(keys))).released)

    def reservations(self, name_prefix: str = "") -> builtins.list[devices_pb2.ReservationInfo]:
        """Admins: the reservations held now whose name starts with ``name_prefix``, oldest first."""
        request = devices_pb2.ListReservationsRequest(name_prefix=name_prefix)
        return list(self._call(self._devices.ListReservations, request).reservations)

    def rank(self, resources: common_pb2.Resources, gpu_uuids: Sequence[str]) -> builtins.list[str]:
        """``gpu_uuids`` ordered by the active policy's score for ``resources``, best first."""
        reply = self._call(self._devices.Rank, devices_pb2.RankRequest(resources=resources, gpu_uuids=list(gpu_uuids)))
        return list(reply.gpu_uuids)

    def policies(self) -> builtins.list[policy_pb2.PolicyInfo]:
        return list(self._call(self._policies.List, policy_pb2.ListPoliciesRequest()).policies)

    def set_policy(self, name: str = "", *, source: str = "", filename: str = "", guard: str = "", window: str = "",
                   min_samples: int = 0) -> policy_pb2.PolicyInfo:
        """Make the policy ``name`` (or the policy file whose text is ``source``) active; with
        ``guard`` ("p99_queue_delay_ls<=30s", "slo_attainment>=0.95") gpuosd switches back by
        itself if the guard is breached over ``window`` (a duration)."""
        request = policy_pb2.SetPolicyRequest(name=name, source=source, filename=filename, guard=guard,
                                              window=window, min_samples=min_samples)
        return self._call(self._policies.Set, request)

    def policy_status(self) -> policy_pb2.PolicyStatus:
        """The active policy, its guard and latest reading, the recent switches, the shadow."""
        return self._call(self._policies.Status, policy_pb2.PolicyStatusRequest())

    def shadow(self, name: str = "", *, source: str = "", filename: str = "") -> policy_pb2.ShadowStatus:
        """Admins: shadow the policy ``name`` (or the policy file ``source``): its decisions are
        computed each round beside the active policy's and never applied."""
        ref = policy_pb2.PolicyRef(name=name, source=source, filename=filename)
        return self._call(self._policies.Shadow, policy_pb2.ShadowRequest(candidate=ref))

    def stop_shadow(self) -> policy_pb2.ShadowStatus:
        return self._call(self._policies.Shadow, policy_pb2.ShadowRequest(off=True))

    def shadow_report(self, examples: int = 10, simulate: bool = True) -> policy_pb2.ShadowReportResponse:
        """Admins: where the shadow's decisions differed (counts, the latest ``examples`` rounds)
        and, with ``simulate``, the window's jobs replayed under both policies."""
        request = policy_pb2.ShadowReportRequest(examples=examples, no_simulation=not simulate)
        return self._call(self._policies.ShadowReport, request)

    # -- history --------------------------------------------------------------------------------

    def export_trace(self, since: float | None = None, until: float | None = None, tenant: str = "",
                     anonymize: bool = False) -> Iterator[history_pb2.HistoryChunk]:
        """The daemon's finished jobs submitted in [``since``, ``until``) (Unix seconds; None:
        unbounded) as HistoryService chunks: the first carries the GPUs, the last the groups
        (``gpuosctl trace export`` writes them as a trace file)."""
        request = history_pb2.ExportTraceRequest(tenant=tenant, anonymize=anonymize)
        for field, value in (("since", since), ("until", until)):
            if value is not None:
                getattr(request, field).FromNanoseconds(int(value * 1e9))
        return self._stream(self._history.ExportTrace, request)


def socket_refusal(path: str) -> str:
    """Why connecting to gpuosd's socket at ``path`` was refused by its file mode, in words."""
    import pwd

    try:
        info = os.stat(path)
    except OSError:
        return f"cannot connect to {path}: permission denied"
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = f"uid{info.st_uid}"
    mode = f"{info.st_mode & 0o777:04o}"
    if info.st_uid != 0:
        return (f"the gpuosd at {path} runs as user {owner} without root, so it serves only {owner} (its socket "
                f"is owner-only, mode {mode}); {owner} may set allow_other_users = true, and jobs then run as {owner}")
    return f"the socket {path} (mode {mode}) is not open to uid {os.getuid()}; ask the host's admin"


def current_env() -> dict[str, str]:
    """The caller's environment, as a batch scheduler passes it on by default."""
    return dict(os.environ)
