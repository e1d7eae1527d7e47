"""Hypothesis strategies for image bytes: every format OpenCV writes (and so reads), truncated,
bit-flipped, random, and decompression bombs whose small headers declare huge images."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
from hypothesis import strategies as st

# What cv2.imencode writes in this build; a format it cannot write is skipped when drawn.
FORMATS = (".jpg", ".png", ".bmp", ".webp", ".tiff", ".ppm", ".pgm", ".pbm", ".ras", ".jp2", ".exr", ".hdr", ".pfm")
# Bombs declare this many pixels per side (65535: the most a JPEG or GIF header can say).
BOMB_SIDES_PX = (12_000, 30_000, 65_535)


def _encode(ext: str, width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    if ext in (".exr", ".hdr", ".pfm"):
        image = image.astype(np.float32) / 255  # float formats
    if ext == ".jp2":  # OpenJPEG needs a few pixels per resolution level
        image = np.resize(image, (max(height, 64), max(width, 64), 3))
    if ext in (".pgm", ".pbm"):
        image = image[:, :, 0]
    try:
        ok, data = cv2.imencode(ext, image)
    except cv2.error:
        return b""
    return data.tobytes() if ok else b""


def encoded() -> st.SearchStrategy[bytes]:
    """A small valid image in one of OpenCV's formats."""
    return st.builds(
        _encode, st.sampled_from(FORMATS), st.integers(1, 48), st.integers(1, 48), st.integers(0, 2**16)
    ).filter(bool)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1) * 8))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _chunk(b"IEND", b"")


def jpeg_bomb(side: int) -> bytes:
    data = bytearray(_encode(".jpg", 16, 16, 1))
    sof = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[sof + 5 : sof + 9] = struct.pack(">HH", min(side, 65535), min(side, 65535))
    return bytes(data)


def tiff_bomb(side: int) -> bytes:
    entries = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 200)]
    entries += [(277, 3, 1), (278, 4, side), (279, 4, side * side)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in entries)
    head = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    return head + b"\x00" * (200 - len(head)) + b"\x80" * 512


def bmp_bomb(side: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 64, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\x00" * 64


def gif_bomb(side: int) -> bytes:
    side = min(side, 65535)
    screen = b"GIF89a" + struct.pack("<HHBBB", side, side, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, side, side, 0) + b"\x02\x02\x44\x01\x00;"
    return screen + image


def webp_bomb(side: int) -> bytes:
    data = bytearray(cv2.imencode(".webp", np.full((16, 16, 3), 90, np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 80])[1])
    start = bytes(data).index(b"\x9d\x01\x2a")
    data[start + 3 : start + 7] = struct.pack("<HH", min(side, 16383), min(side, 16383))
    return bytes(data)


def pnm_bomb(side: int) -> bytes:
    return f"P5\n{side} {side}\n255\n".encode() + b"\x00" * 256


BOMBS = (png_bomb, jpeg_bomb, tiff_bomb, bmp_bomb, gif_bomb, webp_bomb, pnm_bomb)


def bombs() -> st.SearchStrategy[bytes]:
    return st.builds(lambda make, side: make(side), st.sampled_from(BOMBS), st.sampled_from(BOMB_SIDES_PX))


def _truncate(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _flip(data: bytes, position: int, bit: int) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[position % len(out)] ^= 1 << bit
    return bytes(out)


def image_bytes() -> st.SearchStrategy[bytes]:
    valid = encoded()
    return st.one_of(
        valid,
        bombs(),
        st.tuples(st.one_of(valid, bombs()), st.floats(0, 1)).map(lambda p: _truncate(*p)),
        st.tuples(valid, st.integers(0, 10_000), st.integers(0, 7)).map(lambda p: _flip(*p)),
        st.binary(max_size=512),
        st.just(b""),
    )
