"""The detector's model cache on disk: the last-known-good record (hostile contents ignored, never
trusted over the file's sha256) and the size bound (least recently used out, never the served
or last-known-good model)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from detector.engine import ModelRef, ModelSpec
from detector.model_cache import LAST_GOOD_FILE, ModelCache
from kit.lru_files import Trim


def _put(cache: ModelCache, data: bytes, used_at_s: float) -> str:
    sha = hashlib.sha256(data).hexdigest()
    path = cache.path_for(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (used_at_s, used_at_s))
    return sha


def _spec(sha: str, name: str = "car-detector", alias: str = "champion") -> ModelSpec:
    return ModelSpec(ModelRef(name, "7", alias), "yolov8", ("car", "truck"), (64, 96), sha)


def test_the_last_known_good_record_round_trips(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    sha = _put(cache, b"model one", 1000)
    assert cache.last_good() is None
    cache.remember(_spec(sha))
    found = cache.last_good()
    assert found == (cache.path_for(sha), _spec(sha))
    assert not list(tmp_path.glob(".last-good-*")), "no temporary file is left behind"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"name": 1}',
        json.dumps(
            {
                "name": "m",
                "version": "1",
                "alias": "a",
                "family": "yolov8",
                "sha256": "../../etc/passwd",
                "class_names": [],
                "input_hw": [64, 64],
            }
        ).encode(),
        json.dumps(
            {
                "name": "m",
                "version": "1",
                "alias": "a",
                "family": "yolov8",
                "sha256": "a" * 64,
                "class_names": "car",
                "input_hw": [64, 64],
            }
        ).encode(),
        json.dumps(
            {
                "name": "m",
                "version": "1",
                "alias": "a",
                "family": "yolov8",
                "sha256": "a" * 64,
                "class_names": [],
                "input_hw": [64, 10**9],
            }
        ).encode(),
        b" " * (70 * 1024) + b"{}",
    ],
)
def test_a_hostile_record_is_ignored(tmp_path: Path, content: bytes) -> None:
    cache = ModelCache(tmp_path)
    (tmp_path / LAST_GOOD_FILE).write_bytes(content)
    assert cache.last_good() is None


def test_a_record_whose_file_is_gone_or_altered_is_not_served(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    sha = _put(cache, b"model one", 1000)
    cache.remember(_spec(sha))
    cache.path_for(sha).write_bytes(b"model one, altered")
    assert cache.last_good() is None
    assert not cache.path_for(sha).exists(), "a corrupt file is removed"


def test_trim_evicts_least_recently_used_but_never_the_served_or_last_good_model(tmp_path: Path) -> None:
    trims: list[Trim] = []
    cache = ModelCache(tmp_path, max_bytes=25, on_trim=trims.append)
    oldest = _put(cache, b"a" * 10, 1000)  # last known good: kept although oldest
    old = _put(cache, b"b" * 10, 2000)
    served = _put(cache, b"c" * 10, 3000)  # in use: kept
    newer = _put(cache, b"d" * 10, 4000)
    newest = _put(cache, b"e" * 10, 5000)
    cache.remember(_spec(oldest))
    result = cache.trim((served,))
    # 50 bytes over a 25-byte bound: the unprotected files go oldest first until it fits or none is left.
    assert {p.name for p in result.removed} == {f"{old}.onnx", f"{newer}.onnx"}
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == sorted(f"{s}.onnx" for s in (oldest, served, newest))
    assert (result.removed_bytes, result.kept_bytes) == (20, 30)
    assert trims == [result]


def test_a_lookup_marks_the_file_as_used(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=15)
    first = _put(cache, b"a" * 10, 1000)
    second = _put(cache, b"b" * 10, 2000)
    assert cache.lookup(first) is not None  # now the most recently used
    third = _put(cache, b"c" * 10, 3000)
    os.utime(cache.path_for(third), (900, 900))  # older than the looked-up file, and not the newest either
    cache.trim()
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == [f"{first}.onnx"]
    assert not cache.path_for(second).exists()


def test_no_bound_keeps_everything(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=0)
    shas = [_put(cache, bytes([i]) * 100, 1000 + i) for i in range(5)]
    assert cache.trim().removed == ()
    assert all(cache.path_for(s).exists() for s in shas)
