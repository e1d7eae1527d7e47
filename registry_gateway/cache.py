"""Local cache of ONNX files, named by sha256: each version is fetched from MLflow once,
verified, and then served from disk. Bounded in size: after each download the least recently
served files go (kit/lru_files.py), never one handed out within the last minute (a download
stream opens its file right after fetch; one already open reads on after a removal)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kit.hashing import sha256_file
from kit.lru_files import Trim, touch, trim_lru
from kit.registry_tags import TAG_SHA256
from registry_gateway.errors import DataLoss, FailedPrecondition
from registry_gateway.mlflow_store import MlflowStore
from registry_gateway.schema import ModelVersionInfo

log = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Files handed out this recently are never evicted: their download stream may not have opened them yet.
RECENT_USE_S = 60.0


class ArtifactCache:
    """``root/<sha256>.onnx`` files; ``root/tmp`` holds downloads and uploads in progress."""

    def __init__(
        self, root: Path, store: MlflowStore, max_bytes: int = 0, on_trim: Callable[[Trim], None] | None = None
    ) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self._store = store
        self.max_bytes = max_bytes
        self._on_trim = on_trim
        # One download per file however many clients ask for it at once.
        self._inflight: dict[str, asyncio.Task[Path]] = {}

    def open(self) -> None:
        """Creates the directories and drops partial files a killed process left behind."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def path_of(self, sha256: str) -> Path:
        return self.root / f"{sha256}.onnx"

    async def fetch(self, info: ModelVersionInfo) -> Path:
        """The cached file of ``info``, downloading and verifying it first when missing."""
        sha = info.sha256.lower()
        if not _SHA256_RE.match(sha):
            raise FailedPrecondition(
                f"model {info.name!r} version {info.version} has no valid {TAG_SHA256} tag ({info.sha256!r}); "
                "it cannot be verified, so it is not served (see docs/registry.md for the tag schema)",
                reason="UNVERIFIABLE_MODEL",
            )
        path = self.path_of(sha)
        if path.exists():
            if not info.size_bytes or path.stat().st_size == info.size_bytes:
                await asyncio.to_thread(touch, path)
                return path
            log.warning("cached %s has the wrong size; fetching it again", path)
            path.unlink(missing_ok=True)
        task = self._inflight.get(sha)
        if task is None:
            task = asyncio.create_task(self._download(info, sha, path))
            self._inflight[sha] = task
            task.add_done_callback(lambda done: self._forget(sha, done))
        # Shielded: a client that goes away does not abort a download others may be waiting on.
        return await asyncio.shield(task)

    def _forget(self, sha: str, task: asyncio.Task[Path]) -> None:
        self._inflight.pop(sha, None)
        # Marks the error as seen even when every waiter left before it arrived.
        if not task.cancelled():
            task.exception()

    async def _download(self, info: ModelVersionInfo, sha: str, path: Path) -> Path:
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="download-", dir=self.tmp))
        try:
            log.info("downloading %s version %s from %s", info.name, info.version, info.source)
            fetched = await self._store.download(info, work)
            digest = await asyncio.to_thread(sha256_file, fetched)
            size = fetched.stat().st_size
            if digest != sha:
                raise DataLoss(
                    f"the artifact of model {info.name!r} version {info.version} has sha256 {digest} "
                    f"({size} bytes) but the registry records {sha}; the stored file is not the registered one",
                    reason="CHECKSUM_MISMATCH",
                )
            await asyncio.to_thread(os.replace, fetched, path)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        await asyncio.to_thread(self.trim)
        return path

    def trim(self) -> Trim:
        """Evicts least recently served files over ``max_bytes`` (blocking: run it in a thread)."""
        recent = time.time() - RECENT_USE_S
        in_use = [p for p in self.root.glob("*.onnx") if _mtime(p) >= recent]
        result = trim_lru(self.root, "*.onnx", self.max_bytes, in_use)
        for path in result.removed:
            log.info("evicted %s from the artifact cache (bound %d bytes)", path.name, self.max_bytes)
        if self._on_trim is not None:
            self._on_trim(result)
        return result


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
