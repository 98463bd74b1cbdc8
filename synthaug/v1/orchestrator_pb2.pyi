from synthaug.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitPlanRequest(_message.Message):
    __slots__ = ("plan_yaml", "dry_run", "recompute")
    PLAN_YAML_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    plan_yaml: str
    dry_run: bool
    recompute: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, plan_yaml: _Optional[str] = ..., dry_run: _Optional[bool] = ..., recompute: _Optional[_Iterable[str]] = ...) -> None: ...

class RunRef(_message.Message):
    __slots__ = ("id", "plan_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    plan_name: str
    def __init__(self, id: _Optional[str] = ..., plan_name: _Optional[str] = ...) -> None: ...

class StepStatus(_message.Message):
    __slots__ = ("key", "kind", "arm", "seed", "state", "progress", "message", "metrics", "depends_on", "cached", "replica", "label")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    key: str
    kind: str
    arm: str
    seed: int
    state: _common_pb2.JobState
    progress: float
    message: str
    metrics: _containers.ScalarMap[str, float]
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    cached: bool
    replica: str
    label: str
    def __init__(self, key: _Optional[str] = ..., kind: _Optional[str] = ..., arm: _Optional[str] = ..., seed: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., depends_on: _Optional[_Iterable[str]] = ..., cached: _Optional[bool] = ..., replica: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("run", "state", "steps", "error", "report")
    RUN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    state: _common_pb2.JobState
    steps: _containers.RepeatedCompositeFieldContainer[StepStatus]
    error: _common_pb2.JobError
    report: _common_pb2.ObjectRef
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., steps: _Optional[_Iterable[_Union[StepStatus, _Mapping]]] = ..., error: _Optional[_Union[_common_pb2.JobError, _Mapping]] = ..., report: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("run", "sequence", "step", "run_state", "time")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    sequence: int
    step: StepStatus
    run_state: _common_pb2.JobState
    time: float
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., sequence: _Optional[int] = ..., step: _Optional[_Union[StepStatus, _Mapping]] = ..., run_state: _Optional[_Union[_common_pb2.JobState, str]] = ..., time: _Optional[float] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_sequence")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_sequence: int
    def __init__(self, run_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run", "state", "attempt", "started", "finished", "steps_done", "steps_total", "executed", "cached", "last_succeeded_attempt", "report_key", "overhead_seconds", "overhead_fraction")
    RUN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    LAST_SUCCEEDED_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REPORT_KEY_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_FRACTION_FIELD_NUMBER: _ClassVar[int]
    run: RunRef
    state: _common_pb2.JobState
    attempt: int
    started: float
    finished: float
    steps_done: int
    steps_total: int
    executed: int
    cached: int
    last_succeeded_attempt: int
    report_key: str
    overhead_seconds: float
    overhead_fraction: float
    def __init__(self, run: _Optional[_Union[RunRef, _Mapping]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., attempt: _Optional[int] = ..., started: _Optional[float] = ..., finished: _Optional[float] = ..., steps_done: _Optional[int] = ..., steps_total: _Optional[int] = ..., executed: _Optional[int] = ..., cached: _Optional[int] = ..., last_succeeded_attempt: _Optional[int] = ..., report_key: _Optional[str] = ..., overhead_seconds: _Optional[float] = ..., overhead_fraction: _Optional[float] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunInfo]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunInfo, _Mapping]]] = ...) -> None: ...

class FetchReportRequest(_message.Message):
    __slots__ = ("run_id", "paths")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "data", "last", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    last: bool
    sha256: str
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., sha256: _Optional[str] = ...) -> None: ...

class PushDatasetHeader(_message.Message):
    __slots__ = ("replace",)
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    replace: bool
    def __init__(self, replace: _Optional[bool] = ...) -> None: ...

class PushDatasetChunk(_message.Message):
    __slots__ = ("header", "file")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    header: PushDatasetHeader
    file: FileChunk
    def __init__(self, header: _Optional[_Union[PushDatasetHeader, _Mapping]] = ..., file: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...
