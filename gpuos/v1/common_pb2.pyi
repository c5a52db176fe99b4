from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Resources(_message.Message):
    __slots__ = ("gpus", "gpu_fraction", "memory_bytes", "mig_profile", "gpu_types", "sharing")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIG_PROFILE_FIELD_NUMBER: _ClassVar[int]
    GPU_TYPES_FIELD_NUMBER: _ClassVar[int]
    SHARING_FIELD_NUMBER: _ClassVar[int]
    gpus: int
    gpu_fraction: float
    memory_bytes: int
    mig_profile: str
    gpu_types: _containers.RepeatedScalarFieldContainer[str]
    sharing: str
    def __init__(self, gpus: _Optional[int] = ..., gpu_fraction: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., mig_profile: _Optional[str] = ..., gpu_types: _Optional[_Iterable[str]] = ..., sharing: _Optional[str] = ...) -> None: ...
