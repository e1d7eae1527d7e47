"""Content-addressed blob stores for image bytes, keyed by sha256.

A blob is written once and never changed, so every write is idempotent and a replayed frame
finds its image already there. Methods are blocking: callers run them in a thread pool.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from feature_service.errors import BlobMissing

log = logging.getLogger(__name__)

# Temp files older than this are leftovers of a crashed writer, not a write in progress.
STALE_TMP_S = 3600.0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(digest: str) -> str:
    """``sha256/aa/bb/<sha256>``: two fan-out levels keep directories small."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{digest!r} is not a lowercase hex sha256")
    return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Stores ``data`` durably (once) and returns its sha256."""
        ...

    def get(self, digest: str) -> bytes:
        """The bytes of ``digest``; raises :class:`BlobMissing` when absent or corrupt."""
        ...

    def exists(self, digest: str) -> bool: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """Blobs under a directory: ``ROOT/sha256/aa/bb/<sha256>``; writes go to ``ROOT/tmp``, are
    fsynced and renamed into place, so a crash leaves either the whole blob or none of it."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self._tmp = self.root / "tmp"

    def open(self) -> None:
        """Creates the directories and removes temp files a crashed writer left behind."""
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for leftover in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - leftover.stat().st_mtime > STALE_TMP_S:
                    leftover.unlink()
                    log.info("removed stale temp blob %s", leftover.name)

    def path_for(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        target = self.path_for(digest)
        try:
            if target.stat().st_size == len(data):
                # A blob found is touched, as if written now: the garbage collector spares blobs
                # younger than its grace, which covers the row about to reference this one. Gone
                # meanwhile (collected): utime fails and the blob is written again below.
                os.utime(target)
                return digest
        except FileNotFoundError:
            pass
        self._ensure_dirs(target.parent)
        tmp = self._tmp / f"{digest}.{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(target.parent)  # the rename itself is durable only once its directory is
        return digest

    def _ensure_dirs(self, parent: Path) -> None:
        if parent.is_dir():
            return
        parent.mkdir(parents=True, exist_ok=True)
        # New fan-out directories must survive a crash too, so their parents are synced.
        _fsync_dir(parent.parent)
        _fsync_dir(parent.parent.parent)

    def get(self, digest: str) -> bytes:
        try:
            data = self.path_for(digest).read_bytes()
        except FileNotFoundError as exc:
            raise BlobMissing(f"image {digest} is missing from the blob store at {self.root}") from exc
        if sha256_hex(data) != digest:
            raise BlobMissing(f"image {digest} in the blob store at {self.root} is corrupt (sha256 mismatch)")
        return data

    def describe(self) -> str:
        return f"local directory {self.root}"

    def close(self) -> None:
        pass


class S3BlobStore:
    """Blobs in an S3-compatible bucket under ``PREFIX/sha256/aa/bb/<sha256>``.

    UNTESTED here: no S3 endpoint (nor boto3) is available on the development machines. It needs
    ``boto3`` installed and credentials in the usual AWS environment/config. PutObject is atomic
    (no partial objects) and carries the sha256, which S3 checks before storing.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str = "") -> None:
        try:
            import boto3  # optional dependency: only clusters using S3 install it
        except ImportError as exc:
            raise RuntimeError("blob_store=s3 needs boto3: pip install boto3") from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client: Any = boto3.client("s3", endpoint_url=endpoint_url or None)

    def _key(self, digest: str) -> str:
        return f"{self.prefix}/{blob_key(digest)}" if self.prefix else blob_key(digest)

    def exists(self, digest: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(digest))
        except self._client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        if not self.exists(digest):
            checksum = base64.b64encode(bytes.fromhex(digest)).decode()
            self._client.put_object(Bucket=self.bucket, Key=self._key(digest), Body=data, ChecksumSHA256=checksum)
        return digest

    def get(self, digest: str) -> bytes:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self._key(digest))
        except self._client.exceptions.NoSuchKey as exc:
            raise BlobMissing(f"image {digest} is missing from s3://{self.bucket}/{self.prefix}") from exc
        data: bytes = reply["Body"].read()
        if sha256_hex(data) != digest:
            raise BlobMissing(f"image {digest} in s3://{self.bucket}/{self.prefix} is corrupt (sha256 mismatch)")
        return data

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def close(self) -> None:
        self._client.close()
