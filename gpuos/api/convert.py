"""Protobuf <-> domain types, converted once at the edge; every field checked on the way in."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from gpuos.dedupe import check_key
from gpuos.errors import InvalidArgument
from gpuos.groups import Group, GroupSpec, check_budget, check_name, parse_mode
from gpuos.jobs import (
    EXECUTOR,
    TIMESLICE,
    Event,
    Job,
    JobKind,
    JobSpec,
    JobState,
    KernelProgress,
    Priority,
    Qos,
    Resources,
)
from gpuos.kernels.registry import get_kernel
from gpuos.partitions.slo import ColocationStatus
from gpuos.scheduler.explain import WaitReason
from gpuos.scheduler.snapshot import MILLI
from gpuos.text import escape, quote, require_printable
from gpuos.v1 import common_pb2, jobs_pb2

MAX_NAME = 128
MAX_TENANT = 64
MAX_KERNEL = 64
MAX_ARGS = 4096
MAX_COMMAND_BYTES = 1 << 20
MAX_ENV = 4096
MAX_ENV_KEY = 128
MAX_PARAMS = 64
MAX_GPU_TYPES = 16
MAX_GPUS = 64
# Linux refuses (E2BIG) any one argument or KEY=VALUE string longer than MAX_ARG_STRLEN,
# 32 pages of 4 KiB, counting its NUL.
MAX_EXEC_STRING = 32 * 4096
# Room left under ARG_MAX for what gpuosd adds to a job's environment (CUDA_VISIBLE_DEVICES,
# the MPS pipe and limits, GPUOS_* with the job's name and paths) and for the supervisor's own
# arguments, which precede the command on its exec.
EXEC_HEADROOM = 16 * 1024
# Where sysconf cannot say; also the most gpuos keeps per job even where the stack rlimit
# (and with it ARG_MAX) is larger: a gRPC request is at most 4 MiB anyway.
DEFAULT_ARG_MAX = 2 * 1024 * 1024
MAX_ARG_MAX = 4 * 1024 * 1024
# No GPU has a petabyte; a value this large is a typo or garbage, not a request.
ABSURD_MEMORY = 1 << 50
# A request's latency target beyond a day is a unit mistake, not a service level.
MAX_SLO_SECONDS = 86400.0
SHARING_MODES = ("", "mps", TIMESLICE, EXECUTOR)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+=-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIG = re.compile(r"^[1-7]g\.[0-9]+gb(\+[a-z]+)?$")

PRIORITY_FROM_PB = {
    jobs_pb2.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    jobs_pb2.LOW: Priority.LOW,
    jobs_pb2.NORMAL: Priority.NORMAL,
    jobs_pb2.HIGH: Priority.HIGH,
}
_PRIORITY_OUT = {Priority.LOW: jobs_pb2.LOW, Priority.NORMAL: jobs_pb2.NORMAL, Priority.HIGH: jobs_pb2.HIGH}
_KIND_OUT = {JobKind.PROCESS: jobs_pb2.PROCESS, JobKind.KERNEL: jobs_pb2.KERNEL, JobKind.EXTERNAL: jobs_pb2.EXTERNAL}
STATE_TO_PB = {s: jobs_pb2.JobState.Value(s.value) for s in JobState}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def _text(value: str, field: str, limit: int = 4096) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"is {len(value)} characters long; the limit is {limit}")
    if "\x00" in value:
        raise InvalidArgument(field, "contains a NUL character")
    return value


def _label(value: str, field: str, limit: int) -> str:
    """A short text that tables show (a name, a tenant, a GPU type): bounded and printable."""
    return require_printable(_text(value, field, limit), field)


def _default_name(command: tuple[str, ...], kernel: str) -> str:
    # A program's path may hold any byte but NUL; the name derived from it is shown in tables.
    base = os.path.basename(command[0]) if command else kernel
    return escape(base)[:MAX_NAME] or "job"


def arg_max() -> int:
    """The OS's limit on an exec's arguments plus environment, in bytes."""
    try:
        limit = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        limit = -1
    return min(limit, MAX_ARG_MAX) if limit > 0 else DEFAULT_ARG_MAX


def _exec_size(strings: list[str]) -> int:
    # What execve copies: each string's bytes and its NUL, plus one pointer per string.
    return sum(len(s.encode("utf-8", "surrogateescape")) + 1 + 8 for s in strings)


def check_exec_size(command: tuple[str, ...], env: list[tuple[str, str]]) -> None:
    """Refuse a command and environment that exec would refuse (E2BIG) once gpuosd adds its own."""
    for i, arg in enumerate(command):
        if len(arg.encode("utf-8", "surrogateescape")) + 1 > MAX_EXEC_STRING:
            raise InvalidArgument(f"command[{i}]", f"is longer than one argument may be ({MAX_EXEC_STRING - 1} bytes)")
    for key, value in env:
        if len(key.encode()) + 1 + len(value.encode("utf-8", "surrogateescape")) + 1 > MAX_EXEC_STRING:
            raise InvalidArgument(
                f"env.{key}", f"KEY=VALUE is longer than one variable may be ({MAX_EXEC_STRING - 1} bytes)"
            )
    limit = arg_max() - EXEC_HEADROOM
    total = _exec_size(list(command)) + _exec_size([f"{k}={v}" for k, v in env])
    if total > limit:
        raise InvalidArgument(
            "env" if _exec_size([f"{k}={v}" for k, v in env]) > limit // 2 else "command",
            f"command and environment take {total} bytes; the limit is {limit} (ARG_MAX {arg_max()} less "
            f"{EXEC_HEADROOM} for what gpuosd adds); pass large data in a file instead",
        )


def resources_from_pb(r: common_pb2.Resources) -> Resources:
    if r.HasField("gpus") and r.HasField("gpu_fraction"):
        raise InvalidArgument("resources", "set gpus or gpu_fraction, not both")
    mig = _text(r.mig_profile.strip(), "resources.mig_profile", 32)
    if mig and not _MIG.match(mig):
        raise InvalidArgument("resources.mig_profile", f"{quote(mig)} is not a MIG profile name such as 1g.10gb or 3g.40gb")
    gpus = 1
    milli = 0
    if r.HasField("gpus"):
        if r.gpus == 0:
            raise InvalidArgument("resources.gpus", "must be at least 1 (use gpu_fraction for a share of one GPU)")
        if r.gpus > MAX_GPUS:
            raise InvalidArgument("resources.gpus", f"{r.gpus} is more GPUs than any machine has (limit {MAX_GPUS})")
        gpus = r.gpus
    if r.HasField("gpu_fraction"):
        fraction = r.gpu_fraction
        if not math.isfinite(fraction) or not 0.0 < fraction <= 1.0:
            raise InvalidArgument("resources.gpu_fraction", f"{fraction} is outside (0, 1]")
        milli = round(fraction * MILLI)
        if milli == 0:
            raise InvalidArgument("resources.gpu_fraction", f"{fraction} is below the smallest share, 0.001")
        if milli == MILLI:
            milli = 0  # a fraction of 1 is a whole GPU
    if mig and (r.HasField("gpu_fraction") or (r.HasField("gpus") and r.gpus != 1)):
        raise InvalidArgument("resources.mig_profile", "a MIG job takes one slice; do not also set gpus or gpu_fraction")
    memory = 0
    if r.HasField("memory_bytes"):
        if r.memory_bytes == 0:
            raise InvalidArgument("resources.memory_bytes", "must be positive (leave it unset for the default)")
        if r.memory_bytes >= ABSURD_MEMORY:
            raise InvalidArgument("resources.memory_bytes", f"{r.memory_bytes} bytes is absurd for one GPU")
        memory = r.memory_bytes
    if len(r.gpu_types) > MAX_GPU_TYPES:
        raise InvalidArgument("resources.gpu_types", f"names {len(r.gpu_types)} GPU types; the limit is {MAX_GPU_TYPES}")
    types = tuple(_label(t, "resources.gpu_types", 64) for t in r.gpu_types)
    if any(not t for t in types):
        raise InvalidArgument("resources.gpu_types", "contains an empty name")
    sharing = r.sharing.strip().lower()
    if sharing not in SHARING_MODES:
        raise InvalidArgument("resources.sharing", f"{quote(r.sharing)} is not one of mps, timeslice, executor (or empty)")
    if sharing == "mps" and not milli:
        raise InvalidArgument("resources.sharing", "mps shares a GPU by fraction; also set a gpu_fraction below 1")
    # "mps" stays: it pins the mode, where an empty one lets the policy choose (Policy.share).
    if sharing and mig:
        raise InvalidArgument("resources.sharing", "a MIG slice is not shared; leave sharing empty")
    if sharing == TIMESLICE and gpus != 1:
        raise InvalidArgument("resources.gpus", "a time-shared job takes turns on one GPU; ask for 1")
    if sharing == EXECUTOR and gpus != 1:
        raise InvalidArgument("resources.gpus", "an executor job runs in one GPU's kernel executor; ask for 1")
    return Resources(gpus=gpus, gpu_milli=milli, memory_bytes=memory, mig_profile=mig, gpu_types=types,
                     sharing=sharing)


def spec_from_pb(spec: jobs_pb2.JobSpec, tenant: str) -> JobSpec:
    """Validate a submitted spec. ``tenant`` is the one the caller is allowed to act as."""
    name = _label(spec.name.strip(), "name", MAX_NAME)
    if name and not _NAME.match(name):
        raise InvalidArgument("name", f"{quote(name)} may hold only letters, digits and . _ @ : + = -")
    command = tuple(spec.command)
    kernel = _label(spec.kernel.strip(), "kernel", MAX_KERNEL)
    kind = spec.kind
    if kind == jobs_pb2.EXTERNAL:
        raise InvalidArgument("kind", "external jobs are made with DeviceService.Reserve, not submitted")
    if kind not in (jobs_pb2.JOB_KIND_UNSPECIFIED, jobs_pb2.PROCESS, jobs_pb2.KERNEL):
        raise InvalidArgument("kind", f"unknown job kind {kind}")
    if kind == jobs_pb2.JOB_KIND_UNSPECIFIED:
        kind = jobs_pb2.KERNEL if kernel and not command else jobs_pb2.PROCESS
    if len(spec.params) > MAX_PARAMS:
        raise InvalidArgument("params", f"has {len(spec.params)} parameters; the limit is {MAX_PARAMS}")
    params = tuple(sorted((_label(k, "params", 64), _label(v, f"params.{k}", 1024)) for k, v in spec.params.items()))
    if kind == jobs_pb2.PROCESS:
        if kernel or params:
            raise InvalidArgument("kernel", "a process job takes a command, not a kernel or params")
        if not command or not command[0].strip():
            raise InvalidArgument("command", "is empty; give the program to run and its arguments")
        if len(command) > MAX_ARGS:
            raise InvalidArgument("command", f"has {len(command)} arguments; the limit is {MAX_ARGS}")
        if sum(len(a) for a in command) > MAX_COMMAND_BYTES:
            raise InvalidArgument("command", "is longer than 1 MiB")
        for i, arg in enumerate(command):
            _text(arg, f"command[{i}]", MAX_COMMAND_BYTES)
        job_kind = JobKind.PROCESS
    else:
        if command:
            raise InvalidArgument("command", "a kernel job takes a kernel and params, not a command")
        if not kernel:
            raise InvalidArgument("kernel", "is empty; name a built-in kernel")
        get_kernel(kernel).validate(dict(params))
        job_kind = JobKind.KERNEL
    if spec.priority not in PRIORITY_FROM_PB:
        raise InvalidArgument("priority", f"unknown priority {spec.priority}; use LOW, NORMAL or HIGH")
    qos = Qos.parse(spec.qos)
    if len(spec.env) > MAX_ENV:
        raise InvalidArgument("env", f"has {len(spec.env)} variables; the limit is {MAX_ENV}")
    env = []
    for key, value in sorted(spec.env.items()):
        if len(key) > MAX_ENV_KEY:
            raise InvalidArgument("env", f"a variable name is {len(key)} characters long; the limit is {MAX_ENV_KEY}")
        if not _ENV_KEY.match(key):
            raise InvalidArgument("env", f"{quote(key)} is not a valid environment variable name")
        env.append((key, _text(value, f"env.{key}", 1 << 17)))
    check_exec_size(command, env)
    cwd = _text(spec.cwd, "cwd")
    if cwd and not os.path.isabs(cwd):
        raise InvalidArgument("cwd", f"{quote(cwd)} is not an absolute path")
    estimate = spec.estimated_seconds
    if not math.isfinite(estimate) or estimate < 0:
        raise InvalidArgument("estimated_seconds", f"{estimate} is not a non-negative number of seconds")
    group = check_name(spec.group.strip()) if spec.group.strip() else ""
    slo = check_slo(spec.slo_p99_seconds, qos)
    resources = resources_from_pb(spec.resources)
    if resources.executor and job_kind != JobKind.KERNEL:
        # The executor runs built-in kernels in its own process; a program of the user's cannot join it.
        raise InvalidArgument("resources.sharing", "executor runs kernel jobs only; a process job shares by "
                              "mps or timeslice")
    return JobSpec(
        name=name or _default_name(command, kernel),
        kind=job_kind,
        resources=resources,
        command=command,
        kernel=kernel,
        params=params,
        priority=PRIORITY_FROM_PB[spec.priority],
        tenant=tenant,
        qos=qos,
        env=tuple(env),
        cwd=cwd,
        estimated_seconds=estimate,
        group=group,
        dedupe_key=check_key(spec.dedupe_key) if spec.dedupe_key else "",
        slo_p99_seconds=slo,
    )


def check_slo(seconds: float, qos: Qos) -> float:
    """A submitted p99 latency target: 0 (none), or a positive number of seconds up to a day
    for a latency-class job; the best-effort jobs are what gets throttled to hold one."""
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument("slo_p99_seconds", f"{seconds} is not a non-negative number of seconds")
    if seconds > MAX_SLO_SECONDS:
        raise InvalidArgument("slo_p99_seconds", f"{seconds:g} s is absurd for a request's latency (at most a day)")
    if seconds and not qos.latency_sensitive:
        raise InvalidArgument("slo_p99_seconds", "only a latency-sensitive job (qos LS) may declare an SLO")
    return seconds


def group_options_from_pb(request: jobs_pb2.SubmitRequest) -> GroupSpec | None:
    """The mode and budget a submit asks its group to have; None when it names none (the
    defaults for a new group, and no check against an existing one)."""
    options = request.group_options
    if not options.mode.strip() and not options.budget_gpu_seconds:
        return None
    if not request.spec.group.strip():
        raise InvalidArgument("group_options", "give a group's mode or budget only with spec.group")
    try:
        mode, best_of = parse_mode(options.mode)
    except InvalidArgument as exc:
        raise InvalidArgument("group_options.mode", exc.problem) from None
    try:
        budget = check_budget(options.budget_gpu_seconds)
    except InvalidArgument as exc:
        raise InvalidArgument("group_options.budget_gpu_seconds", exc.problem) from None
    return GroupSpec(check_name(request.spec.group.strip()), mode, best_of, budget)


def group_to_pb(group: Group, running_service: float = 0.0,
                members: Sequence[jobs_pb2.Job] = ()) -> jobs_pb2.Group:
    """``group`` as the API shows it; ``running_service`` is its running members' GPU-seconds."""
    out = jobs_pb2.Group(
        name=group.name, tenant=group.tenant, mode=group.spec.mode_text, budget_gpu_seconds=group.spec.budget,
        spent_gpu_seconds=group.spent + running_service, state="open" if group.open else "ended",
        reason=group.ended_reason, succeeded=group.succeeded, members=list(members),
    )
    for name in ("created_at", "ended_at"):
        ts = _timestamp(getattr(group, name))
        if ts is not None:
            getattr(out, name).CopyFrom(ts)
    return out


def _timestamp(t: float | None) -> Timestamp | None:
    if t is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def resources_to_pb(r: Resources) -> common_pb2.Resources:
    out = common_pb2.Resources(mig_profile=r.mig_profile, gpu_types=list(r.gpu_types), sharing=r.sharing)
    if r.gpu_milli:
        out.gpu_fraction = r.gpu_milli / MILLI
    else:
        out.gpus = r.gpus
    if r.memory_bytes:
        out.memory_bytes = r.memory_bytes
    return out


def job_to_pb(job: Job, progress: KernelProgress | None = None, waiting: WaitReason | None = None,
              colocation: ColocationStatus | None = None) -> jobs_pb2.Job:
    """``job`` as the API shows it; ``progress`` is a kernel worker's report (see gpuos.kernels.worker),
    ``waiting`` why the scheduler's latest round left it pending (shown only while it is pending),
    ``colocation`` what SLO-driven colocation measures and does for it (gpuos/daemon/colocation.py)."""
    spec = job.spec
    out = jobs_pb2.Job(
        id=job.id,
        name=spec.name,
        state=STATE_TO_PB[job.state],
        reason=job.reason,
        message=job.message,
        tenant=spec.tenant,
        owner_uid=max(job.owner_uid, 0),
        attained_service=job.attained_service,
        spec=jobs_pb2.JobSpec(
            name=spec.name,
            kind=_KIND_OUT[spec.kind],
            command=list(spec.command),
            kernel=spec.kernel,
            params=_shown_params(spec),
            resources=resources_to_pb(spec.resources),
            priority=_PRIORITY_OUT[spec.priority],
            tenant=spec.tenant,
            qos=spec.qos.value,
            cwd=spec.cwd,
            estimated_seconds=spec.estimated_seconds,
            group=spec.group,
            dedupe_key=spec.dedupe_key,
            slo_p99_seconds=spec.slo_p99_seconds,
        ),
    )
    if job.exit_code is not None:
        out.exit_code = job.exit_code
    if job.placement is not None:
        out.placement.CopyFrom(
            jobs_pb2.Placement(
                devices=list(job.placement.devices),
                device_uuids=list(job.placement.device_uuids),
                partition=str(job.placement.partition),
                granted=resources_to_pb(job.placement.granted),
                mig_device_uuid=job.placement.mig_uuid,
            )
        )
    if progress is not None:
        out.progress.CopyFrom(progress_to_pb(progress))
    if waiting is not None and job.state == JobState.PENDING:
        out.waiting.CopyFrom(jobs_pb2.WaitReason(kind=waiting.kind.value, message=waiting.message))
    if colocation is not None:
        out.colocation.CopyFrom(colocation_to_pb(colocation))
    for name in ("created_at", "started_at", "finished_at"):
        ts = _timestamp(getattr(job, name))
        if ts is not None:
            getattr(out, name).CopyFrom(ts)
    return out


def colocation_to_pb(status: ColocationStatus) -> jobs_pb2.Colocation:
    out = jobs_pb2.Colocation(
        slo_p99_seconds=status.slo_p99_seconds, p99_seconds=status.p99_seconds, attainment=status.attainment,
        samples=status.samples, neighbour_share=status.neighbour_share, share=status.share, reason=status.reason,
        suspended=status.suspended,
    )
    if status.right_share is not None:
        out.right_share = status.right_share
    return out


def _shown_params(spec: JobSpec) -> dict[str, str]:
    params = dict(spec.params)
    if spec.reservation_keys:
        # Reservations have always shown their keys as this one param; clients may read it.
        params["keys"] = ",".join(spec.reservation_keys)
    return params


def progress_to_pb(progress: KernelProgress) -> jobs_pb2.KernelProgress:
    return jobs_pb2.KernelProgress(
        steps_done=progress.steps_done,
        steps_total=progress.steps_total,
        last_latency_ms=progress.last_latency_ms,
        mean_latency_ms=progress.mean_latency_ms,
        p50_latency_ms=progress.p50_latency_ms,
        p99_latency_ms=progress.p99_latency_ms,
        summary=dict(progress.summary),
    )


def event_to_pb(event: Event) -> jobs_pb2.Event:
    out = jobs_pb2.Event(
        seq=event.seq,
        job_id=event.job_id,
        kind=event.kind,
        state=STATE_TO_PB[event.state] if event.state else jobs_pb2.JOB_STATE_UNSPECIFIED,
        reason=event.reason,
        message=event.message,
        tenant=event.tenant,
        group=event.group,
    )
    ts = _timestamp(event.time)
    assert ts is not None
    out.time.CopyFrom(ts)
    return out


def states_from_pb(states: list[int]) -> list[JobState]:
    out = []
    for s in states:
        if s not in STATE_FROM_PB:
            raise InvalidArgument("states", f"unknown job state {s}")
        out.append(STATE_FROM_PB[s])
    return out
