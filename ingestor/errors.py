"""Ingestor errors; the kit's interceptor maps each to its gRPC status with the message as is."""

from __future__ import annotations

from kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable

# One class for every daemon's path refusals (re-exported).
from kit.paths import PathNotAllowed as PathNotAllowed


class BadRequest(InvalidArgument):
    """A source spec or import request that cannot be used (unknown kind/format, bad fps, ...)."""

    reason = "INVALID_REQUEST"


class PathNotFound(NotFound):
    """A folder, file or data set path that does not exist."""

    reason = "PATH_NOT_FOUND"


class SourceNotFound(NotFound):
    """No source with that id."""

    reason = "SOURCE_NOT_FOUND"


class TooManySources(ResourceExhausted):
    """max_sources sources are already running."""

    reason = "TOO_MANY_SOURCES"


class BrokerUnavailable(Unavailable):
    """The in-flight buffer is full because the broker does not acknowledge; retry later."""

    reason = "BROKER_UNAVAILABLE"


class DatasetError(Exception):
    """One item of a data set cannot be used (bad label line, missing image); it is skipped with this reason."""


class LabelsDenied(PermissionDenied):
    """IngestFrames of a frame with labels (annotations, data set, split) by a key without ``ingest.labels``."""

    reason = "SCOPE_DENIED"


class InvalidFrame(InvalidArgument):
    """A client-streamed frame that is not published; its status is one of IngestFrames' rejections."""

    reason = "INVALID_FRAME"


class BrokerRefused(FailedPrecondition):
    """The broker refused a client-streamed frame for good; its status is one of IngestFrames' rejections."""

    reason = "BROKER_REFUSED"


class PublishFailed(Exception):
    """The broker refused a frame for good (too large, not authorised): retrying cannot help."""


class SourceUnreachable(FailedPrecondition):
    """A live stream that cannot be opened (wrong URL, camera down or not answering in time)."""

    reason = "SOURCE_UNREACHABLE"


class SourceError(Exception):
    """A running source cannot go on (unreadable video, folder emptied); it ends FAILED with this message."""


class StreamHostNotAllowed(PermissionDenied):
    """A stream URL whose host is not in the allowed stream hosts, or resolves into a denied network."""

    reason = "STREAM_HOST_NOT_ALLOWED"
