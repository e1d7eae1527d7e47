"""The feature service's pure parts: frame validation and features, the blob store, splits,
settings and the migration files."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import time
import zlib
from pathlib import Path

import asyncpg
import cv2
import numpy as np
import pytest

from carmesh.v1 import common_pb2
from feature_service import imaging
from feature_service.blobs import STALE_TMP_S, LocalBlobStore, blob_key
from feature_service.config import Settings
from feature_service.datasets import SnapshotFilter, SnapshotSpec, assign_split, check_spec, hashed_split
from feature_service.db import is_transient, load_migrations, redact
from feature_service.errors import BlobMissing, MigrationError
from feature_service.validation import Limits, Rejection, StoredFrame, parse_and_validate, validate
from kit.config import ConfigError, load_settings
from kit.errors import InvalidArgument

LIMITS = Limits(max_image_bytes=1_000_000, max_image_pixels=1_000_000)


def _jpeg(width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _frame(**fields: object) -> common_pb2.Frame:
    base: dict[str, object] = {"frame_id": "f-1", "camera_id": "cam-1", "image": _jpeg()}
    base.update(fields)
    return common_pb2.Frame(**base)  # type: ignore[arg-type]


def _rejected(frame: common_pb2.Frame, limits: Limits = LIMITS) -> Rejection:
    result = validate(frame, 1_700_000_000_000, limits)
    assert isinstance(result, Rejection), result
    return result


def test_features_are_gray_mean_std_and_laplacian_variance() -> None:
    gray = np.zeros((40, 60), np.uint8)
    gray[:, 30:] = 200
    f = imaging.compute_features(gray)
    assert f.brightness == pytest.approx(100.0)
    assert f.contrast == pytest.approx(100.0)
    assert f.sharpness == pytest.approx(cv2.Laplacian(gray, cv2.CV_64F).var())
    assert f.sharpness > 0
    flat = imaging.compute_features(np.full((10, 10), 7, np.uint8))
    assert (flat.brightness, flat.contrast, flat.sharpness, flat.width, flat.height) == (7.0, 0.0, 0.0, 10, 10)


def test_header_size_reads_jpeg_and_png_without_decoding() -> None:
    assert imaging.header_size(_jpeg(64, 48)) == (64, 48)
    assert imaging.header_size(_png_header(100_000, 90_000)) == (100_000, 90_000)
    assert imaging.header_size(b"not an image") is None


def test_valid_frame_fills_in_size_and_features() -> None:
    result = validate(_frame(), 1_700_000_000_000, LIMITS)
    assert isinstance(result, StoredFrame)
    assert (result.width, result.height, result.encoding) == (64, 48, "jpeg")
    assert result.image_sha256 == hashlib.sha256(result.image).hexdigest()
    # No captured_at: the record's timestamp stands in.
    assert result.captured_at.timestamp() == 1_700_000_000


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"frame_id": ""}, "missing_field"),
        ({"camera_id": ""}, "missing_field"),
        ({"camera_id": "a\x00b"}, "bad_field"),
        ({"image": b""}, "missing_field"),
        ({"image": os.urandom(5000)}, "undecodable"),
        ({"image": _jpeg()[:300]}, "undecodable"),
        ({"width": 65, "height": 48}, "size_mismatch"),
        ({"encoding": common_pb2.IMAGE_ENCODING_PNG}, "encoding_mismatch"),
        ({"image": _png_header(5000, 5000)}, "too_many_pixels"),
        ({"image": b"\xff" * 1_000_001}, "image_too_large"),
        (
            {"annotations": [common_pb2.Annotation(class_name="car", box=common_pb2.BoundingBox(x1=5, x2=1, y2=3))]},
            "bad_annotation",
        ),
        ({"annotations": [common_pb2.Annotation(box=common_pb2.BoundingBox(x2=1, y2=1))]}, "missing_field"),
    ],
)
def test_invalid_frames_are_rejected_with_a_reason(fields: dict[str, object], code: str) -> None:
    rejection = _rejected(_frame(**fields))
    assert rejection.code == code
    assert rejection.reason.startswith(f"{code}: ") and len(rejection.message) > 5


def test_a_value_that_is_not_a_frame_is_rejected() -> None:
    assert parse_and_validate(b"", 0, LIMITS) == Rejection("bad_protobuf", "the record has no value")
    result = parse_and_validate(b"\xff\xff\xff\xff", 0, LIMITS)
    assert isinstance(result, Rejection) and result.code == "bad_protobuf"


def test_local_blob_store_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.open()
    data = b"image bytes" * 100
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = tmp_path / "sha256" / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == data and store.path_for(digest) == path
    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns
    # Not written again, only touched (the blob garbage collector's grace counts from the last put).
    assert store.put(data) == digest and path.stat().st_ino == inode and path.stat().st_mtime_ns >= mtime
    assert store.get(digest) == data and store.exists(digest)
    assert list((tmp_path / "tmp").iterdir()) == []
    path.write_bytes(b"tampered")
    with pytest.raises(BlobMissing, match="corrupt"):
        store.get(digest)
    with pytest.raises(BlobMissing, match="missing"):
        store.get("0" * 64)
    with pytest.raises(ValueError):
        blob_key("../etc/passwd")


def test_local_blob_store_sweeps_only_stale_temp_files(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    stale, fresh = tmp_path / "tmp" / "stale", tmp_path / "tmp" / "fresh"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"in progress")
    old = time.time() - STALE_TMP_S - 60
    os.utime(stale, (old, old))
    LocalBlobStore(tmp_path).open()
    assert not stale.exists() and fresh.exists()


def test_hashed_split_is_deterministic_and_near_the_fraction() -> None:
    ids = [f"frame-{i}" for i in range(2000)]
    first = [hashed_split(7, i, 0.25) for i in ids]
    assert first == [hashed_split(7, i, 0.25) for i in ids]
    assert first != [hashed_split(8, i, 0.25) for i in ids]
    assert 0.2 < first.count("val") / len(ids) < 0.3
    assert hashed_split(7, "x", 0.0) == "train" and hashed_split(7, "x", 1.0) == "val"
    # The documented rule: sha256("seed:frame_id"), first 8 bytes as a fraction of 2**64.
    u = int.from_bytes(hashlib.sha256(b"7:frame-0").digest()[:8], "big") / 2**64
    assert first[0] == ("val" if u < 0.25 else "train")
    assert assign_split(7, "x", 0.0, "test", keep_source_split=True) == "test"
    assert assign_split(7, "x", 0.0, "", keep_source_split=True) == "train"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (SnapshotSpec(name=""), "snapshot name"),
        (SnapshotSpec(name="a b"), "snapshot name"),
        (SnapshotSpec(name="ok", val_fraction=1.5), "val_fraction"),
        (SnapshotSpec(name="ok", val_fraction=float("nan")), "val_fraction"),
        (SnapshotSpec(name="ok", filter=SnapshotFilter(classes=("car", " "))), "blank"),
    ],
)
def test_bad_snapshot_requests_are_refused(spec: SnapshotSpec, match: str) -> None:
    # Names fail as kit.names.InvalidName (reason INVALID_NAME), the rest as BadRequest: both INVALID_ARGUMENT.
    with pytest.raises(InvalidArgument, match=match):
        check_spec(spec)


def test_settings_defaults_and_validation() -> None:
    cfg = load_settings(Settings, "CARMESH_FEATURE_", ["--mesh-plaintext"], environ={})
    assert (cfg.grpc_port, cfg.metrics_port) == (50063, 9463)
    assert cfg.postgres_dsn == "postgresql://postgres@127.0.0.1:5432/carmesh"
    assert cfg.redis_url == "redis://127.0.0.1:6379/0" and cfg.blob_dir == Path(".run/blobs")
    env = {"CARMESH_FEATURE_KAFKA_IDEMPOTENCE": "false", "CARMESH_FEATURE_CAR_CLASSES": "car,van"}
    cfg = load_settings(Settings, "CARMESH_FEATURE_", ["--mesh-plaintext", "--frames-batch-size", "8"], environ=env)
    assert (cfg.kafka_idempotence, cfg.car_classes, cfg.frames_batch_size) == (False, ["car", "van"], 8)
    for argv in (["--postgres-dsn", "mysql://x"], ["--blob-store", "s3"], ["--retry-max-s", "0.1"]):
        with pytest.raises(ConfigError):
            load_settings(Settings, "CARMESH_FEATURE_", ["--mesh-plaintext", *argv], environ={})


def test_migration_files_are_numbered_and_loadable(tmp_path: Path) -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    assert migrations[0].name == "0001_initial.sql"
    (tmp_path / "0001_a.sql").write_text("select 1")
    (tmp_path / "0001_b.sql").write_text("select 2")
    with pytest.raises(MigrationError, match="share a number"):
        load_migrations(tmp_path)
    (tmp_path / "2_bad.sql").write_text("select 3")
    with pytest.raises(MigrationError, match="not named"):
        load_migrations(tmp_path)


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EFBIG, "File too large"), False),
        (OSError(errno.ENAMETOOLONG, "File name too long"), False),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), True),
        (asyncpg.exceptions.InterfaceError("connection is closed"), True),
        # What asyncpg raises for a value it cannot encode: a data problem, retried for nothing.
        (asyncpg.exceptions._base.DataError("invalid input for query argument $1"), False),
        (asyncpg.exceptions.CheckViolationError("refused"), False),
    ],
)
def test_is_transient_tells_outages_from_bad_data(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
