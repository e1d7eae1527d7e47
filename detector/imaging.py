"""Image decoding with a cheap size check first (the letterbox to the model's input is kit/letterbox.py)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detector.errors import BadImage

_FORMATS = "JPEG, PNG, BMP, WebP or TIFF"
# Pillow's names of the formats OpenCV decodes; a failure on another format is "unsupported", not "corrupt".
_DECODABLE = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "PPM", "GIF", "JPEG2000"})


def image_size(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Reads format and size from the header only (Pillow opens lazily) and enforces ``max_pixels``."""
    if not data:
        raise BadImage("image is empty: send the encoded bytes of a JPEG, PNG, BMP, WebP or TIFF file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format or "unknown", img.size
    except Image.DecompressionBombError as exc:
        # Pillow refuses absurd sizes itself before we can read them; same answer as ours.
        raise BadImage(f"image is too large ({exc}); the limit is {max_pixels} pixels: downscale it") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        kind = _claimed_format(data)
        if kind:
            raise BadImage(
                f"the {kind} header is corrupt or truncated ({len(data)} bytes): send the complete, valid file"
            ) from exc
        raise BadImage(
            f"not a recognised image ({len(data)} bytes starting {data[:8].hex()}): send a {_FORMATS} file"
        ) from exc
    if width <= 0 or height <= 0:
        raise BadImage(f"image header declares an empty size {width}x{height}: the file is corrupt")
    if width * height > max_pixels:
        raise BadImage(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}: "
            "downscale it before sending"
        )
    return fmt, width, height


def _claimed_format(data: bytes) -> str:
    """The format the magic bytes claim, so a damaged file gets a message naming it."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    return ""


def _jpeg_truncated(data: bytes) -> bool:
    # Entropy-coded data stuffs 0xFF bytes, so EOI (FFD9) cannot appear inside a scan: a complete
    # file has one after its last SOS (FFDA); older OpenCV builds decode truncated files silently.
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


# JPEG's DCT scaling decodes straight to 1/2, 1/4 or 1/8 size, several times faster than a full decode.
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_reduction(width: int, height: int, input_hw: tuple[int, int]) -> int:
    """The largest DCT reduction (8, 4, 2, else 1) that still leaves at least as many pixels as the
    letterboxed model input takes, and divides the size exactly (so boxes map back without error)."""
    scale = min(input_hw[0] / height, input_hw[1] / width)
    for factor in (8, 4, 2):
        if factor * scale <= 1 and width % factor == 0 and height % factor == 0:
            return factor
    return 1


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decodes to an 8-bit BGR array [H, W, 3] at full size; raises :class:`BadImage` with an actionable message."""
    return decode_for_input(data, max_pixels, None)[0]


def decode_for_input(data: bytes, max_pixels: int, input_hw: tuple[int, int] | None) -> tuple[np.ndarray, int, int]:
    """Decodes to 8-bit BGR, for a JPEG at the smallest DCT scale that loses nothing the model input
    of ``input_hw`` would keep; returns the pixels and the source's full width and height."""
    fmt, width, height = image_size(data, max_pixels)
    if fmt == "JPEG" and _jpeg_truncated(data):
        raise BadImage(f"JPEG is truncated ({len(data)} bytes, no end-of-image marker): send the complete file")
    factor = jpeg_reduction(width, height, input_hw) if fmt == "JPEG" and input_hw is not None else 1
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR))
    if image is not None and image.shape[:2] != (height // factor, width // factor):
        # A decoder that scaled differently: decode in full rather than map boxes back wrongly.
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if (image is None or image.size == 0) and fmt not in _DECODABLE:
        raise BadImage(f"{fmt} images are not supported: send a {_FORMATS} file")
    if image is None or image.size == 0:
        raise BadImage(
            f"cannot decode the {fmt} image ({width}x{height}, {len(data)} bytes): "
            "the file is corrupt or truncated; send a complete file"
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadImage(f"unsupported pixel layout {image.shape} {image.dtype}: send an 8-bit colour or grey image")
    return image, width, height
