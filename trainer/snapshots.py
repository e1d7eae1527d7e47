"""Dataset snapshots from feature_service, cached locally as a COCO folder per snapshot.

Snapshots are immutable (name + version), so a cached copy never goes stale: the first job
on a snapshot streams it once (StreamDataset) and later jobs read the folder. The cache is
written to a temporary folder and renamed into place, so a crash never leaves a half copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from carmesh.v1 import common_pb2, feature_pb2, feature_pb2_grpc
from kit.mesh_tls import MeshTls, mesh_channel
from kit.server import channel_options
from trainer.errors import BadRequest, DatasetNotFound, UpstreamUnavailable

log = logging.getLogger(__name__)

_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,254})(?::(?P<version>[0-9]+))?$")
_SPLIT_FILES = {common_pb2.SPLIT_TRAIN: "train", common_pb2.SPLIT_VAL: "val", common_pb2.SPLIT_TEST: "test"}
MANIFEST = "snapshot.manifest"
_SUFFIX = {common_pb2.IMAGE_ENCODING_JPEG: ".jpg", common_pb2.IMAGE_ENCODING_PNG: ".png"}


_OPTIONS = channel_options(64 * 1024 * 1024)


@dataclass(frozen=True)
class SnapshotRef:
    name: str
    version: int  # 0: the latest

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name


def parse_ref(text: str) -> SnapshotRef:
    match = _REF.match(text.strip())
    if not match:
        raise BadRequest(f"data set {text!r} is neither a folder nor a snapshot reference like 'apollo' or 'apollo:2'")
    return SnapshotRef(match["name"], int(match["version"] or 0))


def looks_like_folder(text: str) -> bool:
    return "/" in text or text.startswith(".") or Path(text).expanduser().is_dir()


@dataclass(frozen=True)
class CachedSnapshot:
    ref: SnapshotRef  # resolved: version > 0
    path: Path
    frames: int


async def resolve(
    feature_addr: str, ref: SnapshotRef, timeout_s: float = 10.0, *, tls: MeshTls | None = None
) -> SnapshotRef:
    """The snapshot's concrete version (the latest when ``ref.version`` is 0)."""
    async with mesh_channel(feature_addr, tls, _OPTIONS) as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        versions: list[int] = []
        request = feature_pb2.ListDatasetSnapshotsRequest(name=ref.name, page_size=1000)
        try:
            while True:
                reply = await stub.ListDatasetSnapshots(request, timeout=timeout_s)
                versions += [int(s.version) for s in reply.snapshots if s.name == ref.name]
                if not reply.next_page_token:
                    break
                request.page_token = reply.next_page_token
        except grpc.aio.AioRpcError as exc:
            raise _upstream(feature_addr, exc) from exc
    versions.sort()
    if not versions:
        raise DatasetNotFound(f"no dataset snapshot named {ref.name!r}; create one with `carmesh datasets create`")
    if ref.version == 0:
        return SnapshotRef(ref.name, versions[-1])
    if ref.version not in versions:
        raise DatasetNotFound(f"snapshot {ref.name!r} has versions {versions}, not {ref.version}")
    return ref


async def materialize(
    feature_addr: str,
    ref: SnapshotRef,
    cache_root: Path,
    on_progress: Callable[[int, int], Awaitable[None]] | None = None,
    *,
    tls: MeshTls | None = None,
) -> CachedSnapshot:
    """Returns the local COCO folder of the snapshot, streaming it from feature_service if not cached."""
    resolved = await resolve(feature_addr, ref, tls=tls)
    target = cache_root / resolved.name / f"v{resolved.version}"
    frames = await asyncio.to_thread(_cached_frames, target)
    if frames:
        return CachedSnapshot(resolved, target, frames)
    staging = await asyncio.to_thread(_staging_dir, cache_root, resolved)
    try:
        frames = await _download(feature_addr, resolved, staging, on_progress, tls)
        await asyncio.to_thread(_move_into_place, staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("cached snapshot %s:%d (%d frames) in %s", resolved.name, resolved.version, frames, target)
    return CachedSnapshot(resolved, target, frames)


def _cached_frames(target: Path) -> int:
    manifest = target / MANIFEST
    return int(json.loads(manifest.read_text())["frames"]) if manifest.is_file() else 0


def _staging_dir(cache_root: Path, ref: SnapshotRef) -> Path:
    cache_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{ref.name}-v{ref.version}-", dir=cache_root))


def _move_into_place(staging: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another job cached it meanwhile: the same immutable content
        shutil.rmtree(staging)
    else:
        staging.rename(target)


class CocoWriter:
    """Writes frames as a COCO folder: ``images/``, one ``<split>.json`` per split (ignore -> iscrowd),
    and the manifest that marks the cache complete."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.images_dir = folder / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._docs: dict[str, dict[str, Any]] = {}
        self._categories: dict[str, int] = {}
        self.count = 0

    def add(self, frame: common_pb2.Frame) -> None:
        split = _SPLIT_FILES.get(frame.split, "train")
        doc = self._docs.setdefault(split, {"images": [], "annotations": [], "categories": []})
        file_name = f"{_safe(frame.frame_id)}{_SUFFIX.get(frame.encoding, '.img')}"
        (self.images_dir / file_name).write_bytes(frame.image)
        image_id = len(doc["images"]) + 1
        doc["images"].append({"id": image_id, "file_name": file_name, "width": frame.width, "height": frame.height})
        for ann in frame.annotations:
            category = self._categories.setdefault(ann.class_name or str(ann.class_id), len(self._categories) + 1)
            b = ann.box
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1],
                    "iscrowd": int(ann.ignore),
                }
            )
        self.count += 1

    def finish(self, ref: SnapshotRef) -> None:
        cats = [{"id": i, "name": n} for n, i in sorted(self._categories.items(), key=lambda kv: kv[1])]
        for split, doc in self._docs.items():
            doc["categories"] = cats
            (self.folder / f"{split}.json").write_text(json.dumps(doc))
        # Written last: its presence marks a complete cache. Not *.json: the COCO reader takes those.
        manifest = {"name": ref.name, "version": ref.version, "frames": self.count}
        (self.folder / MANIFEST).write_text(json.dumps(manifest))


async def _download(
    feature_addr: str,
    ref: SnapshotRef,
    folder: Path,
    on_progress: Callable[[int, int], Awaitable[None]] | None,
    tls: MeshTls | None,
) -> int:
    writer = CocoWriter(folder)
    async with mesh_channel(feature_addr, tls, _OPTIONS) as channel:
        stub = feature_pb2_grpc.FeatureServiceStub(channel)
        try:
            request = feature_pb2.StreamDatasetRequest(name=ref.name, version=str(ref.version))
            async for reply in stub.StreamDataset(request):
                await asyncio.to_thread(writer.add, reply.frame)
                if on_progress is not None:
                    await on_progress(writer.count, int(reply.total))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise DatasetNotFound(exc.details() or f"snapshot {ref} not found") from exc
            raise _upstream(feature_addr, exc) from exc
    if writer.count == 0:
        raise DatasetNotFound(f"snapshot {ref} has no frames")
    await asyncio.to_thread(writer.finish, ref)
    return writer.count


def _safe(frame_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", frame_id)[:200] or "frame"


def _upstream(addr: str, exc: grpc.aio.AioRpcError) -> Exception:
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return BadRequest(exc.details() or "feature_service refused the request")
    return UpstreamUnavailable(f"feature_service at {addr} failed: {exc.code().name}: {exc.details()}")
