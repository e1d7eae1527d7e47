"""Writes to the offline store (PostgreSQL): frames with features and annotations, model
predictions. Each call is one transaction and idempotent (ON CONFLICT DO NOTHING), so a
replayed Kafka batch stores nothing twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from feature_service.validation import StoredFrame

_INSERT_FRAMES = """
INSERT INTO frames (frame_id, camera_id, seq, captured_at, encoding, width, height, image_sha256, image_bytes,
                    source, dataset, split, brightness, contrast, sharpness, kafka_partition, kafka_offset,
                    dataset_namespace)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::text[], $6::int[], $7::int[],
                     $8::text[], $9::int[], $10::text[], $11::text[], $12::text[], $13::float8[], $14::float8[],
                     $15::float8[], $16::int[], $17::bigint[], $18::text[])
ON CONFLICT (frame_id) DO NOTHING
RETURNING frame_id
"""

_INSERT_ANNOTATIONS = """
INSERT INTO annotations (frame_id, idx, class_id, class_name, x1, y1, x2, y2, ignore)
SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::real[], $6::real[], $7::real[],
                     $8::real[], $9::bool[])
ON CONFLICT DO NOTHING
"""

_INSERT_RUNS = """
INSERT INTO detection_runs (frame_id, model_name, model_version, model_alias, camera_id, detected_at,
                            image_width, image_height, detections, kafka_partition, kafka_offset)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::int[], $8::int[], $9::int[], $10::int[], $11::bigint[])
ON CONFLICT (frame_id, model_name, model_version) DO NOTHING
RETURNING frame_id, model_name, model_version
"""

_INSERT_PREDICTIONS = """
INSERT INTO predictions (frame_id, model_name, model_version, idx, class_id, class_name, score, x1, y1, x2, y2)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::text[], $7::real[],
                     $8::real[], $9::real[], $10::real[], $11::real[])
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True)
class FrameRow:
    frame: StoredFrame
    partition: int
    offset: int


@dataclass(frozen=True)
class PredictionRow:
    class_id: int
    class_name: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float


RunKey = tuple[str, str, str]  # frame_id, model_name, model_version


@dataclass(frozen=True)
class DetectionRun:
    frame_id: str
    camera_id: str
    model_name: str
    model_version: str
    model_alias: str
    detected_at: datetime
    image_width: int
    image_height: int
    predictions: tuple[PredictionRow, ...]
    partition: int
    offset: int

    @property
    def key(self) -> RunKey:
        return (self.frame_id, self.model_name, self.model_version)


def _columns(rows: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


class OfflineStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert_frames(self, rows: Sequence[FrameRow]) -> set[str]:
        """Stores frames not stored yet, with their annotations; returns the frame_ids it inserted."""
        frame_cols = _columns(
            [
                (
                    r.frame.frame_id,
                    r.frame.camera_id,
                    r.frame.seq,
                    r.frame.captured_at,
                    r.frame.encoding,
                    r.frame.width,
                    r.frame.height,
                    r.frame.image_sha256,
                    len(r.frame.image),
                    r.frame.source,
                    r.frame.dataset,
                    r.frame.split,
                    r.frame.features.brightness,
                    r.frame.features.contrast,
                    r.frame.features.sharpness,
                    r.partition,
                    r.offset,
                    r.frame.dataset_namespace,
                )
                for r in rows
            ],
            18,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = {rec["frame_id"] for rec in await conn.fetch(_INSERT_FRAMES, *frame_cols)}
            # Annotations only with a frame inserted now: a replay must not add them again.
            ann_rows = [
                (r.frame.frame_id, i, a.class_id, a.class_name, a.x1, a.y1, a.x2, a.y2, a.ignore)
                for r in rows
                if r.frame.frame_id in inserted
                for i, a in enumerate(r.frame.annotations)
            ]
            if ann_rows:
                await conn.execute(_INSERT_ANNOTATIONS, *_columns(ann_rows, 9))
        return inserted

    async def insert_detections(self, runs: Sequence[DetectionRun]) -> set[RunKey]:
        """Stores runs not stored yet with their predictions; returns the keys it inserted."""
        run_cols = _columns(
            [
                (
                    r.frame_id,
                    r.model_name,
                    r.model_version,
                    r.model_alias,
                    r.camera_id,
                    r.detected_at,
                    r.image_width,
                    r.image_height,
                    len(r.predictions),
                    r.partition,
                    r.offset,
                )
                for r in runs
            ],
            11,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            inserted: set[RunKey] = {
                (rec["frame_id"], rec["model_name"], rec["model_version"])
                for rec in await conn.fetch(_INSERT_RUNS, *run_cols)
            }
            pred_rows = [
                (
                    r.frame_id,
                    r.model_name,
                    r.model_version,
                    i,
                    p.class_id,
                    p.class_name,
                    p.score,
                    p.x1,
                    p.y1,
                    p.x2,
                    p.y2,
                )
                for r in runs
                if r.key in inserted
                for i, p in enumerate(r.predictions)
            ]
            if pred_rows:
                await conn.execute(_INSERT_PREDICTIONS, *_columns(pred_rows, 11))
        return inserted
