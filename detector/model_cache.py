"""The detector's local model files: downloads named ``<sha256>.onnx`` (verified, written to a
temporary name then renamed, so a crash never leaves a partial file under a valid name), kept
under a size bound (least recently used out, never the model served), and the last-known-good
record: the spec of the last registry model that loaded, so a restart can serve it while the
registry or MLflow is down."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from carmesh.v1 import registry_pb2
from detector.engine import ModelRef, ModelSpec
from detector.errors import DownloadError
from kit.hashing import sha256_file
from kit.lru_files import Trim, touch, trim_lru

log = logging.getLogger(__name__)

LAST_GOOD_FILE = "last-known-good.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A hand-edited or corrupt record must not make the detector read megabytes of JSON at start.
_MAX_RECORD_BYTES = 64 * 1024


def _spec_record(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.ref.name,
        "version": spec.ref.version,
        "alias": spec.ref.alias,
        "family": spec.family,
        "class_names": list(spec.class_names),
        "input_hw": list(spec.input_hw),
        "sha256": spec.sha256,
    }


def _spec_from_record(raw: object) -> ModelSpec:
    """The spec of a last-known-good record; ValueError for anything that is not one."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    text = {k: raw.get(k) for k in ("name", "version", "alias", "family", "sha256")}
    if not all(isinstance(v, str) for v in text.values()):
        raise ValueError("name, version, alias, family and sha256 must be strings")
    sha = str(text["sha256"])
    if not _SHA256_RE.match(sha):
        raise ValueError(f"sha256 {sha!r} is not 64 lowercase hex digits")
    names, hw = raw.get("class_names"), raw.get("input_hw")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("class_names must be a list of strings")
    if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and 32 <= v <= 8192 for v in hw)):
        raise ValueError("input_hw must be [height, width] in 32..8192")
    return ModelSpec(
        ref=ModelRef(str(text["name"]), str(text["version"]), str(text["alias"])),
        family=str(text["family"]),
        class_names=tuple(names),
        input_hw=(hw[0], hw[1]),
        sha256=sha,
    )


class ModelCache:
    """``root/<sha256>.onnx`` files, at most ``max_bytes`` of them (0: unbounded), and the
    last-known-good record ``root/last-known-good.json``."""

    def __init__(self, root: Path, max_bytes: int = 0, on_trim: Callable[[Trim], None] | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._on_trim = on_trim

    def path_for(self, sha256: str) -> Path:
        return self.root / f"{sha256}.onnx"

    def lookup(self, sha256: str) -> Path | None:
        """The cached file when present and intact (re-hashed: blocking, run it in a thread)."""
        if not sha256:
            return None
        path = self.path_for(sha256)
        if not path.is_file():
            return None
        if sha256_file(path) != sha256:
            log.warning("cached model %s is corrupt; downloading it again", path)
            path.unlink(missing_ok=True)
            return None
        touch(path)
        return path

    def trim(self, keep: tuple[str, ...] = ()) -> Trim:
        """Evicts least recently used files over the bound, never those of ``keep`` (sha256s) nor
        the last-known-good model (blocking: run it in a thread)."""
        protected = [self.path_for(sha) for sha in keep if sha]
        last = self._read_last_good()
        if last is not None:
            protected.append(self.path_for(last.sha256))
        result = trim_lru(self.root, "*.onnx", self.max_bytes, protected)
        for path in result.removed:
            log.info("evicted %s from the model cache (bound %d bytes)", path.name, self.max_bytes)
        if self._on_trim is not None:
            self._on_trim(result)
        return result

    # -- last known good -----------------------------------------------------------------

    def remember(self, spec: ModelSpec) -> None:
        """Records ``spec`` (whose file is in the cache and just loaded) as last known good; atomic."""
        if not _SHA256_RE.match(spec.sha256):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".last-good-", suffix=".part", dir=self.root)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(_spec_record(spec), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(name, self.root / LAST_GOOD_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise

    def _read_last_good(self) -> ModelSpec | None:
        path = self.root / LAST_GOOD_FILE
        try:
            with path.open("rb") as fh:
                data = fh.read(_MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the last-known-good record %s: %s", path, exc)
            return None
        try:
            if len(data) > _MAX_RECORD_BYTES:
                raise ValueError(f"over {_MAX_RECORD_BYTES} bytes")
            return _spec_from_record(json.loads(data))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("ignoring the last-known-good record %s: %s", path, exc)
            return None

    def last_good(self) -> tuple[Path, ModelSpec] | None:
        """The last-known-good model when its record is sound and its file intact (blocking)."""
        spec = self._read_last_good()
        if spec is None:
            return None
        path = self.lookup(spec.sha256)
        if path is None:
            log.warning(
                "the last-known-good model %s v%s is no longer in %s", spec.ref.name, spec.ref.version, self.root
            )
            return None
        return path, spec

    # -- downloads -----------------------------------------------------------------------

    def _open_part(self) -> tuple[int, Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=self.root)
        return fd, Path(name)

    async def store(
        self, responses: AsyncIterator[registry_pb2.DownloadModelResponse], expected_version: str
    ) -> tuple[registry_pb2.ModelVersion, Path]:
        """Consumes a DownloadModel stream (version first, then chunks); verifies size and sha256."""
        iterator = responses.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            raise DownloadError("download stream was empty") from None
        if first.WhichOneof("payload") != "version":
            raise DownloadError("download stream did not start with the model version")
        version = first.version
        if expected_version and version.version != expected_version:
            raise DownloadError(f"asked for version {expected_version}, registry sent {version.version}")
        fd, tmp = await asyncio.to_thread(self._open_part)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                async for message in iterator:
                    if message.WhichOneof("payload") != "chunk":
                        raise DownloadError("download stream sent a second version message")
                    size += len(message.chunk)
                    if version.size_bytes and size > version.size_bytes:
                        raise DownloadError(f"download exceeds the announced {version.size_bytes} bytes")
                    digest.update(message.chunk)
                    await asyncio.to_thread(fh.write, message.chunk)
            if version.size_bytes and size != version.size_bytes:
                raise DownloadError(f"download ended at {size} of {version.size_bytes} bytes")
            actual = digest.hexdigest()
            if version.sha256 and actual != version.sha256.lower():
                raise DownloadError(f"sha256 mismatch: registry says {version.sha256}, received {actual}")
            if not version.sha256:
                log.warning(
                    "registry sent %s v%s without sha256; keyed by the received bytes", version.name, version.version
                )
            final = self.path_for(actual)
            await asyncio.to_thread(os.replace, tmp, final)
        except BaseException:
            # Also on cancellation, where awaiting a thread is not possible; one unlink is quick.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return version, final
