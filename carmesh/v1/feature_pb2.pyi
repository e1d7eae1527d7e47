import datetime

from carmesh.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameFeatures(_message.Message):
    __slots__ = ("brightness", "contrast", "sharpness", "width", "height")
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    SHARPNESS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    brightness: float
    contrast: float
    sharpness: float
    width: int
    height: int
    def __init__(self, brightness: _Optional[float] = ..., contrast: _Optional[float] = ..., sharpness: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class CameraFeatures(_message.Message):
    __slots__ = ("camera_id", "last_frame_id", "last_seen_at", "features", "last_car_count", "car_count_1m", "last_model")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LAST_CAR_COUNT_FIELD_NUMBER: _ClassVar[int]
    CAR_COUNT_1M_FIELD_NUMBER: _ClassVar[int]
    LAST_MODEL_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    last_frame_id: str
    last_seen_at: _timestamp_pb2.Timestamp
    features: FrameFeatures
    last_car_count: int
    car_count_1m: float
    last_model: _common_pb2.ModelRef
    def __init__(self, camera_id: _Optional[str] = ..., last_frame_id: _Optional[str] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., features: _Optional[_Union[FrameFeatures, _Mapping]] = ..., last_car_count: _Optional[int] = ..., car_count_1m: _Optional[float] = ..., last_model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("camera_id",)
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    def __init__(self, camera_id: _Optional[str] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("camera",)
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    camera: CameraFeatures
    def __init__(self, camera: _Optional[_Union[CameraFeatures, _Mapping]] = ...) -> None: ...

class DatasetFilter(_message.Message):
    __slots__ = ("camera_ids", "datasets", "captured_after", "captured_before", "labelled_only", "classes", "dataset_namespace")
    CAMERA_IDS_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LABELLED_ONLY_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    camera_ids: _containers.RepeatedScalarFieldContainer[str]
    datasets: _containers.RepeatedScalarFieldContainer[str]
    captured_after: _timestamp_pb2.Timestamp
    captured_before: _timestamp_pb2.Timestamp
    labelled_only: bool
    classes: _containers.RepeatedScalarFieldContainer[str]
    dataset_namespace: str
    def __init__(self, camera_ids: _Optional[_Iterable[str]] = ..., datasets: _Optional[_Iterable[str]] = ..., captured_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., captured_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labelled_only: _Optional[bool] = ..., classes: _Optional[_Iterable[str]] = ..., dataset_namespace: _Optional[str] = ...) -> None: ...

class DatasetSnapshot(_message.Message):
    __slots__ = ("name", "version", "filter", "val_fraction", "seed", "train_frames", "val_frames", "class_names", "created_at", "keep_source_split", "test_frames")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    VAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    KEEP_SOURCE_SPLIT_FIELD_NUMBER: _ClassVar[int]
    TEST_FRAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    filter: DatasetFilter
    val_fraction: float
    seed: int
    train_frames: int
    val_frames: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    keep_source_split: bool
    test_frames: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., filter: _Optional[_Union[DatasetFilter, _Mapping]] = ..., val_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., train_frames: _Optional[int] = ..., val_frames: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., keep_source_split: _Optional[bool] = ..., test_frames: _Optional[int] = ...) -> None: ...

class CreateDatasetSnapshotRequest(_message.Message):
    __slots__ = ("name", "filter", "val_fraction", "seed", "keep_source_split")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    KEEP_SOURCE_SPLIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    filter: DatasetFilter
    val_fraction: float
    seed: int
    keep_source_split: bool
    def __init__(self, name: _Optional[str] = ..., filter: _Optional[_Union[DatasetFilter, _Mapping]] = ..., val_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., keep_source_split: _Optional[bool] = ...) -> None: ...

class CreateDatasetSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: DatasetSnapshot
    def __init__(self, snapshot: _Optional[_Union[DatasetSnapshot, _Mapping]] = ...) -> None: ...

class ListDatasetSnapshotsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots", "next_page_token")
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[DatasetSnapshot]
    next_page_token: str
    def __init__(self, snapshots: _Optional[_Iterable[_Union[DatasetSnapshot, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StreamDatasetRequest(_message.Message):
    __slots__ = ("name", "split", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    split: _common_pb2.Split
    version: str
    def __init__(self, name: _Optional[str] = ..., split: _Optional[_Union[_common_pb2.Split, str]] = ..., version: _Optional[str] = ...) -> None: ...

class StreamDatasetResponse(_message.Message):
    __slots__ = ("frame", "index", "total")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    frame: _common_pb2.Frame
    index: int
    total: int
    def __init__(self, frame: _Optional[_Union[_common_pb2.Frame, _Mapping]] = ..., index: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...
