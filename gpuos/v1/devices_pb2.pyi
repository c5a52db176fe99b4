from gpuos.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReserveRequest(_message.Message):
    __slots__ = ("name", "gpu_uuids", "resources", "keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    resources: _common_pb2.Resources
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class HostMount(_message.Message):
    __slots__ = ("host_path", "container_path", "read_only")
    HOST_PATH_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PATH_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    host_path: str
    container_path: str
    read_only: bool
    def __init__(self, host_path: _Optional[str] = ..., container_path: _Optional[str] = ..., read_only: _Optional[bool] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("job_id", "env", "mounts", "mig_instance")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    MIG_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    env: _containers.ScalarMap[str, str]
    mounts: _containers.RepeatedCompositeFieldContainer[HostMount]
    mig_instance: MigInstanceInfo
    def __init__(self, job_id: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., mounts: _Optional[_Iterable[_Union[HostMount, _Mapping]]] = ..., mig_instance: _Optional[_Union[MigInstanceInfo, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class ListReservationsRequest(_message.Message):
    __slots__ = ("name_prefix",)
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    name_prefix: str
    def __init__(self, name_prefix: _Optional[str] = ...) -> None: ...

class ReservationInfo(_message.Message):
    __slots__ = ("job_id", "name", "keys", "gpu_uuids", "resources")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    resources: _common_pb2.Resources
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ...) -> None: ...

class ListReservationsReply(_message.Message):
    __slots__ = ("reservations",)
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[ReservationInfo]
    def __init__(self, reservations: _Optional[_Iterable[_Union[ReservationInfo, _Mapping]]] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("resources", "gpu_uuids")
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    resources: _common_pb2.Resources
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., gpu_uuids: _Optional[_Iterable[str]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("gpu_uuids",)
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gpu_uuids: _Optional[_Iterable[str]] = ...) -> None: ...

class InjectFaultRequest(_message.Message):
    __slots__ = ("index", "kind")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[InjectFaultRequest.Kind]
        GPU_FAILURE: _ClassVar[InjectFaultRequest.Kind]
        GPU_RECOVERY: _ClassVar[InjectFaultRequest.Kind]
        MPS_DAEMON_CRASH: _ClassVar[InjectFaultRequest.Kind]
    KIND_UNSPECIFIED: InjectFaultRequest.Kind
    GPU_FAILURE: InjectFaultRequest.Kind
    GPU_RECOVERY: InjectFaultRequest.Kind
    MPS_DAEMON_CRASH: InjectFaultRequest.Kind
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    index: int
    kind: InjectFaultRequest.Kind
    def __init__(self, index: _Optional[int] = ..., kind: _Optional[_Union[InjectFaultRequest.Kind, str]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("index", "undrain", "requeue")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    REQUEUE_FIELD_NUMBER: _ClassVar[int]
    index: int
    undrain: bool
    requeue: bool
    def __init__(self, index: _Optional[int] = ..., undrain: _Optional[bool] = ..., requeue: _Optional[bool] = ...) -> None: ...

class DrainReply(_message.Message):
    __slots__ = ("device", "message", "migrating", "requeued", "staying")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MIGRATING_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    STAYING_FIELD_NUMBER: _ClassVar[int]
    device: Device
    message: str
    migrating: _containers.RepeatedScalarFieldContainer[str]
    requeued: _containers.RepeatedScalarFieldContainer[str]
    staying: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., message: _Optional[str] = ..., migrating: _Optional[_Iterable[str]] = ..., requeued: _Optional[_Iterable[str]] = ..., staying: _Optional[_Iterable[str]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MigInstanceInfo(_message.Message):
    __slots__ = ("profile", "start", "uuid", "gpu_instance_id", "compute_instance_id")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    GPU_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    profile: str
    start: int
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    def __init__(self, profile: _Optional[str] = ..., start: _Optional[int] = ..., uuid: _Optional[str] = ..., gpu_instance_id: _Optional[int] = ..., compute_instance_id: _Optional[int] = ...) -> None: ...

class MigProfileInfo(_message.Message):
    __slots__ = ("name", "slices", "memory_bytes", "max_count", "memory_slices", "placements")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SLICES_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    slices: int
    memory_bytes: int
    max_count: int
    memory_slices: int
    placements: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., slices: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., max_count: _Optional[int] = ..., memory_slices: _Optional[int] = ..., placements: _Optional[_Iterable[int]] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("job_id", "tenant", "partition", "compute_milli", "memory_limit", "memory_used", "paused")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MILLI_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tenant: str
    partition: str
    compute_milli: int
    memory_limit: int
    memory_used: int
    paused: bool
    def __init__(self, job_id: _Optional[str] = ..., tenant: _Optional[str] = ..., partition: _Optional[str] = ..., compute_milli: _Optional[int] = ..., memory_limit: _Optional[int] = ..., memory_used: _Optional[int] = ..., paused: _Optional[bool] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("index", "uuid", "model", "memory_total", "memory_used", "sm_count", "utilization_pct", "healthy", "mig_profiles", "partitioning", "allocations", "backend", "mig_instances", "mps_daemon_running", "suspend_supported", "suspend_detail", "suspend_cross_gpu", "draining", "numa_node", "minor_number")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    SM_COUNT_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PCT_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    MIG_PROFILES_FIELD_NUMBER: _ClassVar[int]
    PARTITIONING_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MIG_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MPS_DAEMON_RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_DETAIL_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_CROSS_GPU_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    MINOR_NUMBER_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    model: str
    memory_total: int
    memory_used: int
    sm_count: int
    utilization_pct: float
    healthy: bool
    mig_profiles: _containers.RepeatedCompositeFieldContainer[MigProfileInfo]
    partitioning: str
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    backend: str
    mig_instances: _containers.RepeatedCompositeFieldContainer[MigInstanceInfo]
    mps_daemon_running: bool
    suspend_supported: bool
    suspend_detail: str
    suspend_cross_gpu: bool
    draining: bool
    numa_node: int
    minor_number: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., model: _Optional[str] = ..., memory_total: _Optional[int] = ..., memory_used: _Optional[int] = ..., sm_count: _Optional[int] = ..., utilization_pct: _Optional[float] = ..., healthy: _Optional[bool] = ..., mig_profiles: _Optional[_Iterable[_Union[MigProfileInfo, _Mapping]]] = ..., partitioning: _Optional[str] = ..., allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., backend: _Optional[str] = ..., mig_instances: _Optional[_Iterable[_Union[MigInstanceInfo, _Mapping]]] = ..., mps_daemon_running: _Optional[bool] = ..., suspend_supported: _Optional[bool] = ..., suspend_detail: _Optional[str] = ..., suspend_cross_gpu: _Optional[bool] = ..., draining: _Optional[bool] = ..., numa_node: _Optional[int] = ..., minor_number: _Optional[int] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "backend")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    backend: str
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., backend: _Optional[str] = ...) -> None: ...
