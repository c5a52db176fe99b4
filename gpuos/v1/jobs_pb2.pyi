import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gpuos.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    PENDING: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    PAUSED: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    LOW: _ClassVar[Priority]
    NORMAL: _ClassVar[Priority]
    HIGH: _ClassVar[Priority]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    PROCESS: _ClassVar[JobKind]
    KERNEL: _ClassVar[JobKind]
    EXTERNAL: _ClassVar[JobKind]
JOB_STATE_UNSPECIFIED: JobState
PENDING: JobState
RUNNING: JobState
PAUSED: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
PRIORITY_UNSPECIFIED: Priority
LOW: Priority
NORMAL: Priority
HIGH: Priority
JOB_KIND_UNSPECIFIED: JobKind
PROCESS: JobKind
KERNEL: JobKind
EXTERNAL: JobKind

class JobSpec(_message.Message):
    __slots__ = ("name", "kind", "command", "kernel", "params", "resources", "priority", "tenant", "qos", "env", "cwd", "estimated_seconds", "group", "dedupe_key", "slo_p99_seconds")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    SLO_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: JobKind
    command: _containers.RepeatedScalarFieldContainer[str]
    kernel: str
    params: _containers.ScalarMap[str, str]
    resources: _common_pb2.Resources
    priority: Priority
    tenant: str
    qos: str
    env: _containers.ScalarMap[str, str]
    cwd: str
    estimated_seconds: float
    group: str
    dedupe_key: str
    slo_p99_seconds: float
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., command: _Optional[_Iterable[str]] = ..., kernel: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., priority: _Optional[_Union[Priority, str]] = ..., tenant: _Optional[str] = ..., qos: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., estimated_seconds: _Optional[float] = ..., group: _Optional[str] = ..., dedupe_key: _Optional[str] = ..., slo_p99_seconds: _Optional[float] = ...) -> None: ...

class GroupOptions(_message.Message):
    __slots__ = ("mode", "budget_gpu_seconds")
    MODE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    budget_gpu_seconds: float
    def __init__(self, mode: _Optional[str] = ..., budget_gpu_seconds: _Optional[float] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("devices", "device_uuids", "partition", "granted", "mig_device_uuid")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUIDS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    MIG_DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[int]
    device_uuids: _containers.RepeatedScalarFieldContainer[str]
    partition: str
    granted: _common_pb2.Resources
    mig_device_uuid: str
    def __init__(self, devices: _Optional[_Iterable[int]] = ..., device_uuids: _Optional[_Iterable[str]] = ..., partition: _Optional[str] = ..., granted: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., mig_device_uuid: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "name", "state", "reason", "message", "exit_code", "tenant", "owner_uid", "spec", "placement", "created_at", "started_at", "finished_at", "attained_service", "progress", "waiting", "colocation")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    OWNER_UID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTAINED_SERVICE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    COLOCATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: JobState
    reason: str
    message: str
    exit_code: int
    tenant: str
    owner_uid: int
    spec: JobSpec
    placement: Placement
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    attained_service: float
    progress: KernelProgress
    waiting: WaitReason
    colocation: Colocation
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., exit_code: _Optional[int] = ..., tenant: _Optional[str] = ..., owner_uid: _Optional[int] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attained_service: _Optional[float] = ..., progress: _Optional[_Union[KernelProgress, _Mapping]] = ..., waiting: _Optional[_Union[WaitReason, _Mapping]] = ..., colocation: _Optional[_Union[Colocation, _Mapping]] = ...) -> None: ...

class Colocation(_message.Message):
    __slots__ = ("slo_p99_seconds", "p99_seconds", "attainment", "samples", "neighbour_share", "right_share", "share", "reason", "suspended")
    SLO_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTAINMENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOUR_SHARE_FIELD_NUMBER: _ClassVar[int]
    RIGHT_SHARE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    slo_p99_seconds: float
    p99_seconds: float
    attainment: float
    samples: int
    neighbour_share: float
    right_share: float
    share: float
    reason: str
    suspended: bool
    def __init__(self, slo_p99_seconds: _Optional[float] = ..., p99_seconds: _Optional[float] = ..., attainment: _Optional[float] = ..., samples: _Optional[int] = ..., neighbour_share: _Optional[float] = ..., right_share: _Optional[float] = ..., share: _Optional[float] = ..., reason: _Optional[str] = ..., suspended: _Optional[bool] = ...) -> None: ...

class WaitReason(_message.Message):
    __slots__ = ("kind", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class KernelProgress(_message.Message):
    __slots__ = ("steps_done", "steps_total", "last_latency_ms", "mean_latency_ms", "p50_latency_ms", "p99_latency_ms", "summary")
    class SummaryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P99_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    steps_done: int
    steps_total: int
    last_latency_ms: float
    mean_latency_ms: float
    p50_latency_ms: float
    p99_latency_ms: float
    summary: _containers.ScalarMap[str, float]
    def __init__(self, steps_done: _Optional[int] = ..., steps_total: _Optional[int] = ..., last_latency_ms: _Optional[float] = ..., mean_latency_ms: _Optional[float] = ..., p50_latency_ms: _Optional[float] = ..., p99_latency_ms: _Optional[float] = ..., summary: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("spec", "idempotency_key", "group_options")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    GROUP_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    idempotency_key: str
    group_options: GroupOptions
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., group_options: _Optional[_Union[GroupOptions, _Mapping]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("job", "duplicate")
    JOB_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    job: Job
    duplicate: bool
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[SubmitRequest]
    def __init__(self, jobs: _Optional[_Iterable[_Union[SubmitRequest, _Mapping]]] = ...) -> None: ...

class SubmitBatchResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[SubmitResponse]
    def __init__(self, jobs: _Optional[_Iterable[_Union[SubmitResponse, _Mapping]]] = ...) -> None: ...

class SetPriorityRequest(_message.Message):
    __slots__ = ("id", "priority")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    priority: Priority
    def __init__(self, id: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class StopJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("name", "tenant", "mode", "budget_gpu_seconds", "spent_gpu_seconds", "state", "reason", "created_at", "ended_at", "succeeded", "members")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPENT_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    mode: str
    budget_gpu_seconds: float
    spent_gpu_seconds: float
    state: str
    reason: str
    created_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    succeeded: int
    members: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ..., mode: _Optional[str] = ..., budget_gpu_seconds: _Optional[float] = ..., spent_gpu_seconds: _Optional[float] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., succeeded: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class GetGroupRequest(_message.Message):
    __slots__ = ("name", "tenant")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class ListGroupsRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class ListGroupsResponse(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[Group]
    def __init__(self, groups: _Optional[_Iterable[_Union[Group, _Mapping]]] = ...) -> None: ...

class CancelGroupRequest(_message.Message):
    __slots__ = ("name", "tenant")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant: str
    def __init__(self, name: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "tenant", "limit", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    tenant: str
    limit: int
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., tenant: _Optional[str] = ..., limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "since_seq", "follow", "group")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    since_seq: int
    follow: bool
    group: str
    def __init__(self, job_id: _Optional[str] = ..., since_seq: _Optional[int] = ..., follow: _Optional[bool] = ..., group: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "job_id", "kind", "state", "reason", "message", "tenant", "group")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    job_id: str
    kind: str
    state: JobState
    reason: str
    message: str
    tenant: str
    group: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., tenant: _Optional[str] = ..., group: _Optional[str] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("job_id", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("stream", "data")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stream: str
    data: bytes
    def __init__(self, stream: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...
