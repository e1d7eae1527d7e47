"""ImportDataset: reads a labelled data set's labels, then publishes every image (bytes
unchanged) with its boxes, reporting progress. Frames land in the operator's namespace (empty
``dataset_namespace``). Frame ids are derived from the data set name, each image's relative path
and its bytes, so a re-import publishes the same ids (consumers dedupe), and a client, whose frame
ids are derived in its own namespace, cannot publish one first with other boxes."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from carmesh.v1 import common_pb2
from ingestor.errors import PublishFailed
from ingestor.frames import DEFAULT_MAX_IMAGE_PIXELS, BadImage, ImageInfo, load_image, timestamp
from ingestor.metrics import IngestorMetrics
from ingestor.paths import PathPolicy
from ingestor.publisher import Publisher
from kit.datasets import Item, ParseOptions, parse_dataset
from kit.hashing import derive_frame_id
from kit.names import validate_name

log = logging.getLogger(__name__)

MAX_REASONS = 20


@dataclass(frozen=True)
class ImportRequest:
    fmt: str
    path: str
    dataset: str = ""
    camera_id: str = ""
    options: ParseOptions = field(default_factory=ParseOptions)


@dataclass
class ImportProgress:
    frames_total: int = 0
    frames_published: int = 0  # acknowledged by the broker
    annotations_published: int = 0
    frames_skipped: int = 0
    frames_buffered: int = 0
    done: bool = False
    skip_reasons: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.frames_skipped += 1
        if len(self.skip_reasons) < MAX_REASONS:
            self.skip_reasons.append(reason)

    def snapshot(self) -> ImportProgress:
        return replace(self, skip_reasons=list(self.skip_reasons), class_names=list(self.class_names))


@dataclass(frozen=True)
class ImportLimits:
    max_image_bytes: int
    publish_wait_s: float
    ack_wait_s: float
    progress_interval_s: float
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def to_annotations(item: Item, info: ImageInfo, class_ids: dict[str, int]) -> list[common_pb2.Annotation]:
    sx, sy = (info.width, info.height) if item.normalized else (1, 1)
    return [
        common_pb2.Annotation(
            box=common_pb2.BoundingBox(x1=b.x1 * sx, y1=b.y1 * sy, x2=b.x2 * sx, y2=b.y2 * sy),
            class_id=class_ids[b.class_name],
            class_name=b.class_name,
            ignore=b.ignore,
        )
        for b in item.boxes
    ]


class DatasetImporter:
    def __init__(self, publisher: Publisher, paths: PathPolicy, limits: ImportLimits, metrics: IngestorMetrics) -> None:
        self._publisher = publisher
        self._paths = paths
        self._limits = limits
        self._metrics = metrics

    async def run(self, request: ImportRequest) -> AsyncIterator[ImportProgress]:
        """Yields progress; the last message has ``done`` set. Raises BrokerUnavailable when the
        buffer stays full (frames already accepted are still delivered; re-importing is safe)."""
        path = self._paths.check(request.path, "data set path")
        parsed = await asyncio.to_thread(parse_dataset, request.fmt, path, request.options)
        dataset = request.dataset.strip() or (path.name if path.is_dir() else path.stem)
        camera_id = request.camera_id.strip() or dataset
        # A name taken from the folder or file must fit the name syntax too (it keys Redis and snapshots).
        validate_name("data set", dataset, "dataset")
        class_ids = {name: i for i, name in enumerate(parsed.class_names)}
        progress = ImportProgress(frames_total=len(parsed.items) + len(parsed.skipped), class_names=parsed.class_names)
        for reason in parsed.skipped:
            progress.skip(reason)
        self._metrics.frames_rejected.labels("dataset").inc(len(parsed.skipped))
        log.info(
            "importing %s data set %r from %s: %d images, %d skipped, classes %s",
            request.fmt,
            dataset,
            path,
            len(parsed.items),
            len(parsed.skipped),
            parsed.class_names,
        )
        yield progress.snapshot()

        pending: set[asyncio.Future[None]] = set()

        def acknowledged(future: asyncio.Future[None], rel: str, boxes: int) -> None:
            pending.discard(future)
            if future.cancelled():
                return
            exc = future.exception()
            if exc is None:
                progress.frames_published += 1
                progress.annotations_published += boxes
            elif isinstance(exc, PublishFailed):
                progress.skip(f"{rel}: {exc}")

        last = time.monotonic()
        for seq, item in enumerate(parsed.items):
            if not self._paths.allows(item.image):
                progress.skip(f"{item.rel}: outside the ingestor's allowed roots")
                continue
            try:
                data, info, mtime = await asyncio.to_thread(
                    _read, item.image, self._limits.max_image_bytes, self._limits.max_image_pixels
                )
            except (OSError, BadImage) as exc:
                progress.skip(f"{item.rel}: {exc}")
                self._metrics.frames_rejected.labels("dataset").inc()
                continue
            frame = common_pb2.Frame(
                frame_id=derive_frame_id(("dataset", dataset, item.rel), data),
                camera_id=camera_id,
                seq=seq,
                # The file's mtime, not the import time: a re-import publishes identical frames.
                captured_at=timestamp(mtime),
                encoding=info.encoding,
                image=data,
                width=info.width,
                height=info.height,
                annotations=to_annotations(item, info, class_ids),
                source=str(item.image),
                dataset=dataset,
                split=item.split,
            )
            future = await self._publisher.publish(frame, origin="dataset", wait_s=self._limits.publish_wait_s)
            pending.add(future)
            future.add_done_callback(functools.partial(acknowledged, rel=item.rel, boxes=len(frame.annotations)))
            if time.monotonic() - last >= self._limits.progress_interval_s:
                last = time.monotonic()
                progress.frames_buffered = len(pending)
                yield progress.snapshot()
        if pending:
            await asyncio.wait(set(pending), timeout=self._limits.ack_wait_s)
            await asyncio.sleep(0)  # let the done callbacks of the last acknowledgements run
        progress.frames_buffered = len(pending)
        progress.done = not pending
        yield progress.snapshot()
        if pending:
            raise self._publisher.unavailable()


def _read(path: Path, max_bytes: int, max_pixels: int) -> tuple[bytes, ImageInfo, float]:
    data, info = load_image(path, max_bytes, max_pixels)
    return data, info, path.stat().st_mtime
