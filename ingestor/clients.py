"""IngestFrames: frames a gRPC client streams in, validated, completed and published.

A client's frames are its own: the frame id is derived from the caller's key name and the image
bytes (the client's ``frame_id`` is kept as ``client_frame_id``), and their labels are filed in
the caller's namespace (``dataset_namespace``), never in the operator's, where imports go.

An OK reply means the broker has every accepted frame (acks=all). Frames the broker has not
acknowledged within ack_wait end the call with UNAVAILABLE: the client sends the stream again,
and a frame sent again (same caller, camera, client frame_id, captured_at or seq, and bytes) gets the
same frame id, which the feature_service stores once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.rpc import status_pb2

from carmesh.v1 import common_pb2
from ingestor.errors import BrokerRefused, BrokerUnavailable, InvalidFrame, LabelsDenied
from ingestor.frames import DEFAULT_MAX_IMAGE_PIXELS, BadImage, probe_image, timestamp, unique_id
from ingestor.metrics import IngestorMetrics
from ingestor.publisher import Publisher
from kit.callers import LABELS_SCOPE, CallerIdentity
from kit.enums import enum_name
from kit.errors import FieldViolation
from kit.hashing import derive_frame_id
from kit.names import name_problem
from kit.redact import redact_url

MAX_REASONS = 20


@dataclass
class IngestResult:
    accepted: int = 0
    rejected: int = 0
    acknowledged: int = 0
    buffered: int = 0
    rejections: list[status_pb2.Status] = field(default_factory=list)

    def reject(self, why: InvalidFrame | BrokerRefused) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_REASONS:
            self.rejections.append(why.status())


@dataclass(frozen=True)
class ClientLimits:
    max_image_bytes: int
    publish_wait_s: float
    ack_wait_s: float
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def check_labels(frame: common_pb2.Frame, position: int, caller: CallerIdentity) -> None:
    """Labels are training data: a key sends them only with the ``ingest.labels`` scope."""
    labelled = [name for name in ("annotations", "dataset", "split") if getattr(frame, name)]
    if labelled and not caller.allows(LABELS_SCOPE):
        raise LabelsDenied(
            f"frame {position} has {', '.join(labelled)}: API key {caller.name!r} lacks scope {LABELS_SCOPE!r} "
            "needed to send labels (plain 'ingest' sends unlabelled frames)",
            metadata={"api_key": caller.name, "scope": LABELS_SCOPE, "frame_index": position},
        )


def complete(
    frame: common_pb2.Frame,
    position: int,
    peer: str,
    max_image_bytes: int,
    caller: CallerIdentity,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> common_pb2.Frame:
    """Checks a client frame and fills what the client left out (time, size, encoding); sets the
    ids and namespace that only the server may set."""
    if not frame.camera_id.strip():
        raise InvalidFrame("camera_id is required", field="frame.camera_id")
    for kind, name, value in (("camera id", "camera_id", frame.camera_id), ("data set", "dataset", frame.dataset)):
        problem = name_problem(kind, value) if value else None
        if problem is not None:
            raise InvalidFrame(problem, field=f"frame.{name}", reason="INVALID_NAME")
    if not frame.image:
        raise InvalidFrame("image is empty", field="frame.image")
    if len(frame.image) > max_image_bytes:
        raise InvalidFrame(
            f"image is {len(frame.image)} bytes, more than max_image_bytes ({max_image_bytes})", field="frame.image"
        )
    try:
        info = probe_image(frame.image, max_image_pixels)
    except BadImage as exc:
        raise InvalidFrame(str(exc), field="frame.image") from None
    if frame.encoding not in (common_pb2.IMAGE_ENCODING_UNSPECIFIED, info.encoding):
        said = enum_name(common_pb2.ImageEncoding, frame.encoding)
        raise InvalidFrame(
            f"encoding says {said} but the bytes are {common_pb2.ImageEncoding.Name(info.encoding)}",
            field="frame.encoding",
        )
    if (frame.width or frame.height) and (frame.width, frame.height) != (info.width, info.height):
        raise InvalidFrame(
            f"width x height {frame.width}x{frame.height} but the image is {info.width}x{info.height}",
            violations=[
                FieldViolation(f"frame.{name}", f"{name} {said} but the image's is {real}")
                for name, said, real in (("width", frame.width, info.width), ("height", frame.height, info.height))
                if said != real
            ],
        )
    out = common_pb2.Frame()
    out.CopyFrom(frame)
    out.encoding, out.width, out.height = info.encoding, info.width, info.height
    # A client frame_id is a reference only: the id comes from the caller's namespace and the bytes,
    # so no client can take an imported frame's id (or another key's). Without one, the capture time
    # the client set names the frame, else its seq (a re-sent stream keeps both: the same camera, seq
    # and bytes are one frame); with none of them, a nonce keeps each frame apart, as before.
    out.client_frame_id = frame.frame_id
    out.dataset_namespace = caller.name
    reference = frame.frame_id or _captured_reference(frame) or (f"seq:{frame.seq}" if frame.seq else "") or unique_id()
    out.frame_id = derive_frame_id(("client", caller.name, frame.camera_id, reference), frame.image)
    if not out.seq:
        out.seq = position
    if not out.HasField("captured_at") or out.captured_at.ToNanoseconds() == 0:
        out.captured_at.CopyFrom(timestamp(time.time()))
    out.source = redact_url(out.source) if out.source else f"grpc:{peer}"
    return out


def _captured_reference(frame: common_pb2.Frame) -> str:
    if not frame.HasField("captured_at") or frame.captured_at.ToNanoseconds() == 0:
        return ""
    return f"captured:{frame.captured_at.ToNanoseconds()}:seq:{frame.seq}"


class ClientIngest:
    def __init__(self, publisher: Publisher, limits: ClientLimits, metrics: IngestorMetrics) -> None:
        self._publisher = publisher
        self._limits = limits
        self._metrics = metrics

    async def ingest(self, frames: AsyncIterator[common_pb2.Frame], peer: str, caller: CallerIdentity) -> IngestResult:
        """Publishes the stream's valid frames and waits (at most ack_wait) for their
        acknowledgements; raises BrokerUnavailable, with this stream's counts, once the buffer
        stays full or when frames are still unacknowledged after ack_wait (the client re-sends)."""
        result = IngestResult()
        pending: list[asyncio.Future[None]] = []
        position = 0
        async for frame in frames:
            check_labels(frame, position, caller)
            try:
                ready = complete(
                    frame, position, peer, self._limits.max_image_bytes, caller, self._limits.max_image_pixels
                )
            except InvalidFrame as exc:
                where = {"frame_index": position}
                result.reject(
                    InvalidFrame(
                        f"frame {position}: {exc}", violations=exc.violations, metadata=where, reason=exc.reason
                    )
                )
                self._metrics.frames_rejected.labels("client").inc()
                position += 1
                continue
            position += 1
            try:
                future = await self._publisher.publish(ready, origin="client", wait_s=self._limits.publish_wait_s)
            except BrokerUnavailable as exc:
                self._count(result, pending)
                raise BrokerUnavailable(
                    f"{exc}; this stream: {result.acknowledged} frames acknowledged, {result.buffered} buffered "
                    f"(still being delivered), {result.rejected} rejected, frames from #{position - 1} on not taken"
                ) from None
            pending.append(future)
            result.accepted += 1
        if pending:
            await asyncio.wait(pending, timeout=self._limits.ack_wait_s)
        self._count(result, pending)
        if result.buffered:
            # Not acknowledged is not taken: they may still be delivered, and a re-send dedups.
            raise BrokerUnavailable(
                f"{self._publisher.unavailable()}; this stream: {result.acknowledged} frames acknowledged, "
                f"{result.buffered} not acknowledged within {self._limits.ack_wait_s:g}s, {result.rejected} "
                "rejected: send the stream again (frames with the same frame_id and bytes are stored once)"
            )
        return result

    @staticmethod
    def _count(result: IngestResult, pending: list[asyncio.Future[None]]) -> None:
        result.acknowledged = result.buffered = 0
        for future in pending:
            if not future.done():
                result.buffered += 1
            elif not future.cancelled() and future.exception() is None:
                result.acknowledged += 1
        failed = [f for f in pending if f.done() and not f.cancelled() and f.exception() is not None]
        for future in failed:
            result.accepted -= 1
            result.reject(BrokerRefused(f"broker refused a frame: {future.exception()}"))
        pending[:] = [f for f in pending if f not in failed]
