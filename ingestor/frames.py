"""Frame building blocks: image headers (read, never decoded), unique ids, timestamps (frame ids:
kit.hashing.derive_frame_id)."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp
from PIL import Image, UnidentifiedImageError

from carmesh.v1 import common_pb2

# Pillow names MPO the multi-picture JPEGs some cameras write; they are JPEG files.
Encoding: TypeAlias = common_pb2.ImageEncoding
_ENCODINGS: dict[str, Encoding] = {
    "JPEG": common_pb2.IMAGE_ENCODING_JPEG,
    "MPO": common_pb2.IMAGE_ENCODING_JPEG,
    "PNG": common_pb2.IMAGE_ENCODING_PNG,
}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class BadImage(ValueError):
    """Bytes that are not an image Pillow can identify from the header."""


@dataclass(frozen=True)
class ImageInfo:
    encoding: Encoding
    width: int
    height: int


def probe_image(data: bytes) -> ImageInfo:
    """Format and size from the header only: Pillow's open is lazy, nothing is decoded."""
    if not data:
        raise BadImage("image is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            fmt = image.format or ""
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"not a readable image ({exc})") from exc
    if width <= 0 or height <= 0:
        raise BadImage(f"image has no pixels ({width}x{height})")
    return ImageInfo(_ENCODINGS.get(fmt, common_pb2.IMAGE_ENCODING_OTHER), width, height)


def unique_id() -> str:
    return uuid.uuid4().hex


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def load_image(path: Path, max_bytes: int) -> tuple[bytes, ImageInfo]:
    """The file's bytes, unchanged, and its header; blocking (run it in a thread)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise BadImage(f"image is {size} bytes, more than max_image_bytes ({max_bytes})")
    data = path.read_bytes()
    return data, probe_image(data)
