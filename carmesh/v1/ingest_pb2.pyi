from carmesh.v1 import common_pb2 as _common_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_KIND_UNSPECIFIED: _ClassVar[SourceKind]
    SOURCE_KIND_IMAGE_FOLDER: _ClassVar[SourceKind]
    SOURCE_KIND_VIDEO_FILE: _ClassVar[SourceKind]
    SOURCE_KIND_STREAM: _ClassVar[SourceKind]

class SourceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_STATE_UNSPECIFIED: _ClassVar[SourceState]
    SOURCE_STATE_RUNNING: _ClassVar[SourceState]
    SOURCE_STATE_FINISHED: _ClassVar[SourceState]
    SOURCE_STATE_STOPPED: _ClassVar[SourceState]
    SOURCE_STATE_FAILED: _ClassVar[SourceState]

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_FORMAT_YOLO: _ClassVar[DatasetFormat]
    DATASET_FORMAT_COCO: _ClassVar[DatasetFormat]
    DATASET_FORMAT_VOC: _ClassVar[DatasetFormat]
    DATASET_FORMAT_KITTI: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CSV: _ClassVar[DatasetFormat]
SOURCE_KIND_UNSPECIFIED: SourceKind
SOURCE_KIND_IMAGE_FOLDER: SourceKind
SOURCE_KIND_VIDEO_FILE: SourceKind
SOURCE_KIND_STREAM: SourceKind
SOURCE_STATE_UNSPECIFIED: SourceState
SOURCE_STATE_RUNNING: SourceState
SOURCE_STATE_FINISHED: SourceState
SOURCE_STATE_STOPPED: SourceState
SOURCE_STATE_FAILED: SourceState
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_FORMAT_YOLO: DatasetFormat
DATASET_FORMAT_COCO: DatasetFormat
DATASET_FORMAT_VOC: DatasetFormat
DATASET_FORMAT_KITTI: DatasetFormat
DATASET_FORMAT_CSV: DatasetFormat

class IngestFramesRequest(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: _common_pb2.Frame
    def __init__(self, frame: _Optional[_Union[_common_pb2.Frame, _Mapping]] = ...) -> None: ...

class IngestFramesResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "acknowledged", "buffered", "rejections")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    acknowledged: int
    buffered: int
    rejections: _containers.RepeatedCompositeFieldContainer[_status_pb2.Status]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., acknowledged: _Optional[int] = ..., buffered: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[_status_pb2.Status, _Mapping]]] = ...) -> None: ...

class SourceSpec(_message.Message):
    __slots__ = ("kind", "uri", "camera_id", "max_fps", "loop")
    KIND_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_FPS_FIELD_NUMBER: _ClassVar[int]
    LOOP_FIELD_NUMBER: _ClassVar[int]
    kind: SourceKind
    uri: str
    camera_id: str
    max_fps: float
    loop: bool
    def __init__(self, kind: _Optional[_Union[SourceKind, str]] = ..., uri: _Optional[str] = ..., camera_id: _Optional[str] = ..., max_fps: _Optional[float] = ..., loop: _Optional[bool] = ...) -> None: ...

class SourceStatus(_message.Message):
    __slots__ = ("source_id", "spec", "state", "frames_published", "frames_dropped", "error", "frames_read", "connected", "disconnects", "reconnects")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FRAMES_READ_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTS_FIELD_NUMBER: _ClassVar[int]
    RECONNECTS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    spec: SourceSpec
    state: SourceState
    frames_published: int
    frames_dropped: int
    error: str
    frames_read: int
    connected: bool
    disconnects: int
    reconnects: int
    def __init__(self, source_id: _Optional[str] = ..., spec: _Optional[_Union[SourceSpec, _Mapping]] = ..., state: _Optional[_Union[SourceState, str]] = ..., frames_published: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., error: _Optional[str] = ..., frames_read: _Optional[int] = ..., connected: _Optional[bool] = ..., disconnects: _Optional[int] = ..., reconnects: _Optional[int] = ...) -> None: ...

class StartSourceRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: SourceSpec
    def __init__(self, spec: _Optional[_Union[SourceSpec, _Mapping]] = ...) -> None: ...

class StartSourceResponse(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: SourceStatus
    def __init__(self, source: _Optional[_Union[SourceStatus, _Mapping]] = ...) -> None: ...

class StopSourceRequest(_message.Message):
    __slots__ = ("source_id",)
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    def __init__(self, source_id: _Optional[str] = ...) -> None: ...

class StopSourceResponse(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: SourceStatus
    def __init__(self, source: _Optional[_Union[SourceStatus, _Mapping]] = ...) -> None: ...

class ListSourcesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSourcesResponse(_message.Message):
    __slots__ = ("sources", "next_page_token")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[SourceStatus]
    next_page_token: str
    def __init__(self, sources: _Optional[_Iterable[_Union[SourceStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ImportDatasetRequest(_message.Message):
    __slots__ = ("format", "path", "dataset", "class_map", "default_split", "camera_id", "class_names")
    class ClassMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CLASS_MAP_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SPLIT_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    format: DatasetFormat
    path: str
    dataset: str
    class_map: _containers.ScalarMap[str, str]
    default_split: _common_pb2.Split
    camera_id: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, format: _Optional[_Union[DatasetFormat, str]] = ..., path: _Optional[str] = ..., dataset: _Optional[str] = ..., class_map: _Optional[_Mapping[str, str]] = ..., default_split: _Optional[_Union[_common_pb2.Split, str]] = ..., camera_id: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ImportDatasetResponse(_message.Message):
    __slots__ = ("frames_total", "frames_published", "annotations_published", "frames_skipped", "done", "frames_buffered", "skip_reasons", "class_names")
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_BUFFERED_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASONS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    frames_total: int
    frames_published: int
    annotations_published: int
    frames_skipped: int
    done: bool
    frames_buffered: int
    skip_reasons: _containers.RepeatedScalarFieldContainer[str]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, frames_total: _Optional[int] = ..., frames_published: _Optional[int] = ..., annotations_published: _Optional[int] = ..., frames_skipped: _Optional[int] = ..., done: _Optional[bool] = ..., frames_buffered: _Optional[int] = ..., skip_reasons: _Optional[_Iterable[str]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...
