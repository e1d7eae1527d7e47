"""The one sha256 of a file, against hashlib over the whole bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kit.hashing import sha256_file


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    # Larger than one read block of hashlib.file_digest, with a ragged tail.
    data = bytes(range(256)) * 5000 + b"tail"
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_sha256_file_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert sha256_file(path) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
