"""Hostile inputs to the ingestor are the client's fault and said so, never a crash (hole 8 of
issue 16): unknown enum values, decompression bombs, COCO ids that are not ids, CSV fields over
the csv module's limit, file names that are not UTF-8. No broker needed."""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from carmesh.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from ingestor.clients import complete
from ingestor.errors import InvalidFrame
from ingestor.frames import DEFAULT_MAX_IMAGE_PIXELS, BadImage, probe_image
from kit.callers import CallerIdentity
from kit.clients import insecure_channel
from kit.datasets import ParseOptions, parse_dataset
from kit.errors import InvalidArgument
from tests.ingestor.support import ingestor, unique_topic

# A gateway-admitted key that may send unlabelled frames.
CAMERA = CallerIdentity("camera", frozenset({"ingest"}))


def _jpeg(width: int = 32, height: int = 24) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 100, np.uint8))
    assert ok
    return data.tobytes()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(width: int, height: int) -> bytes:
    """A gray PNG that declares width x height; its first rows of zeros compress to almost nothing."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1) * 16))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _chunk(b"IEND", b"")


def test_unknown_encoding_is_a_rejected_frame_not_a_crash() -> None:
    frame = common_pb2.Frame(camera_id="cam", image=_jpeg(), encoding=99)  # type: ignore[arg-type]
    with pytest.raises(InvalidFrame) as err:
        complete(frame, 0, "peer", 1 << 20, CAMERA)
    assert "encoding says 99 (not a ImageEncoding value)" in str(err.value)
    # The frame's rejection is a google.rpc.Status, as IngestFramesResponse.rejections carries it.
    assert err.value.status().code == 3


def test_images_over_the_pixel_limit_are_refused_from_the_header() -> None:
    bomb = _png_bomb(12000, 12000)
    with pytest.raises(BadImage, match="12000x12000 = 144000000 pixels, more than max_image_pixels"):
        probe_image(bomb)
    assert DEFAULT_MAX_IMAGE_PIXELS < 12000 * 12000
    with pytest.raises(InvalidFrame, match="max_image_pixels"):
        complete(common_pb2.Frame(camera_id="cam", image=bomb), 0, "peer", 1 << 20, CAMERA, max_image_pixels=1000)
    assert probe_image(_jpeg(), max_pixels=32 * 24).width == 32


def _coco(root: Path, image_id: object, annotation_image_id: object) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(_jpeg())
    doc = {
        "images": [{"id": image_id, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": annotation_image_id, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "car"}],
    }
    path = root / "train.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("image_id", "annotation_image_id", "skipped"),
    [(1, [1, 2], "image_id must be a number or a string, not list"), ({"x": 1}, 1, "id must be a number")],
    ids=["annotation-image-id-list", "image-id-object"],
)
def test_coco_ids_that_are_not_ids_are_skipped_with_a_reason(
    tmp_path: Path, image_id: object, annotation_image_id: object, skipped: str
) -> None:
    parsed = parse_dataset("coco", _coco(tmp_path, image_id, annotation_image_id), ParseOptions())
    assert any(skipped in reason for reason in parsed.skipped), parsed.skipped


def test_csv_field_over_the_csv_limit_is_invalid_argument(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("image,xmin,ymin,xmax,ymax\n" + '"' + "x" * (129 * 1024) + '",1,2,3,4\n')
    with pytest.raises(InvalidArgument, match="line 2 cannot be read as CSV"):
        parse_dataset("csv", path, ParseOptions())


def test_file_names_that_are_not_utf8_are_skipped_and_named_with_escapes(tmp_path: Path) -> None:
    images = tmp_path / "train" / "images"
    images.mkdir(parents=True)
    (images / "good.jpg").write_bytes(_jpeg())
    (tmp_path / "train" / "labels").mkdir()
    (tmp_path / "train" / "labels" / "good.txt").write_text("car 0 0 0 1 1 5 5\n")
    bad_name = os.fsdecode(b"bad-\xff\xfe.jpg")
    (images / bad_name).write_bytes(_jpeg())
    (tmp_path / "train" / "labels" / os.fsdecode(b"bad-\xff\xfe.txt")).write_text("car 0 0 0 1 1 5 5\n")
    parsed = parse_dataset("kitti", tmp_path, ParseOptions())
    assert [item.rel for item in parsed.items] == ["train/images/good.jpg"]
    assert parsed.skipped == ["train/images/bad-\\xff\\xfe.jpg: the file name is not valid UTF-8; rename it"]
    # Every reason can travel in a proto string.
    assert all(reason.encode("utf-8") for reason in parsed.skipped)


async def test_ingest_frames_rejects_an_unknown_encoding_and_the_stream_goes_on(kafka_bootstrap: str) -> None:
    """Through `python -m ingestor`: the bad frame is one rejection, the frames after it are published."""
    good = _jpeg()

    async def frames() -> AsyncIterator[ingest_pb2.IngestFramesRequest]:
        yield ingest_pb2.IngestFramesRequest(frame=common_pb2.Frame(camera_id="cam", image=good))
        bad = common_pb2.Frame(camera_id="cam", image=good, encoding=99)  # type: ignore[arg-type]
        yield ingest_pb2.IngestFramesRequest(frame=bad)
        yield ingest_pb2.IngestFramesRequest(frame=common_pb2.Frame(camera_id="cam", image=good))

    with ingestor(kafka_bootstrap, unique_topic("bad-input")) as proc:
        async with insecure_channel(proc.address) as channel:
            reply = await ingest_pb2_grpc.IngestServiceStub(channel).IngestFrames(frames(), timeout=60)
    assert (reply.accepted, reply.rejected) == (2, 1)
    assert reply.rejections[0].code == 3 and "encoding says 99" in reply.rejections[0].message
