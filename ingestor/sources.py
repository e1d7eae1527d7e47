"""Sources started and stopped at run time: an image folder, a video file, a live stream.

Each runs as one task that reads, paces (``max_fps``: sleep until t0 + n/fps) and
publishes; it waits for buffer room rather than failing while the broker is down, and a
live stream drops stale frames meanwhile (latest-frame semantics). With a state store, running
sources and their acknowledged positions are saved and resume after a restart (ingestor.state)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from carmesh.v1 import common_pb2
from ingestor.capture import LOST, RECONNECTED, LatestFrameReader, StreamOptions, VideoFileReader, encode_jpeg
from ingestor.errors import BadRequest, SourceError, SourceNotFound, SourceUnreachable, TooManySources
from ingestor.frames import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_SUFFIXES, BadImage, load_image, timestamp, unique_id
from ingestor.metrics import IngestorMetrics
from ingestor.paths import PathPolicy
from ingestor.publisher import Publisher
from ingestor.state import Position, SavedSource, StateStore, Watermark
from ingestor.streams import StreamPolicy
from kit.datasets.common import utf8_text
from kit.errors import DomainError
from kit.hashing import derive_frame_id
from kit.redact import redact_url

log = logging.getLogger(__name__)

FOLDER, VIDEO, STREAM = "folder", "video", "stream"
RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
_MAX_FPS = 1000.0
_KEEP_ENDED = 64  # ended sources ListSources still shows


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    uri: str
    camera_id: str = ""
    max_fps: float = 0.0
    loop: bool = False


@dataclass(frozen=True)
class SourceStatus:
    source_id: str
    spec: SourceSpec
    state: str
    frames_published: int
    frames_dropped: int
    frames_read: int
    error: str
    connected: bool = False  # live streams: open now
    disconnects: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class SourceOptions:
    max_sources: int
    max_image_bytes: int
    jpeg_quality: int
    stream: StreamOptions
    stream_policy: StreamPolicy
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    state_flush_interval_s: float = 0.2


class Pacer:
    """At most ``fps`` frames a second: frame n waits until t0 + n/fps. After a stall (slow
    broker) the schedule restarts instead of bursting to catch up."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._t0: float | None = None
        self._n = 0

    async def wait(self) -> None:
        if self.fps <= 0:
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        target = self._t0 + self._n / self.fps
        if target > now:
            await asyncio.sleep(target - now)
        elif now - target > 1.0:
            self._t0 = now - self._n / self.fps
        self._n += 1


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


class Source:
    def __init__(self, source_id: str, spec: SourceSpec, raw_uri: str, watermark: Watermark) -> None:
        self.source_id = source_id
        self.spec = spec
        self.raw_uri = raw_uri  # what the state file keeps to resume (a stream's password included)
        self.watermark = watermark
        self.persist = True  # in the state file: until stopped, finished or failed (not at shutdown)
        self.state = RUNNING
        self.error = ""
        self.frames_read = 0
        self.frames_published = 0
        self.frames_dropped = 0
        self.dropped_counted = 0  # stream drops already added to the metric
        self.stream: LatestFrameReader | None = None
        self.task: asyncio.Task[None] | None = None

    def status(self) -> SourceStatus:
        read, dropped, error = self.frames_read, self.frames_dropped, self.error
        stream = self.stream
        if stream is None:
            return SourceStatus(self.source_id, self.spec, self.state, self.frames_published, dropped, read, error)
        return SourceStatus(
            self.source_id,
            self.spec,
            self.state,
            self.frames_published,
            stream.frames_dropped,
            stream.frames_read,
            error or stream.error,
            connected=stream.connected and self.state == RUNNING,
            disconnects=stream.disconnects,
            reconnects=stream.reconnects,
        )

    def on_ack(self, future: asyncio.Future[None], ticket: int) -> None:
        if future.cancelled():  # shutdown: not acknowledged, so the position stays before it
            return
        if future.exception() is not None:
            self.error = str(future.exception())
        else:
            self.frames_published += 1
        self.watermark.done(ticket)

    def saved(self) -> SavedSource:
        spec = self.spec
        return SavedSource(
            self.source_id, spec.kind, self.raw_uri, spec.camera_id, spec.max_fps, spec.loop, self.watermark.committed
        )


class SourceManager:
    def __init__(
        self,
        publisher: Publisher,
        paths: PathPolicy,
        options: SourceOptions,
        metrics: IngestorMetrics,
        store: StateStore | None = None,
    ) -> None:
        self._publisher = publisher
        self._paths = paths
        self._options = options
        self._metrics = metrics
        self._store = store
        self._sources: dict[str, Source] = {}
        self._changed = asyncio.Event()  # the state file is behind
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._restored = store is None  # no write before restore() read the file back

    # --- control -------------------------------------------------------------------------

    async def start(self, spec: SourceSpec) -> SourceStatus:
        running = sum(1 for s in self._sources.values() if s.state == RUNNING)
        if running >= self._options.max_sources:
            raise TooManySources(f"{running} sources are running, the most this ingestor runs (--max-sources)")
        if not math.isfinite(spec.max_fps) or not 0 <= spec.max_fps <= _MAX_FPS:
            raise BadRequest(f"max_fps must be between 0 (no limit) and {_MAX_FPS:g}, got {spec.max_fps}")
        source_id = f"src-{uuid.uuid4().hex[:10]}"
        spec = replace(spec, camera_id=spec.camera_id.strip() or source_id, uri=spec.uri.strip())
        status = await self._launch(source_id, spec, Position())
        self._changed.set()
        return status

    async def _launch(self, source_id: str, spec: SourceSpec, position: Position) -> SourceStatus:
        """Opens the source and starts its task at ``position``; raises when it cannot be opened."""
        watermark = Watermark(position, on_move=self._changed.set)
        source = Source(source_id, spec, spec.uri, watermark)
        run: Callable[[Source], Awaitable[None]]
        if spec.kind == FOLDER:
            base, pattern = await asyncio.to_thread(self._folder, spec.uri)  # globbing a big folder blocks
            run = functools.partial(self._run_folder, base=base, pattern=pattern)
        elif spec.kind == VIDEO:
            path = self._paths.check(spec.uri, "video path")
            if not path.is_file():
                raise BadRequest(f"video path {spec.uri!r} is not a file")
            video = VideoFileReader(path, self._options.jpeg_quality)
            try:
                await video.open()
            except SourceError as exc:
                await video.close()
                raise BadRequest(str(exc)) from None
            run = functools.partial(self._run_video, video=video)
        elif spec.kind == STREAM:
            # The host is checked now (DNS: in a thread) and again before every reconnect; the
            # spec keeps the URL with its password redacted: it is logged, listed and on every frame.
            policy, url = self._options.stream_policy, spec.uri
            target = await asyncio.to_thread(policy.check, url)
            spec = replace(spec, uri=target.shown)
            source = Source(source_id, spec, url, watermark)
            reader = LatestFrameReader(
                target.shown, self._options.stream, lambda: policy.check(url).url, self._stream_event
            )
            try:
                await reader.start()
            except SourceError as exc:
                await reader.close()
                raise SourceUnreachable(f"{exc}: check the URL and that the camera is reachable") from None
            source.stream = reader
            run = self._run_stream
        else:
            raise BadRequest(f"unknown source kind {spec.kind!r}; use image folder, video file or stream")
        self._prune()
        self._sources[source_id] = source
        source.task = asyncio.create_task(self._supervise(source, run), name=f"ingestor-{source_id}")
        log.info("started %s source %s: %s (camera %s) at %s", spec.kind, source_id, spec.uri, spec.camera_id, position)
        return source.status()

    async def restore(self) -> None:
        """Resumes the sources the state file lists. One that cannot be opened now (folder gone,
        camera down) is listed FAILED and stays in the file for the next start; StopSource forgets it."""
        if self._store is None:
            return
        try:
            saved_sources = await asyncio.to_thread(self._store.load)
        except OSError as exc:  # unreadable (permissions): sources started now are still saved
            log.error("cannot read the source state %s: %s; no source resumed", self._store.path, exc)
            saved_sources = []
        finally:
            self._restored = True
        for saved in saved_sources:
            spec = SourceSpec(saved.kind, saved.uri, saved.camera_id, saved.max_fps, saved.loop)
            try:
                if sum(1 for s in self._sources.values() if s.state == RUNNING) >= self._options.max_sources:
                    raise TooManySources("more saved sources than --max-sources")
                await self._launch(saved.source_id, spec, saved.position)
            except (DomainError, SourceError) as exc:
                shown = replace(spec, uri=redact_url(spec.uri))
                failed = Source(saved.source_id, shown, saved.uri, Watermark(saved.position))
                failed.state, failed.error = FAILED, redact_url(f"not resumed after the restart: {exc}")
                self._sources[saved.source_id] = failed
                log.error("source %s (%s) not resumed: %s", saved.source_id, shown.uri, failed.error)
        log.info("resumed %d of the saved sources", sum(1 for s in self._sources.values() if s.state == RUNNING))

    async def persist_forever(self) -> None:
        """Rewrites the state file whenever a source starts, ends or moves on (at most every
        state_flush_interval_s: a kill -9 replays at most that much, under the same frame ids)."""
        if self._store is None:
            return
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self._write()
            await asyncio.sleep(self._options.state_flush_interval_s)

    async def save(self) -> None:
        """Writes the state file now (at shutdown, once the publisher flushed)."""
        await self._write()

    async def _write(self) -> None:
        if self._store is None or not self._restored:
            return
        async with self._write_lock:
            saved = [s.saved() for s in self._sources.values() if s.persist]
            try:
                await asyncio.to_thread(self._store.write, saved)
            except OSError as exc:  # a full disk must not stop the sources; the next change retries
                log.error("cannot write the source state %s: %s", self._store.path, exc)

    async def stop(self, source_id: str) -> SourceStatus:
        source = self._sources.get(source_id)
        if source is None:
            raise SourceNotFound(f"no source {source_id!r}; ListSources shows the ids")
        source.persist = False  # stopped on request: not resumed after a restart
        await self._stop(source)
        await self._write()
        return source.status()

    def list_all(self) -> list[SourceStatus]:
        return [s.status() for s in self._sources.values()]

    async def close(self) -> None:
        # Sources stopped by the shutdown stay in the state file, at their acknowledged positions.
        self._closing = True
        await asyncio.gather(*(self._stop(s) for s in list(self._sources.values())))
        await self._write()

    async def _stop(self, source: Source) -> None:
        if source.task is not None and not source.task.done():
            source.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await source.task

    def _prune(self) -> None:
        ended = [k for k, s in self._sources.items() if s.state != RUNNING and not s.persist]
        for key in ended[: max(0, len(ended) - _KEEP_ENDED)]:
            del self._sources[key]

    def _folder(self, uri: str) -> tuple[Path, str]:
        """A folder (all images in it) or a glob pattern: the folder part is what the path policy checks."""
        parts = Path(uri).parts
        cut = next((i for i, part in enumerate(parts) if _has_glob(part)), len(parts))
        base = self._paths.check(str(Path(*parts[:cut])) if cut else "", "image folder")
        if not base.is_dir():
            raise BadRequest(f"image folder {uri!r} is not a folder (or a glob pattern such as /data/cam1/*.jpg)")
        pattern = str(Path(*parts[cut:])) if cut < len(parts) else "*"
        if ".." in parts[cut:] or "**" in parts[cut:]:
            raise BadRequest(f"image folder pattern {uri!r} may not contain '..' or '**'")
        if not self._list_images(base, pattern):
            raise BadRequest(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) match {uri!r}")
        return base, pattern

    def _list_images(self, base: Path, pattern: str) -> list[Path]:
        # allows(): a symlink in an allowed folder may not lead outside the allowed roots.
        return sorted(
            p
            for p in base.glob(pattern)
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and self._paths.allows(p)
        )

    # --- runners ---------------------------------------------------------------------------

    async def _supervise(self, source: Source, run: Callable[[Source], Awaitable[None]]) -> None:
        try:
            await run(source)
            source.state = FINISHED
            log.info("source %s finished", source.source_id)
        except asyncio.CancelledError:
            source.state = STOPPED
            log.info("source %s stopped after %d frames read", source.source_id, source.status().frames_read)
            raise
        except SourceError as exc:
            source.state, source.error = FAILED, redact_url(str(exc))
            log.warning("source %s failed: %s", source.source_id, source.error)
        except Exception as exc:  # a source must never take the daemon down
            source.state, source.error = FAILED, redact_url(f"internal error: {type(exc).__name__}: {exc}")
            log.exception("source %s failed", source.source_id)
        finally:
            if not self._closing and source.persist:
                source.persist = False
                self._changed.set()
            if source.stream is not None:
                await source.stream.close()
                self._count_drops(source)
                if not source.stream.connected and source.stream.disconnects:
                    self._metrics.streams_down.dec()  # ended while down: no longer a stream to wait for

    def _stream_event(self, event: str) -> None:
        # On a reader's thread: Prometheus metrics are thread-safe.
        if event == LOST:
            self._metrics.stream_disconnects.inc()
            self._metrics.streams_down.inc()
        elif event == RECONNECTED:
            self._metrics.stream_reconnects.inc()
            self._metrics.streams_down.dec()
        else:
            self._metrics.stream_open_failures.inc()

    def _count_drops(self, source: Source) -> None:
        if source.stream is not None:
            self._metrics.frames_dropped.inc(source.stream.frames_dropped - source.dropped_counted)
            source.dropped_counted = source.stream.frames_dropped

    async def _publish(self, source: Source, frame: common_pb2.Frame, origin: str, after: Position) -> None:
        """Hands ``frame`` over; once the broker has it (and every frame before it), the source's
        saved position becomes ``after``."""
        # Sources wait for buffer room as long as the broker needs: nothing is read meanwhile.
        future = await self._publisher.publish(frame, origin=origin, wait_s=None)
        if source.stream is None:  # a stream's reader counts its own reads
            source.frames_read += 1
        ticket = source.watermark.hand(after)
        future.add_done_callback(functools.partial(source.on_ack, ticket=ticket))

    async def _run_folder(self, source: Source, base: Path, pattern: str) -> None:
        spec, pacer, marks = source.spec, Pacer(source.spec.max_fps), source.watermark
        start = marks.committed
        seq, rounds, after = start.seq, start.rounds, Path(start.after) if start.after else None
        while True:
            files = await asyncio.to_thread(self._list_images, base, pattern)
            if not files:
                raise SourceError(f"no images match {spec.uri!r} any more")
            for path in files:
                if after is not None and path <= after:
                    continue  # handled before a restart (sorted order: the saved position is a file)
                await pacer.wait()
                try:
                    data, info = await asyncio.to_thread(
                        load_image, path, self._options.max_image_bytes, self._options.max_image_pixels
                    )
                except (OSError, BadImage) as exc:
                    source.error = utf8_text(f"skipped {path.name}: {exc}")
                    self._metrics.frames_rejected.labels(FOLDER).inc()
                    marks.skip(Position(rounds=rounds, after=str(path), seq=seq))
                    continue
                frame = common_pb2.Frame(
                    frame_id=derive_frame_id((FOLDER, spec.camera_id, str(path), str(rounds)), data),
                    camera_id=spec.camera_id,
                    seq=seq,
                    captured_at=timestamp(time.time()),
                    encoding=info.encoding,
                    image=data,
                    width=info.width,
                    height=info.height,
                    source=utf8_text(str(path)),  # a file name need not be UTF-8; a proto string must
                )
                seq += 1
                await self._publish(source, frame, FOLDER, Position(rounds=rounds, after=str(path), seq=seq))
            if not spec.loop:
                await marks.drained()  # finished once the broker has every frame, not before
                return
            rounds, after = rounds + 1, None
            marks.skip(Position(rounds=rounds, seq=seq))

    async def _run_video(self, source: Source, video: VideoFileReader) -> None:
        spec, pacer, marks = source.spec, Pacer(source.spec.max_fps), source.watermark
        start = marks.committed
        seq, rounds, index = start.seq, start.rounds, start.index
        # A file's frames were captured at its own frame rate: frame i at t0 + i / fps, however fast
        # or unevenly it is read (a tracker predicts motion from these times).
        started_s, round_start = time.time(), index
        try:
            if index:
                # Resumed: the frames before the saved position are decoded and skipped (exact,
                # where seeking by frame number is not for every codec).
                skipped = await video.skip(index)
                if skipped < index:
                    raise SourceError(f"{video.path} has {skipped} frames, fewer than the saved position {index}")
            while True:
                while True:
                    await pacer.wait()
                    encoded = await video.read()
                    if encoded is None:
                        break
                    frame = common_pb2.Frame(
                        frame_id=derive_frame_id(
                            (VIDEO, spec.camera_id, str(video.path), str(rounds), str(index)), encoded.data
                        ),
                        camera_id=spec.camera_id,
                        seq=seq,
                        captured_at=timestamp(
                            started_s + (index - round_start) / video.fps if video.fps else time.time()
                        ),
                        encoding=common_pb2.IMAGE_ENCODING_JPEG,
                        image=encoded.data,
                        width=encoded.width,
                        height=encoded.height,
                        source=str(video.path),
                    )
                    seq += 1
                    index += 1
                    await self._publish(source, frame, VIDEO, Position(rounds=rounds, index=index, seq=seq))
                if not spec.loop:
                    await marks.drained()
                    return
                if index == 0:
                    raise SourceError(f"{video.path} has no readable frames")
                if video.fps:  # the next round follows this one on the timeline
                    started_s, round_start = started_s + (index - round_start) / video.fps, 0
                rounds, index = rounds + 1, 0
                marks.skip(Position(rounds=rounds, seq=seq))
                await video.open()
        finally:
            await video.close()

    async def _run_stream(self, source: Source) -> None:
        reader = source.stream
        assert reader is not None
        spec, pacer, seq = source.spec, Pacer(source.spec.max_fps), 0
        quality = self._options.jpeg_quality
        while True:
            await pacer.wait()
            image, captured_at = await reader.next()
            self._count_drops(source)
            encoded = await asyncio.to_thread(encode_jpeg, image, quality)
            frame = common_pb2.Frame(
                # Live frames are never replayed: a nonce keeps two identical pictures apart.
                frame_id=derive_frame_id((STREAM, spec.camera_id, unique_id()), encoded.data),
                camera_id=spec.camera_id,
                seq=seq,
                captured_at=timestamp(captured_at),
                encoding=common_pb2.IMAGE_ENCODING_JPEG,
                image=encoded.data,
                width=encoded.width,
                height=encoded.height,
                source=spec.uri,
            )
            seq += 1
            await self._publish(source, frame, STREAM, Position(seq=seq))
