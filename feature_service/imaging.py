"""Image checks and frame-quality features: pure functions on bytes and arrays."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

JPEG = "jpeg"
PNG = "png"
OTHER = "other"

# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field.
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


@dataclass(frozen=True)
class Features:
    brightness: float  # mean gray level, 0..255
    contrast: float  # standard deviation of gray levels
    sharpness: float  # variance of the Laplacian of the gray image
    width: int
    height: int


def sniff_encoding(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return JPEG
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return PNG
    return OTHER


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header without decoding, so a decompression bomb is refused
    before it is decoded: JPEG and PNG parsed here, every other format (WebP, TIFF, BMP, PNM,
    GIF, JPEG 2000, ...) by Pillow's lazy open; None when the header does not say."""
    encoding = sniff_encoding(data)
    if encoding == PNG:
        if len(data) >= 24 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        return None
    if encoding == JPEG:
        return _jpeg_size(data)
    return _pillow_size(data) or _text_header_size(data)


def _text_header_size(data: bytes) -> tuple[int, int] | None:
    """PFM (``PF\\n640 480\\n``) and Radiance HDR (``-Y 480 +X 640``): text headers Pillow does not read."""
    head = data[:4096]
    if head[:2] in (b"PF", b"Pf"):
        words = head[2:].split(maxsplit=2)
        if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
            return int(words[0]), int(words[1])
        return None
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        end = head.find(b"\n\n")
        words = head[end + 2 :].split(b"\n", 1)[0].split() if end >= 0 else []
        if len(words) == 4 and words[1].isdigit() and words[3].isdigit():
            first, second = int(words[1]), int(words[3])
            # "-Y h +X w" is the usual orientation; "+X w -Y h" swaps the axes.
            return (second, first) if words[0][1:] == b"Y" else (first, second)
    return None


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            # The caller applies its own pixel limit; Pillow's bomb warning/error is not the answer.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        return _bomb_size(exc)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error, EOFError):
        return None
    return int(width), int(height)


def _bomb_size(exc: Image.DecompressionBombError) -> tuple[int, int] | None:
    """Pillow refuses images over twice its own limit at open and names only their pixel count:
    (pixels, 1) keeps the product, which is what the limit is about."""
    numbers = [int(word) for word in str(exc).replace("(", " ").split() if word.isdigit()]
    return (numbers[0], 1) if numbers else (2**31, 1)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        pos += 2 + length
    return None


def decode_gray(data: bytes) -> np.ndarray | None:
    """The image as 8-bit gray, or None when OpenCV cannot decode it (corrupt, truncated, unknown)."""
    if not data:
        return None
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None or gray.size == 0:
        return None
    return np.asarray(gray)


def compute_features(gray: np.ndarray) -> Features:
    mean, std = cv2.meanStdDev(gray)
    # float32 holds a uint8 Laplacian exactly and is ~30% cheaper than float64.
    laplacian = cv2.Laplacian(gray, cv2.CV_32F)
    _, lap_std = cv2.meanStdDev(laplacian)
    height, width = gray.shape[:2]
    return Features(
        brightness=float(mean[0][0]),
        contrast=float(std[0][0]),
        sharpness=float(lap_std[0][0]) ** 2,
        width=int(width),
        height=int(height),
    )
