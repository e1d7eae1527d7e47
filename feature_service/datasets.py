"""Dataset snapshots: an immutable, versioned set of stored frames with a train/val(/test) split,
and the stream of its examples (image bytes from the blob store, annotations from PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from feature_service.blobs import BlobStore
from feature_service.db import unavailable_as
from feature_service.errors import BadRequest, EmptySnapshot, SnapshotNotFound
from feature_service.imaging import Features
from feature_service.validation import AnnotationRow, StoredFrame
from kit.names import validate_name

SPLITS = ("train", "val", "test")

_SELECT_FRAMES = """
SELECT f.frame_id, f.split FROM frames f
WHERE ($1::text[] IS NULL OR f.camera_id = ANY($1))
  AND ($2::text[] IS NULL OR f.dataset = ANY($2))
  AND ($3::timestamptz IS NULL OR f.captured_at >= $3)
  AND ($4::timestamptz IS NULL OR f.captured_at < $4)
  AND (NOT $5 OR EXISTS (SELECT 1 FROM annotations a WHERE a.frame_id = f.frame_id AND NOT a.ignore))
  AND ($6::text[] IS NULL OR EXISTS (
        SELECT 1 FROM annotations a WHERE a.frame_id = f.frame_id AND NOT a.ignore AND a.class_name = ANY($6)))
  AND f.dataset_namespace = $7
ORDER BY f.captured_at, f.frame_id
"""

_CLASS_NAMES = """
SELECT DISTINCT class_name FROM annotations
WHERE frame_id = ANY($1) AND NOT ignore AND ($2::text[] IS NULL OR class_name = ANY($2))
"""

_SNAPSHOT_COLUMNS = (
    "snapshot_id, name, version, filter, val_fraction, seed, keep_source_split, train_frames, val_frames, "
    "test_frames, class_names, created_at"
)

_PAGE = """
SELECT sf.position, f.frame_id, f.camera_id, f.seq, f.captured_at, f.encoding, f.width, f.height, f.image_sha256,
       f.source, f.dataset, f.dataset_namespace, f.brightness, f.contrast, f.sharpness
FROM snapshot_frames sf JOIN frames f USING (frame_id)
WHERE sf.snapshot_id = $1 AND sf.split = $2 AND sf.position >= $3
ORDER BY sf.position
LIMIT $4
"""

_PAGE_ANNOTATIONS = """
SELECT frame_id, class_id, class_name, x1, y1, x2, y2, ignore FROM annotations
WHERE frame_id = ANY($1) AND ($2::text[] IS NULL OR ignore OR class_name = ANY($2))
ORDER BY frame_id, idx
"""


@dataclass(frozen=True)
class SnapshotFilter:
    camera_ids: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    captured_after: datetime | None = None
    captured_before: datetime | None = None
    labelled_only: bool = False
    classes: tuple[str, ...] = ()
    # Always applied: '' (the operator's imports and sources) unless a client key's name is given.
    dataset_namespace: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "camera_ids": list(self.camera_ids),
                "datasets": list(self.datasets),
                "captured_after": self.captured_after.isoformat() if self.captured_after else None,
                "captured_before": self.captured_before.isoformat() if self.captured_before else None,
                "labelled_only": self.labelled_only,
                "classes": list(self.classes),
                "dataset_namespace": self.dataset_namespace,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> SnapshotFilter:
        data: dict[str, Any] = json.loads(raw)
        after, before = data.get("captured_after"), data.get("captured_before")
        return cls(
            camera_ids=tuple(data.get("camera_ids", ())),
            datasets=tuple(data.get("datasets", ())),
            captured_after=datetime.fromisoformat(after) if after else None,
            captured_before=datetime.fromisoformat(before) if before else None,
            labelled_only=bool(data.get("labelled_only", False)),
            classes=tuple(data.get("classes", ())),
            dataset_namespace=str(data.get("dataset_namespace", "")),
        )

    def describe(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("camera_ids", list(self.camera_ids)),
                ("datasets", list(self.datasets)),
                ("captured_after", self.captured_after.isoformat() if self.captured_after else None),
                ("captured_before", self.captured_before.isoformat() if self.captured_before else None),
                ("labelled_only", self.labelled_only or None),
                ("classes", list(self.classes)),
                ("dataset_namespace", self.dataset_namespace),
            )
            if value
        ]
        return ", ".join(parts) or "no filter"


@dataclass(frozen=True)
class SnapshotSpec:
    name: str
    filter: SnapshotFilter = field(default_factory=SnapshotFilter)
    val_fraction: float = 0.0
    seed: int = 0
    keep_source_split: bool = False


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: int
    name: str
    version: int
    filter: SnapshotFilter
    val_fraction: float
    seed: int
    keep_source_split: bool
    train_frames: int
    val_frames: int
    test_frames: int
    class_names: tuple[str, ...]
    created_at: datetime

    def frames_in(self, split: str) -> int:
        return {"train": self.train_frames, "val": self.val_frames, "test": self.test_frames}[split]


@dataclass(frozen=True)
class Example:
    index: int
    total: int
    frame: StoredFrame  # split: the split this snapshot assigned


def hashed_split(seed: int, frame_id: str, val_fraction: float) -> str:
    """Deterministic: the same (seed, frame_id) lands in the same split in every snapshot, whatever
    else the snapshot holds, so adding frames never moves old ones between train and val."""
    digest = hashlib.sha256(f"{seed}:{frame_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "train"


def assign_split(seed: int, frame_id: str, val_fraction: float, source_split: str, keep_source_split: bool) -> str:
    if keep_source_split and source_split in SPLITS:
        return source_split
    return hashed_split(seed, frame_id, val_fraction)


def _clean_list(name: str, values: Sequence[str], kind: str = "") -> tuple[str, ...]:
    cleaned = tuple(v.strip() for v in values)
    if any(not v for v in cleaned):
        raise BadRequest(f"filter.{name} has a blank entry", field=f"filter.{name}")
    for value in cleaned if kind else ():
        validate_name(kind, value, f"filter.{name}")
    return tuple(dict.fromkeys(cleaned))


def check_spec(spec: SnapshotSpec) -> SnapshotSpec:
    validate_name("snapshot name", spec.name, "name")
    if not math.isfinite(spec.val_fraction) or not 0.0 <= spec.val_fraction <= 1.0:
        raise BadRequest(f"val_fraction must be in [0, 1], got {spec.val_fraction}", field="val_fraction")
    flt = spec.filter
    after, before = flt.captured_after, flt.captured_before
    if after is not None and before is not None and after >= before:
        raise BadRequest(
            f"filter.captured_after ({after.isoformat()}) must be before captured_before",
            field="filter.captured_after",
        )
    cleaned = SnapshotFilter(
        camera_ids=_clean_list("camera_ids", flt.camera_ids, "camera id"),
        datasets=_clean_list("datasets", flt.datasets, "data set"),
        captured_after=after,
        captured_before=before,
        labelled_only=flt.labelled_only,
        classes=_clean_list("classes", flt.classes),
        dataset_namespace=flt.dataset_namespace.strip(),
    )
    return SnapshotSpec(spec.name, cleaned, spec.val_fraction, spec.seed, spec.keep_source_split)


def _snapshot(row: asyncpg.Record) -> Snapshot:
    return Snapshot(
        snapshot_id=row["snapshot_id"],
        name=row["name"],
        version=row["version"],
        filter=SnapshotFilter.from_json(row["filter"]),
        val_fraction=row["val_fraction"],
        seed=row["seed"],
        keep_source_split=row["keep_source_split"],
        train_frames=row["train_frames"],
        val_frames=row["val_frames"],
        test_frames=row["test_frames"],
        class_names=tuple(row["class_names"]),
        created_at=row["created_at"],
    )


def _or_none(values: tuple[str, ...]) -> list[str] | None:
    return list(values) if values else None


class Datasets:
    def __init__(self, pool: asyncpg.Pool, blobs: BlobStore, executor: Executor, page_frames: int) -> None:
        self._pool = pool
        self._blobs = blobs
        self._executor = executor
        self._page_frames = page_frames

    async def create(self, spec: SnapshotSpec) -> Snapshot:
        spec = check_spec(spec)
        flt = spec.filter
        async with unavailable_as("PostgreSQL"), self._pool.acquire() as conn, conn.transaction():
            # Snapshots of one name are numbered one at a time.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"carmesh.snapshot:{spec.name}")
            rows = await conn.fetch(
                _SELECT_FRAMES,
                _or_none(flt.camera_ids),
                _or_none(flt.datasets),
                flt.captured_after,
                flt.captured_before,
                flt.labelled_only,
                _or_none(flt.classes),
                flt.dataset_namespace,
            )
            if not rows:
                raise EmptySnapshot(f"no stored frame matches the filter of snapshot {spec.name!r} ({flt.describe()})")
            by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
            for row in rows:
                split = assign_split(
                    spec.seed, row["frame_id"], spec.val_fraction, row["split"], spec.keep_source_split
                )
                by_split[split].append(row["frame_id"])
            frame_ids = [row["frame_id"] for row in rows]
            classes = sorted(r["class_name"] for r in await conn.fetch(_CLASS_NAMES, frame_ids, _or_none(flt.classes)))
            version = await conn.fetchval(
                "SELECT COALESCE(max(version), 0) + 1 FROM dataset_snapshots WHERE name = $1", spec.name
            )
            row = await conn.fetchrow(
                f"""INSERT INTO dataset_snapshots (name, version, filter, val_fraction, seed, keep_source_split,
                                                   train_frames, val_frames, test_frames, class_names)
                    VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10)
                    RETURNING {_SNAPSHOT_COLUMNS}""",
                spec.name,
                version,
                flt.to_json(),
                spec.val_fraction,
                spec.seed,
                spec.keep_source_split,
                len(by_split["train"]),
                len(by_split["val"]),
                len(by_split["test"]),
                classes,
            )
            assert row is not None
            snapshot = _snapshot(row)
            await conn.copy_records_to_table(
                "snapshot_frames",
                records=[
                    (snapshot.snapshot_id, split, position, frame_id)
                    for split, ids in by_split.items()
                    for position, frame_id in enumerate(ids)
                ],
                columns=["snapshot_id", "split", "position", "frame_id"],
            )
        return snapshot

    async def list_snapshots(
        self, name: str = "", after: tuple[str, int] = ("", 0), limit: int | None = None
    ) -> list[Snapshot]:
        """Snapshots by name then version, those after ``after`` (keyset paging), at most ``limit``."""
        async with unavailable_as("PostgreSQL"):
            rows = await self._pool.fetch(
                f"""SELECT {_SNAPSHOT_COLUMNS} FROM dataset_snapshots
                    WHERE ($1 = '' OR name = $1) AND (name, version) > ($2, $3)
                    ORDER BY name, version LIMIT $4""",
                name,
                after[0],
                after[1],
                limit,
            )
        return [_snapshot(r) for r in rows]

    async def get(self, name: str, version: int = 0) -> Snapshot:
        if not name:
            raise BadRequest("name is required", field="name")
        if version < 0:
            raise BadRequest(f"version must be >= 1 (or 0 for the latest), got {version}", field="version")
        async with unavailable_as("PostgreSQL"):
            row = await self._pool.fetchrow(
                f"""SELECT {_SNAPSHOT_COLUMNS} FROM dataset_snapshots
                    WHERE name = $1 AND ($2 = 0 OR version = $2) ORDER BY version DESC LIMIT 1""",
                name,
                version,
            )
        if row is None:
            which = "any version" if version == 0 else f"version {version}"
            raise SnapshotNotFound(f"no dataset snapshot {name!r} ({which}); ListDatasetSnapshots shows what exists")
        return _snapshot(row)

    async def stream(self, name: str, version: int, split: str | None) -> AsyncIterator[Example]:
        """Examples of one split (or all, train then val then test) in snapshot order."""
        snapshot = await self.get(name, version)
        splits = [split] if split else list(SPLITS)
        total = sum(snapshot.frames_in(s) for s in splits)
        index = 0
        for current in splits:
            position = 0
            while position < snapshot.frames_in(current):
                page = await self._page(snapshot, current, position)
                if not page:
                    break
                for frame in page:
                    yield Example(index=index, total=total, frame=frame)
                    index += 1
                position += len(page)

    async def _page(self, snapshot: Snapshot, split: str, position: int) -> list[StoredFrame]:
        async with unavailable_as("PostgreSQL"):
            rows = await self._pool.fetch(_PAGE, snapshot.snapshot_id, split, position, self._page_frames)
            ids = [r["frame_id"] for r in rows]
            ann_rows = await self._pool.fetch(_PAGE_ANNOTATIONS, ids, _or_none(snapshot.filter.classes))
        annotations: dict[str, list[AnnotationRow]] = {}
        for a in ann_rows:
            annotations.setdefault(a["frame_id"], []).append(
                AnnotationRow(a["class_id"], a["class_name"], a["x1"], a["y1"], a["x2"], a["y2"], a["ignore"])
            )
        loop = asyncio.get_running_loop()
        async with unavailable_as("the blob store"):
            images = await asyncio.gather(
                *(loop.run_in_executor(self._executor, self._blobs.get, r["image_sha256"]) for r in rows)
            )
        return [
            StoredFrame(
                frame_id=r["frame_id"],
                camera_id=r["camera_id"],
                seq=r["seq"],
                captured_at=r["captured_at"],
                encoding=r["encoding"],
                image=image,
                image_sha256=r["image_sha256"],
                source=r["source"],
                dataset=r["dataset"],
                split=split,
                features=Features(r["brightness"], r["contrast"], r["sharpness"], r["width"], r["height"]),
                annotations=tuple(annotations.get(r["frame_id"], ())),
                dataset_namespace=r["dataset_namespace"],
            )
            for r, image in zip(rows, images, strict=True)
        ]
