import datetime

from carmesh.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_STATE_UNSPECIFIED: _ClassVar[TrainingState]
    TRAINING_STATE_PENDING: _ClassVar[TrainingState]
    TRAINING_STATE_RUNNING: _ClassVar[TrainingState]
    TRAINING_STATE_SUCCEEDED: _ClassVar[TrainingState]
    TRAINING_STATE_FAILED: _ClassVar[TrainingState]
    TRAINING_STATE_CANCELLED: _ClassVar[TrainingState]

class ExportPrecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_PRECISION_UNSPECIFIED: _ClassVar[ExportPrecision]
    EXPORT_PRECISION_FLOAT32: _ClassVar[ExportPrecision]
    EXPORT_PRECISION_INT8: _ClassVar[ExportPrecision]
TRAINING_STATE_UNSPECIFIED: TrainingState
TRAINING_STATE_PENDING: TrainingState
TRAINING_STATE_RUNNING: TrainingState
TRAINING_STATE_SUCCEEDED: TrainingState
TRAINING_STATE_FAILED: TrainingState
TRAINING_STATE_CANCELLED: TrainingState
EXPORT_PRECISION_UNSPECIFIED: ExportPrecision
EXPORT_PRECISION_FLOAT32: ExportPrecision
EXPORT_PRECISION_INT8: ExportPrecision

class TrainingConfig(_message.Message):
    __slots__ = ("preset", "input_width", "input_height", "epochs", "batch_size", "learning_rate", "classes", "init_checkpoint", "ignore_classes", "crop_width", "crop_height", "max_duration_s", "seed", "precision")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    INIT_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CROP_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CROP_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    preset: str
    input_width: int
    input_height: int
    epochs: int
    batch_size: int
    learning_rate: float
    classes: _containers.RepeatedScalarFieldContainer[str]
    init_checkpoint: str
    ignore_classes: _containers.RepeatedScalarFieldContainer[str]
    crop_width: int
    crop_height: int
    max_duration_s: int
    seed: int
    precision: ExportPrecision
    def __init__(self, preset: _Optional[str] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., classes: _Optional[_Iterable[str]] = ..., init_checkpoint: _Optional[str] = ..., ignore_classes: _Optional[_Iterable[str]] = ..., crop_width: _Optional[int] = ..., crop_height: _Optional[int] = ..., max_duration_s: _Optional[int] = ..., seed: _Optional[int] = ..., precision: _Optional[_Union[ExportPrecision, str]] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("dataset", "config", "workers", "model_name")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    config: TrainingConfig
    workers: int
    model_name: str
    def __init__(self, dataset: _Optional[str] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., workers: _Optional[int] = ..., model_name: _Optional[str] = ...) -> None: ...

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, epoch: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TrainingJob(_message.Message):
    __slots__ = ("job_id", "state", "request", "epoch", "step", "total_steps", "history", "mlflow_run_id", "registered", "error", "started_at", "finished_at", "dataset", "final_metrics", "phase", "steps_per_s", "progress", "fetched_frames", "total_frames")
    class FinalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: TrainingState
    request: StartTrainingRequest
    epoch: int
    step: int
    total_steps: int
    history: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    mlflow_run_id: str
    registered: _common_pb2.ModelRef
    error: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    dataset: str
    final_metrics: _containers.ScalarMap[str, float]
    phase: str
    steps_per_s: float
    progress: float
    fetched_frames: int
    total_frames: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[TrainingState, str]] = ..., request: _Optional[_Union[StartTrainingRequest, _Mapping]] = ..., epoch: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., history: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., mlflow_run_id: _Optional[str] = ..., registered: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., error: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataset: _Optional[str] = ..., final_metrics: _Optional[_Mapping[str, float]] = ..., phase: _Optional[str] = ..., steps_per_s: _Optional[float] = ..., progress: _Optional[float] = ..., fetched_frames: _Optional[int] = ..., total_frames: _Optional[int] = ...) -> None: ...

class StartTrainingResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class GetTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class WatchTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class CancelTrainingJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: TrainingJob
    def __init__(self, job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class ListTrainingJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrainingJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[TrainingJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[TrainingJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RenderTrainingJobRequest(_message.Message):
    __slots__ = ("request", "namespace", "image", "checkpoint_claim")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_CLAIM_FIELD_NUMBER: _ClassVar[int]
    request: StartTrainingRequest
    namespace: str
    image: str
    checkpoint_claim: str
    def __init__(self, request: _Optional[_Union[StartTrainingRequest, _Mapping]] = ..., namespace: _Optional[str] = ..., image: _Optional[str] = ..., checkpoint_claim: _Optional[str] = ...) -> None: ...

class RenderTrainingJobResponse(_message.Message):
    __slots__ = ("manifest_yaml",)
    MANIFEST_YAML_FIELD_NUMBER: _ClassVar[int]
    manifest_yaml: str
    def __init__(self, manifest_yaml: _Optional[str] = ...) -> None: ...

class EvaluateModelRequest(_message.Message):
    __slots__ = ("model", "dataset", "classes", "ignore_classes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    dataset: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    ignore_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dataset: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., ignore_classes: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluateModelResponse(_message.Message):
    __slots__ = ("model", "dataset", "classes", "map50", "map50_95", "ap50", "images")
    class Ap50Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MAP50_FIELD_NUMBER: _ClassVar[int]
    MAP50_95_FIELD_NUMBER: _ClassVar[int]
    AP50_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    dataset: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    map50: float
    map50_95: float
    ap50: _containers.ScalarMap[str, float]
    images: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., dataset: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., map50: _Optional[float] = ..., map50_95: _Optional[float] = ..., ap50: _Optional[_Mapping[str, float]] = ..., images: _Optional[int] = ...) -> None: ...
