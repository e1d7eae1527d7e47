"""Frame building blocks: image headers (read, never decoded), unique ids, timestamps (frame ids:
kit.hashing.derive_frame_id)."""

from __future__ import annotations

import io
import uuid
import warnings
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
# The largest image (width*height) taken, as feature_service's default: a small file can
# declare a huge image (a decompression bomb) that every consumer would then decode.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


class BadImage(ValueError):
    """Bytes that are not an image Pillow can identify from the header."""


@dataclass(frozen=True)
class ImageInfo:
    encoding: Encoding
    width: int
    height: int


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageInfo:
    """Format and size from the header only: Pillow's open is lazy, nothing is decoded."""
    if not data:
        raise BadImage("image is empty")
    try:
        with warnings.catch_warnings():
            # max_pixels is the limit here; Pillow's own bomb warning would only fill the log.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                fmt = image.format or ""
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image is over max_image_pixels ({max_pixels}): {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadImage(f"not a readable image ({exc})") from exc
    if width <= 0 or height <= 0:
        raise BadImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise BadImage(
            f"image is {width}x{height} = {width * height} pixels, more than max_image_pixels ({max_pixels}); "
            "scale it down"
        )
    return ImageInfo(_ENCODINGS.get(fmt, common_pb2.IMAGE_ENCODING_OTHER), width, height)


def unique_id() -> str:
    return uuid.uuid4().hex


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def load_image(path: Path, max_bytes: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[bytes, ImageInfo]:
    """The file's bytes, unchanged, and its header; blocking (run it in a thread)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise BadImage(f"image is {size} bytes, more than max_image_bytes ({max_bytes})")
    data = path.read_bytes()
    return data, probe_image(data, max_pixels)
