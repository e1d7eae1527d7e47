"""The download cache: verifies what the registry streams and names files by sha256."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from carmesh.v1 import registry_pb2
from detector.errors import DownloadError
from detector.registry_source import ModelCache, spec_of

BLOB = bytes(range(256)) * 40  # 10 KiB
SHA = hashlib.sha256(BLOB).hexdigest()


async def stream(*messages: registry_pb2.DownloadModelResponse) -> AsyncIterator[registry_pb2.DownloadModelResponse]:
    for message in messages:
        yield message


def version(**fields: object) -> registry_pb2.DownloadModelResponse:
    base: dict[str, object] = {"name": "car-detector", "version": "3", "sha256": SHA, "size_bytes": len(BLOB)}
    base.update(fields)
    return registry_pb2.DownloadModelResponse(version=registry_pb2.ModelVersion(**base))  # type: ignore[arg-type]


def chunks(data: bytes, size: int = 3000) -> list[registry_pb2.DownloadModelResponse]:
    return [registry_pb2.DownloadModelResponse(chunk=data[i : i + size]) for i in range(0, len(data), size)]


async def test_store_writes_a_verified_file_named_by_sha(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    got, path = await cache.store(stream(version(), *chunks(BLOB)), "3")
    assert got.version == "3" and path == tmp_path / "cache" / f"{SHA}.onnx"
    assert path.read_bytes() == BLOB
    assert cache.lookup(SHA) == path
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{SHA}.onnx"]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([version(sha256="0" * 64), *chunks(BLOB)], "sha256 mismatch"),
        ([version(), *chunks(BLOB[:-10])], "ended at"),
        ([version(), *chunks(BLOB + b"extra")], "exceeds"),
        ([*chunks(BLOB)], "did not start with the model version"),
        ([version(version="4"), *chunks(BLOB)], "asked for version 3"),
        ([version(), *chunks(BLOB[:100]), version()], "second version"),
        ([], "empty"),
    ],
)
async def test_store_rejects_bad_streams_and_leaves_nothing(
    tmp_path: Path, messages: list[registry_pb2.DownloadModelResponse], message: str
) -> None:
    cache = ModelCache(tmp_path)
    with pytest.raises(DownloadError, match=message):
        await cache.store(stream(*messages), "3")
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_store_without_sha_keys_by_the_received_bytes(tmp_path: Path) -> None:
    _, path = await ModelCache(tmp_path).store(stream(version(sha256="", size_bytes=0), *chunks(BLOB)), "3")
    assert path.name == f"{SHA}.onnx"


def test_lookup_drops_a_corrupt_cached_file(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    cache.path_for(SHA).write_bytes(BLOB[:-1] + b"x")
    assert cache.lookup(SHA) is None
    assert not cache.path_for(SHA).exists()
    assert cache.lookup("") is None


def test_spec_of_maps_registry_metadata() -> None:
    v = registry_pb2.ModelVersion(
        name="car-detector",
        version="7",
        family=registry_pb2.MODEL_FAMILY_YOLOX,
        class_names=["car", "van"],
        input_width=416,
        input_height=320,
        sha256=SHA,
    )
    spec = spec_of(v, "champion", (640, 640))
    assert (spec.family, spec.class_names, spec.input_hw, spec.sha256) == ("yolox", ("car", "van"), (320, 416), SHA)
    assert (spec.ref.name, spec.ref.version, spec.ref.alias) == ("car-detector", "7", "champion")
    bare = spec_of(registry_pb2.ModelVersion(name="m", version="1"), "", (640, 480))
    assert (bare.family, bare.input_hw, bare.class_names) == ("yolov8", (640, 480), ())
