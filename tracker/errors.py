"""The tracker's errors; the kit's interceptor turns them into gRPC statuses."""

from __future__ import annotations

import grpc

from kit.errors import DomainError, InvalidArgument, Unavailable


class BadLayout(InvalidArgument):
    """A line or zone that cannot be used; the violation names the field (``lines[1].end``)."""

    reason = "BAD_LAYOUT"


class LayoutVersionConflict(DomainError):
    """``expected_version`` is not the camera's newest layout version (someone changed it since)."""

    code = grpc.StatusCode.ABORTED
    reason = "LAYOUT_VERSION_CONFLICT"


class BadQuery(InvalidArgument):
    reason = "BAD_QUERY"


class StoreUnavailable(Unavailable):
    reason = "STORE_UNAVAILABLE"
