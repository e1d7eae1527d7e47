"""Reading google.rpc error details (ErrorInfo, BadRequest, RetryInfo, ...) out of a status, for tests."""

from __future__ import annotations

from typing import Any

from google.rpc import error_details_pb2, status_pb2

DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.PreconditionFailure,
)


def details_of(status: status_pb2.Status) -> dict[str, Any]:
    """The status's details by type name (``"ErrorInfo"``, ``"BadRequest"``, ...); unknown types are left out."""
    found: dict[str, Any] = {}
    for detail in status.details:
        for cls in DETAIL_TYPES:
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.__name__] = message
    return found


def fields_of(status: status_pb2.Status) -> list[str]:
    """The fields the status's BadRequest names, in order."""
    bad = details_of(status).get("BadRequest")
    return [] if bad is None else [v.field for v in bad.field_violations]
