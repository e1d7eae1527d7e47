import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CountBucket(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COUNT_BUCKET_UNSPECIFIED: _ClassVar[CountBucket]
    COUNT_BUCKET_MINUTE: _ClassVar[CountBucket]
    COUNT_BUCKET_HOUR: _ClassVar[CountBucket]
    COUNT_BUCKET_TOTAL: _ClassVar[CountBucket]
COUNT_BUCKET_UNSPECIFIED: CountBucket
COUNT_BUCKET_MINUTE: CountBucket
COUNT_BUCKET_HOUR: CountBucket
COUNT_BUCKET_TOTAL: CountBucket

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class CountingLine(_message.Message):
    __slots__ = ("name", "start", "end")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    name: str
    start: Point
    end: Point
    def __init__(self, name: _Optional[str] = ..., start: _Optional[_Union[Point, _Mapping]] = ..., end: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class CountingZone(_message.Message):
    __slots__ = ("name", "polygon")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLYGON_FIELD_NUMBER: _ClassVar[int]
    name: str
    polygon: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, name: _Optional[str] = ..., polygon: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class CameraLayout(_message.Message):
    __slots__ = ("camera_id", "version", "width", "height", "lines", "zones", "created_at")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    version: int
    width: int
    height: int
    lines: _containers.RepeatedCompositeFieldContainer[CountingLine]
    zones: _containers.RepeatedCompositeFieldContainer[CountingZone]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, camera_id: _Optional[str] = ..., version: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., lines: _Optional[_Iterable[_Union[CountingLine, _Mapping]]] = ..., zones: _Optional[_Iterable[_Union[CountingZone, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetCameraLayoutRequest(_message.Message):
    __slots__ = ("camera_id", "width", "height", "lines", "zones", "expected_version")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    width: int
    height: int
    lines: _containers.RepeatedCompositeFieldContainer[CountingLine]
    zones: _containers.RepeatedCompositeFieldContainer[CountingZone]
    expected_version: int
    def __init__(self, camera_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., lines: _Optional[_Iterable[_Union[CountingLine, _Mapping]]] = ..., zones: _Optional[_Iterable[_Union[CountingZone, _Mapping]]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SetCameraLayoutResponse(_message.Message):
    __slots__ = ("layout",)
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    layout: CameraLayout
    def __init__(self, layout: _Optional[_Union[CameraLayout, _Mapping]] = ...) -> None: ...

class ListCameraLayoutsRequest(_message.Message):
    __slots__ = ("camera_id", "max_versions")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    max_versions: int
    def __init__(self, camera_id: _Optional[str] = ..., max_versions: _Optional[int] = ...) -> None: ...

class ListCameraLayoutsResponse(_message.Message):
    __slots__ = ("layouts",)
    LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    layouts: _containers.RepeatedCompositeFieldContainer[CameraLayout]
    def __init__(self, layouts: _Optional[_Iterable[_Union[CameraLayout, _Mapping]]] = ...) -> None: ...

class QueryCountsRequest(_message.Message):
    __slots__ = ("camera_id", "since", "until", "bucket")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    bucket: CountBucket
    def __init__(self, camera_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bucket: _Optional[_Union[CountBucket, str]] = ...) -> None: ...

class CountRow(_message.Message):
    __slots__ = ("bucket_start", "name", "direction", "class_name", "count")
    BUCKET_START_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    bucket_start: _timestamp_pb2.Timestamp
    name: str
    direction: str
    class_name: str
    count: int
    def __init__(self, bucket_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., name: _Optional[str] = ..., direction: _Optional[str] = ..., class_name: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class QueryCountsResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[CountRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[CountRow, _Mapping]]] = ...) -> None: ...

class TrackEvent(_message.Message):
    __slots__ = ("event_id", "camera_id", "seq", "captured_at", "track_id", "class_name", "name", "direction", "occupancy")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    OCCUPANCY_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    camera_id: str
    seq: int
    captured_at: _timestamp_pb2.Timestamp
    track_id: int
    class_name: str
    name: str
    direction: str
    occupancy: int
    def __init__(self, event_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., track_id: _Optional[int] = ..., class_name: _Optional[str] = ..., name: _Optional[str] = ..., direction: _Optional[str] = ..., occupancy: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("camera_id",)
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    def __init__(self, camera_id: _Optional[str] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: TrackEvent
    def __init__(self, event: _Optional[_Union[TrackEvent, _Mapping]] = ...) -> None: ...

class TrackedObject(_message.Message):
    __slots__ = ("track_id", "class_name", "x1", "y1", "x2", "y2", "score", "first_seen_seq", "first_seen_at")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_SEQ_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    first_seen_seq: int
    first_seen_at: _timestamp_pb2.Timestamp
    def __init__(self, track_id: _Optional[int] = ..., class_name: _Optional[str] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ..., score: _Optional[float] = ..., first_seen_seq: _Optional[int] = ..., first_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FrameTracks(_message.Message):
    __slots__ = ("camera_id", "seq", "captured_at", "tracks", "missing_frames")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FRAMES_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    seq: int
    captured_at: _timestamp_pb2.Timestamp
    tracks: _containers.RepeatedCompositeFieldContainer[TrackedObject]
    missing_frames: int
    def __init__(self, camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tracks: _Optional[_Iterable[_Union[TrackedObject, _Mapping]]] = ..., missing_frames: _Optional[int] = ...) -> None: ...
