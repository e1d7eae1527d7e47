"""Hostile input to feature_service (hole 8 of issue 16): decompression bombs in every format
OpenCV reads are refused from the header, before anything is decoded (a small WebP or TIFF can
declare 12000x12000 pixels); a filter time outside a Timestamp's range is INVALID_ARGUMENT."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from carmesh.v1 import common_pb2, feature_pb2
from feature_service import imaging
from feature_service.errors import BadRequest
from feature_service.server import filter_from_proto
from feature_service.validation import Limits, Rejection, validate

LIMITS = Limits(max_image_bytes=1_000_000, max_image_pixels=40_000_000)
SIDE_PX = 12000


def _webp_claiming(width: int, height: int) -> bytes:
    """A real lossy WebP whose VP8 key frame header is patched to claim width x height."""
    ok, encoded = cv2.imencode(".webp", np.full((48, 64, 3), 90, np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert ok
    data = bytearray(encoded.tobytes())
    start = data.index(b"\x9d\x01\x2a")  # the VP8 key frame start code; width, height follow
    data[start + 3 : start + 7] = struct.pack("<HH", width, height)
    return bytes(data)


def _tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian TIFF header for an 8-bit gray width x height image with one strip."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 200),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    head = b"II*\x00" + struct.pack("<I", 8) + ifd
    return head + b"\x00" * (200 - len(head)) + b"\x80" * 1000


def _other_formats() -> list[tuple[str, bytes]]:
    image = np.full((30, 40, 3), 128, np.uint8)
    out = []
    for ext in (".bmp", ".ppm", ".pgm", ".tif", ".webp", ".ras", ".hdr", ".pfm"):
        gray = ext == ".pgm"
        pixels = image.astype(np.float32) / 255 if ext in (".hdr", ".pfm") else image
        ok, encoded = cv2.imencode(ext, pixels[:, :, 0] if gray else pixels)
        if ok:
            out.append((ext, encoded.tobytes()))
    return out


@pytest.mark.parametrize("make", [_webp_claiming, _tiff_claiming], ids=["webp", "tiff"])
def test_huge_webp_and_tiff_are_refused_from_the_header(make: object) -> None:
    data = make(SIDE_PX, SIDE_PX)  # type: ignore[operator]
    assert len(data) < 20_000
    assert imaging.header_size(data) == (SIDE_PX, SIDE_PX)
    result = validate(common_pb2.Frame(frame_id="f", camera_id="c", image=data), 1_700_000_000_000, LIMITS)
    assert isinstance(result, Rejection) and result.code == "too_many_pixels", result
    assert f"{SIDE_PX}x{SIDE_PX}" in result.message


@pytest.mark.parametrize(("ext", "data"), _other_formats(), ids=[ext for ext, _ in _other_formats()])
def test_every_format_opencv_writes_has_its_size_read_from_the_header(ext: str, data: bytes) -> None:
    assert imaging.header_size(data) == (40, 30), ext


def test_filter_time_out_of_range_is_bad_request() -> None:
    # Found by the fuzz suite: CreateDatasetSnapshot answered INTERNAL (ToDatetime's ValueError).
    late = Timestamp(seconds=2**63 - 1, nanos=-(2**31) + 1)
    with pytest.raises(BadRequest, match=r"filter\.captured_before is not a valid time"):
        filter_from_proto(feature_pb2.DatasetFilter(captured_before=late))
