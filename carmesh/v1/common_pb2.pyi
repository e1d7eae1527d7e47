import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_JPEG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_OTHER: _ClassVar[ImageEncoding]

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_TRAIN: _ClassVar[Split]
    SPLIT_VAL: _ClassVar[Split]
    SPLIT_TEST: _ClassVar[Split]
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_JPEG: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_OTHER: ImageEncoding
SPLIT_UNSPECIFIED: Split
SPLIT_TRAIN: Split
SPLIT_VAL: Split
SPLIT_TEST: Split

class BoundingBox(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Annotation(_message.Message):
    __slots__ = ("box", "class_id", "class_name", "ignore")
    BOX_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    IGNORE_FIELD_NUMBER: _ClassVar[int]
    box: BoundingBox
    class_id: int
    class_name: str
    ignore: bool
    def __init__(self, box: _Optional[_Union[BoundingBox, _Mapping]] = ..., class_id: _Optional[int] = ..., class_name: _Optional[str] = ..., ignore: _Optional[bool] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame_id", "camera_id", "seq", "captured_at", "encoding", "image", "width", "height", "annotations", "source", "dataset", "split", "client_frame_id", "dataset_namespace")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    camera_id: str
    seq: int
    captured_at: _timestamp_pb2.Timestamp
    encoding: ImageEncoding
    image: bytes
    width: int
    height: int
    annotations: _containers.RepeatedCompositeFieldContainer[Annotation]
    source: str
    dataset: str
    split: Split
    client_frame_id: str
    dataset_namespace: str
    def __init__(self, frame_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., image: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., annotations: _Optional[_Iterable[_Union[Annotation, _Mapping]]] = ..., source: _Optional[str] = ..., dataset: _Optional[str] = ..., split: _Optional[_Union[Split, str]] = ..., client_frame_id: _Optional[str] = ..., dataset_namespace: _Optional[str] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "class_id", "class_name")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    box: BoundingBox
    score: float
    class_id: int
    class_name: str
    def __init__(self, box: _Optional[_Union[BoundingBox, _Mapping]] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., class_name: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class FrameDetections(_message.Message):
    __slots__ = ("frame_id", "camera_id", "model", "detections", "detected_at", "image_width", "image_height", "seq", "captured_at")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    camera_id: str
    model: ModelRef
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    detected_at: _timestamp_pb2.Timestamp
    image_width: int
    image_height: int
    seq: int
    captured_at: _timestamp_pb2.Timestamp
    def __init__(self, frame_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., seq: _Optional[int] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
