"""Turns one Kafka record of carmesh.frames.v1 into a frame ready to store, or a rejection with
a reason for the dead-letter topic. Pure and blocking (image decoding): run in a thread pool."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import DecodeError

from carmesh.v1 import common_pb2
from feature_service import imaging
from feature_service.blobs import sha256_hex
from kit.names import name_problem
from kit.redact import redact_url

MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 4096
MAX_ANNOTATIONS = 10_000

SPLIT_NAMES = {common_pb2.SPLIT_TRAIN: "train", common_pb2.SPLIT_VAL: "val", common_pb2.SPLIT_TEST: "test"}
_CLAIMED_ENCODING = {common_pb2.IMAGE_ENCODING_JPEG: imaging.JPEG, common_pb2.IMAGE_ENCODING_PNG: imaging.PNG}


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_image_pixels: int


@dataclass(frozen=True)
class AnnotationRow:
    class_id: int
    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float
    ignore: bool


@dataclass(frozen=True)
class StoredFrame:
    frame_id: str
    camera_id: str
    seq: int
    captured_at: datetime
    encoding: str
    image: bytes
    image_sha256: str
    source: str
    dataset: str
    split: str  # "", "train", "val" or "test", as the source gave it
    features: imaging.Features
    annotations: tuple[AnnotationRow, ...]
    # Whose labels: '' for the operator's, else the key name of the client that sent the frame.
    dataset_namespace: str = ""

    @property
    def width(self) -> int:
        return self.features.width

    @property
    def height(self) -> int:
        return self.features.height


@dataclass(frozen=True)
class Rejection:
    code: str  # short, for metrics labels
    message: str  # for people reading the dead-letter topic

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}"


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.rejection = Rejection(code, message)


def _text(name: str, value: str, limit: int, required: bool = False) -> str:
    if required and not value:
        raise _Reject("missing_field", f"{name} is empty")
    if len(value) > limit:
        raise _Reject("bad_field", f"{name} is {len(value)} characters, more than {limit}")
    if "\x00" in value:
        raise _Reject("bad_field", f"{name} contains a NUL character")
    return value


def _name(kind: str, name: str, value: str, required: bool) -> str:
    """Ids that key Redis and snapshots; frames from older producers may carry any string."""
    value = _text(name, value, MAX_ID_CHARS, required=required)
    problem = name_problem(kind, value) if value else None
    if problem is not None:
        raise _Reject("invalid_name", f"{name}: {problem}")
    return value


def _captured_at(frame: common_pb2.Frame, record_timestamp_ms: int) -> datetime:
    if frame.HasField("captured_at") and (frame.captured_at.seconds or frame.captured_at.nanos):
        try:
            return frame.captured_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise _Reject("bad_timestamp", f"captured_at is not a valid time: {exc}") from exc
    # Unset: when the record reached Kafka is the best we know.
    if record_timestamp_ms > 0:
        return datetime.fromtimestamp(record_timestamp_ms / 1000, tz=UTC)
    return datetime.now(tz=UTC)


def _annotations(frame: common_pb2.Frame) -> tuple[AnnotationRow, ...]:
    if len(frame.annotations) > MAX_ANNOTATIONS:
        raise _Reject("bad_annotation", f"{len(frame.annotations)} annotations, more than {MAX_ANNOTATIONS}")
    rows = []
    for i, ann in enumerate(frame.annotations):
        name = _text(f"annotations[{i}].class_name", ann.class_name, MAX_ID_CHARS, required=True)
        box = ann.box
        coords = (box.x1, box.y1, box.x2, box.y2)
        if not all(math.isfinite(c) for c in coords):
            raise _Reject("bad_annotation", f"annotations[{i}] box has a non-finite coordinate")
        if box.x2 < box.x1 or box.y2 < box.y1:
            raise _Reject("bad_annotation", f"annotations[{i}] box has x2 < x1 or y2 < y1: {coords}")
        rows.append(AnnotationRow(ann.class_id, name, box.x1, box.y1, box.x2, box.y2, ann.ignore))
    return tuple(rows)


def _check_image(frame: common_pb2.Frame, limits: Limits) -> tuple[str, imaging.Features]:
    image = frame.image
    if not image:
        raise _Reject("missing_field", "image is empty")
    if len(image) > limits.max_image_bytes:
        raise _Reject("image_too_large", f"image is {len(image)} bytes, more than {limits.max_image_bytes}")
    encoding = imaging.sniff_encoding(image)
    claimed = _CLAIMED_ENCODING.get(frame.encoding)
    if claimed is not None and claimed != encoding:
        raise _Reject("encoding_mismatch", f"encoding says {claimed} but the bytes are {encoding}")
    header = imaging.header_size(image)
    if header is None:
        # Decoding bytes whose size is unknown could allocate anything: a format only OpenCV
        # reads (EXR, HDR) or garbage is refused unread.
        raise _Reject(
            "undecodable",
            f"the {len(image)} image bytes have no header that gives the image size "
            "(send JPEG, PNG, WebP, TIFF, BMP or PNM; corrupt or truncated?)",
        )
    if header[0] * header[1] > limits.max_image_pixels:
        raise _Reject(
            "too_many_pixels", f"image is {header[0]}x{header[1]}, more than {limits.max_image_pixels} pixels"
        )
    gray = imaging.decode_gray(image)
    if gray is None:
        raise _Reject("undecodable", f"OpenCV cannot decode the {len(image)} image bytes (corrupt or truncated?)")
    features = imaging.compute_features(gray)
    if features.width * features.height > limits.max_image_pixels:
        raise _Reject(
            "too_many_pixels",
            f"image is {features.width}x{features.height}, more than {limits.max_image_pixels} pixels",
        )
    claimed_size = (frame.width, frame.height)
    if claimed_size != (0, 0) and claimed_size != (features.width, features.height):
        raise _Reject(
            "size_mismatch",
            f"frame says {frame.width}x{frame.height} but the image is {features.width}x{features.height}",
        )
    return encoding, features


def validate(frame: common_pb2.Frame, record_timestamp_ms: int, limits: Limits) -> StoredFrame | Rejection:
    """Checks ids, text, timestamps and annotations first (cheap), then decodes the image."""
    try:
        frame_id = _text("frame_id", frame.frame_id, MAX_ID_CHARS, required=True)
        camera_id = _name("camera id", "camera_id", frame.camera_id, required=True)
        # Older producers stored stream URLs with their passwords: never keep one.
        source = redact_url(_text("source", frame.source, MAX_TEXT_CHARS))
        dataset = _name("data set", "dataset", frame.dataset, required=False)
        namespace = _text("dataset_namespace", frame.dataset_namespace, MAX_ID_CHARS)
        captured_at = _captured_at(frame, record_timestamp_ms)
        annotations = _annotations(frame)
        encoding, features = _check_image(frame, limits)
    except _Reject as exc:
        return exc.rejection
    return StoredFrame(
        frame_id=frame_id,
        camera_id=camera_id,
        seq=frame.seq,
        captured_at=captured_at,
        encoding=encoding,
        image=frame.image,
        image_sha256=sha256_hex(frame.image),
        source=source,
        dataset=dataset,
        split=SPLIT_NAMES.get(frame.split, ""),
        features=features,
        annotations=annotations,
        dataset_namespace=namespace,
    )


def parse_and_validate(value: bytes | None, record_timestamp_ms: int, limits: Limits) -> StoredFrame | Rejection:
    if not value:
        return Rejection("bad_protobuf", "the record has no value")
    frame = common_pb2.Frame()
    try:
        frame.ParseFromString(value)
    except DecodeError as exc:
        return Rejection("bad_protobuf", f"the value is not a carmesh.v1.Frame: {exc}")
    return validate(frame, record_timestamp_ms, limits)
