from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PolicyInfo(_message.Message):
    __slots__ = ("name", "description", "active", "provenance", "verified_gain", "filename")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_GAIN_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    active: bool
    provenance: str
    verified_gain: str
    filename: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., active: _Optional[bool] = ..., provenance: _Optional[str] = ..., verified_gain: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[PolicyInfo]
    def __init__(self, policies: _Optional[_Iterable[_Union[PolicyInfo, _Mapping]]] = ...) -> None: ...

class PolicyRef(_message.Message):
    __slots__ = ("name", "source", "filename")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    filename: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("name", "source", "filename", "guard", "window", "min_samples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    filename: str
    guard: str
    window: str
    min_samples: int
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., filename: _Optional[str] = ..., guard: _Optional[str] = ..., window: _Optional[str] = ..., min_samples: _Optional[int] = ...) -> None: ...

class PolicyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GuardStatus(_message.Message):
    __slots__ = ("text", "metric", "op", "bound", "window_seconds", "min_samples", "previous", "since", "value", "samples", "judged", "read_at")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    READ_AT_FIELD_NUMBER: _ClassVar[int]
    text: str
    metric: str
    op: str
    bound: float
    window_seconds: float
    min_samples: int
    previous: str
    since: float
    value: float
    samples: int
    judged: bool
    read_at: float
    def __init__(self, text: _Optional[str] = ..., metric: _Optional[str] = ..., op: _Optional[str] = ..., bound: _Optional[float] = ..., window_seconds: _Optional[float] = ..., min_samples: _Optional[int] = ..., previous: _Optional[str] = ..., since: _Optional[float] = ..., value: _Optional[float] = ..., samples: _Optional[int] = ..., judged: _Optional[bool] = ..., read_at: _Optional[float] = ...) -> None: ...

class PolicySwitch(_message.Message):
    __slots__ = ("time", "from_policy", "to_policy", "kind", "reason")
    TIME_FIELD_NUMBER: _ClassVar[int]
    FROM_POLICY_FIELD_NUMBER: _ClassVar[int]
    TO_POLICY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    time: float
    from_policy: str
    to_policy: str
    kind: str
    reason: str
    def __init__(self, time: _Optional[float] = ..., from_policy: _Optional[str] = ..., to_policy: _Optional[str] = ..., kind: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("active", "guard", "switches", "rollbacks", "shadow")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    SWITCHES_FIELD_NUMBER: _ClassVar[int]
    ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    active: PolicyInfo
    guard: GuardStatus
    switches: _containers.RepeatedCompositeFieldContainer[PolicySwitch]
    rollbacks: int
    shadow: ShadowStatus
    def __init__(self, active: _Optional[_Union[PolicyInfo, _Mapping]] = ..., guard: _Optional[_Union[GuardStatus, _Mapping]] = ..., switches: _Optional[_Iterable[_Union[PolicySwitch, _Mapping]]] = ..., rollbacks: _Optional[int] = ..., shadow: _Optional[_Union[ShadowStatus, _Mapping]] = ...) -> None: ...

class ShadowRequest(_message.Message):
    __slots__ = ("candidate", "off")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    OFF_FIELD_NUMBER: _ClassVar[int]
    candidate: PolicyRef
    off: bool
    def __init__(self, candidate: _Optional[_Union[PolicyRef, _Mapping]] = ..., off: _Optional[bool] = ...) -> None: ...

class ShadowStatus(_message.Message):
    __slots__ = ("on", "candidate", "since", "rounds", "differing_rounds", "disabled_reason")
    ON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DIFFERING_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DISABLED_REASON_FIELD_NUMBER: _ClassVar[int]
    on: bool
    candidate: str
    since: float
    rounds: int
    differing_rounds: int
    disabled_reason: str
    def __init__(self, on: _Optional[bool] = ..., candidate: _Optional[str] = ..., since: _Optional[float] = ..., rounds: _Optional[int] = ..., differing_rounds: _Optional[int] = ..., disabled_reason: _Optional[str] = ...) -> None: ...

class ShadowReportRequest(_message.Message):
    __slots__ = ("examples", "no_simulation")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NO_SIMULATION_FIELD_NUMBER: _ClassVar[int]
    examples: int
    no_simulation: bool
    def __init__(self, examples: _Optional[int] = ..., no_simulation: _Optional[bool] = ...) -> None: ...

class ShadowDiff(_message.Message):
    __slots__ = ("time", "placed_only_by_active", "placed_only_by_candidate", "other_gpus", "order_differs", "preempted_only_by_active", "preempted_only_by_candidate")
    TIME_FIELD_NUMBER: _ClassVar[int]
    PLACED_ONLY_BY_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PLACED_ONLY_BY_CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    OTHER_GPUS_FIELD_NUMBER: _ClassVar[int]
    ORDER_DIFFERS_FIELD_NUMBER: _ClassVar[int]
    PREEMPTED_ONLY_BY_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREEMPTED_ONLY_BY_CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    time: float
    placed_only_by_active: _containers.RepeatedScalarFieldContainer[str]
    placed_only_by_candidate: _containers.RepeatedScalarFieldContainer[str]
    other_gpus: _containers.RepeatedScalarFieldContainer[str]
    order_differs: bool
    preempted_only_by_active: _containers.RepeatedScalarFieldContainer[str]
    preempted_only_by_candidate: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, time: _Optional[float] = ..., placed_only_by_active: _Optional[_Iterable[str]] = ..., placed_only_by_candidate: _Optional[_Iterable[str]] = ..., other_gpus: _Optional[_Iterable[str]] = ..., order_differs: _Optional[bool] = ..., preempted_only_by_active: _Optional[_Iterable[str]] = ..., preempted_only_by_candidate: _Optional[_Iterable[str]] = ...) -> None: ...

class ShadowCounts(_message.Message):
    __slots__ = ("placed_only_by_active", "placed_only_by_candidate", "other_gpus", "order_differs", "preempted_only_by_active", "preempted_only_by_candidate")
    PLACED_ONLY_BY_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PLACED_ONLY_BY_CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    OTHER_GPUS_FIELD_NUMBER: _ClassVar[int]
    ORDER_DIFFERS_FIELD_NUMBER: _ClassVar[int]
    PREEMPTED_ONLY_BY_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREEMPTED_ONLY_BY_CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    placed_only_by_active: int
    placed_only_by_candidate: int
    other_gpus: int
    order_differs: int
    preempted_only_by_active: int
    preempted_only_by_candidate: int
    def __init__(self, placed_only_by_active: _Optional[int] = ..., placed_only_by_candidate: _Optional[int] = ..., other_gpus: _Optional[int] = ..., order_differs: _Optional[int] = ..., preempted_only_by_active: _Optional[int] = ..., preempted_only_by_candidate: _Optional[int] = ...) -> None: ...

class SimulatedEffect(_message.Message):
    __slots__ = ("policy", "mean_jct", "p99_queue_delay_ls", "slo_attainment")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MEAN_JCT_FIELD_NUMBER: _ClassVar[int]
    P99_QUEUE_DELAY_LS_FIELD_NUMBER: _ClassVar[int]
    SLO_ATTAINMENT_FIELD_NUMBER: _ClassVar[int]
    policy: str
    mean_jct: float
    p99_queue_delay_ls: float
    slo_attainment: float
    def __init__(self, policy: _Optional[str] = ..., mean_jct: _Optional[float] = ..., p99_queue_delay_ls: _Optional[float] = ..., slo_attainment: _Optional[float] = ...) -> None: ...

class ShadowReportResponse(_message.Message):
    __slots__ = ("status", "counts", "examples", "active", "candidate", "simulated_jobs", "left_out_jobs", "simulation_note")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_JOBS_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_JOBS_FIELD_NUMBER: _ClassVar[int]
    SIMULATION_NOTE_FIELD_NUMBER: _ClassVar[int]
    status: ShadowStatus
    counts: ShadowCounts
    examples: _containers.RepeatedCompositeFieldContainer[ShadowDiff]
    active: SimulatedEffect
    candidate: SimulatedEffect
    simulated_jobs: int
    left_out_jobs: int
    simulation_note: str
    def __init__(self, status: _Optional[_Union[ShadowStatus, _Mapping]] = ..., counts: _Optional[_Union[ShadowCounts, _Mapping]] = ..., examples: _Optional[_Iterable[_Union[ShadowDiff, _Mapping]]] = ..., active: _Optional[_Union[SimulatedEffect, _Mapping]] = ..., candidate: _Optional[_Union[SimulatedEffect, _Mapping]] = ..., simulated_jobs: _Optional[int] = ..., left_out_jobs: _Optional[int] = ..., simulation_note: _Optional[str] = ...) -> None: ...
