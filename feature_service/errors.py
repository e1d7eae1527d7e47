"""Feature service errors; the kit's interceptor maps each to its gRPC status with the message as is."""

from __future__ import annotations

from kit.daemon import StartupError
from kit.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, Unavailable


class BadRequest(InvalidArgument):
    """A snapshot name, filter, fraction or split in the request is not usable."""

    reason = "INVALID_REQUEST"


class CameraNotFound(NotFound):
    """No online features for the camera: never seen, or its features expired."""

    reason = "CAMERA_NOT_FOUND"


class SnapshotNotFound(NotFound):
    """No dataset snapshot with that name (and version)."""

    reason = "SNAPSHOT_NOT_FOUND"


class EmptySnapshot(FailedPrecondition):
    """The filter of a snapshot matches no stored frame."""

    reason = "EMPTY_SNAPSHOT"


class StoreUnavailable(Unavailable):
    """PostgreSQL, Redis or the blob store cannot be reached; retry later."""

    reason = "STORE_UNAVAILABLE"


class BlobMissing(DataLoss):
    """A stored frame's image is missing from the blob store, or its bytes no longer match their sha256."""

    reason = "BLOB_MISSING"


class MigrationError(StartupError):
    """The database schema cannot be brought up to date (edited or unknown migration); the daemon exits with 2."""
