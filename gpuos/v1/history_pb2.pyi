import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gpuos.v1 import common_pb2 as _common_pb2
from gpuos.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportTraceRequest(_message.Message):
    __slots__ = ("since", "until", "tenant", "anonymize")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ANONYMIZE_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    tenant: str
    anonymize: bool
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ..., anonymize: _Optional[bool] = ...) -> None: ...

class HistoryGpu(_message.Message):
    __slots__ = ("model", "memory_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    memory_bytes: int
    def __init__(self, model: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class HistoryJob(_message.Message):
    __slots__ = ("id", "submitted_at", "run_seconds", "first_wait_seconds", "request", "priority", "qos", "tenant", "group", "dedupe_key", "estimated_seconds", "state", "reason", "preemptions")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    RUN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    submitted_at: _timestamp_pb2.Timestamp
    run_seconds: float
    first_wait_seconds: float
    request: _common_pb2.Resources
    priority: _jobs_pb2.Priority
    qos: str
    tenant: str
    group: str
    dedupe_key: str
    estimated_seconds: float
    state: _jobs_pb2.JobState
    reason: str
    preemptions: int
    def __init__(self, id: _Optional[str] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_seconds: _Optional[float] = ..., first_wait_seconds: _Optional[float] = ..., request: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., priority: _Optional[_Union[_jobs_pb2.Priority, str]] = ..., qos: _Optional[str] = ..., tenant: _Optional[str] = ..., group: _Optional[str] = ..., dedupe_key: _Optional[str] = ..., estimated_seconds: _Optional[float] = ..., state: _Optional[_Union[_jobs_pb2.JobState, str]] = ..., reason: _Optional[str] = ..., preemptions: _Optional[int] = ...) -> None: ...

class HistoryGroup(_message.Message):
    __slots__ = ("tenant", "name", "mode", "budget_gpu_seconds")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    name: str
    mode: str
    budget_gpu_seconds: float
    def __init__(self, tenant: _Optional[str] = ..., name: _Optional[str] = ..., mode: _Optional[str] = ..., budget_gpu_seconds: _Optional[float] = ...) -> None: ...

class HistoryChunk(_message.Message):
    __slots__ = ("gpus", "jobs", "groups", "anonymized", "never_ran")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ANONYMIZED_FIELD_NUMBER: _ClassVar[int]
    NEVER_RAN_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[HistoryGpu]
    jobs: _containers.RepeatedCompositeFieldContainer[HistoryJob]
    groups: _containers.RepeatedCompositeFieldContainer[HistoryGroup]
    anonymized: bool
    never_ran: int
    def __init__(self, gpus: _Optional[_Iterable[_Union[HistoryGpu, _Mapping]]] = ..., jobs: _Optional[_Iterable[_Union[HistoryJob, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[HistoryGroup, _Mapping]]] = ..., anonymized: _Optional[bool] = ..., never_ran: _Optional[int] = ...) -> None: ...
