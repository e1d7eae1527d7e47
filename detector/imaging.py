"""Image decoding with a cheap size check first, and letterboxing to the model's input."""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detector.errors import BadImage

PAD_VALUE = 114
_FORMATS = "JPEG, PNG, BMP, WebP or TIFF"
# Pillow's names of the formats OpenCV decodes; a failure on another format is "unsupported", not "corrupt".
_DECODABLE = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "PPM", "GIF", "JPEG2000"})


@dataclass(frozen=True)
class Letterbox:
    """How a source image was placed on the model input: input = source * scale + pad."""

    scale: float
    pad_x: float
    pad_y: float
    source_width: int
    source_height: int


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


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decodes to an 8-bit BGR array [H, W, 3]; raises :class:`BadImage` with an actionable message."""
    fmt, width, height = image_size(data, max_pixels)
    if fmt == "JPEG" and _jpeg_truncated(data):
        raise BadImage(f"JPEG is truncated ({len(data)} bytes, no end-of-image marker): send the complete file")
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
    return image


def letterbox(image: np.ndarray, input_hw: tuple[int, int], centered: bool) -> tuple[np.ndarray, Letterbox]:
    """Resizes keeping the aspect ratio and pads with 114 to ``input_hw``.

    ``centered``: YOLOv8 splits the padding on both sides; YOLOX puts the image at the top-left.
    """
    in_h, in_w = input_hw
    src_h, src_w = image.shape[:2]
    scale = min(in_h / src_h, in_w / src_w)
    new_w = min(in_w, max(1, round(src_w * scale)))
    new_h = min(in_h, max(1, round(src_h * scale)))
    if (new_w, new_h) != (src_w, src_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if centered:
        left, top = (in_w - new_w) // 2, (in_h - new_h) // 2
    else:
        left, top = 0, 0
    canvas = np.full((in_h, in_w, 3), PAD_VALUE, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = image
    return canvas, Letterbox(scale, float(left), float(top), src_w, src_h)
