import datetime

from carmesh.v1 import common_pb2 as _common_pb2
from carmesh.v1 import registry_pb2 as _registry_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectRequest(_message.Message):
    __slots__ = ("image", "score_threshold", "iou_threshold", "classes", "max_detections", "request_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    score_threshold: float
    iou_threshold: float
    classes: _containers.RepeatedScalarFieldContainer[str]
    max_detections: int
    request_id: str
    def __init__(self, image: _Optional[bytes] = ..., score_threshold: _Optional[float] = ..., iou_threshold: _Optional[float] = ..., classes: _Optional[_Iterable[str]] = ..., max_detections: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DetectTimings(_message.Message):
    __slots__ = ("decode_ms", "preprocess_ms", "queue_ms", "inference_ms", "postprocess_ms", "total_ms", "batch_size")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, decode_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("detections", "model", "timings", "image_width", "image_height", "request_id")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[_common_pb2.Detection]
    model: _common_pb2.ModelRef
    timings: DetectTimings
    image_width: int
    image_height: int
    request_id: str
    def __init__(self, detections: _Optional[_Iterable[_Union[_common_pb2.Detection, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., timings: _Optional[_Union[DetectTimings, _Mapping]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DetectStreamRequest(_message.Message):
    __slots__ = ("detect",)
    DETECT_FIELD_NUMBER: _ClassVar[int]
    detect: DetectRequest
    def __init__(self, detect: _Optional[_Union[DetectRequest, _Mapping]] = ...) -> None: ...

class DetectStreamResponse(_message.Message):
    __slots__ = ("result", "request_id", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: DetectResponse
    request_id: str
    error: _status_pb2.Status
    def __init__(self, result: _Optional[_Union[DetectResponse, _Mapping]] = ..., request_id: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "family", "class_names", "input_width", "input_height", "execution_providers", "loaded_at", "sha256", "max_batch_size", "max_wait_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    family: _registry_pb2.ModelFamily
    class_names: _containers.RepeatedScalarFieldContainer[str]
    input_width: int
    input_height: int
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    loaded_at: _timestamp_pb2.Timestamp
    sha256: str
    max_batch_size: int
    max_wait_ms: float
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., family: _Optional[_Union[_registry_pb2.ModelFamily, str]] = ..., class_names: _Optional[_Iterable[str]] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., execution_providers: _Optional[_Iterable[str]] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sha256: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_wait_ms: _Optional[float] = ...) -> None: ...
