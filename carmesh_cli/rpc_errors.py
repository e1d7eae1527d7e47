"""The rich details of a failed call (google.rpc.Status in the ``grpc-status-details-bin`` trailer),
as the lines the CLI prints under ``error: STATUS: message``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class RpcDetails:
    """What the daemons and the gateway attach to a status (kit/errors.py makes them)."""

    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # (field, description) of each BadRequest field violation.
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float | None = None
    # "type name" of the resource a ResourceInfo names.
    resource: str = ""
    # (type, subject, description) of each PreconditionFailure violation.
    preconditions: list[tuple[str, str, str]] = field(default_factory=list)

    def lines(self, message: str = "") -> list[str]:
        """One line per detail; a field violation that only repeats ``message`` shows just its field."""
        out = []
        if self.reason:
            extra = ", ".join(f"{k}={v}" for k, v in sorted(self.metadata.items()))
            out.append(f"reason: {self.reason}" + (f" ({extra})" if extra else ""))
        for name, description in self.violations:
            out.append(f"field {name}" + (f": {description}" if description and description != message else ""))
        if self.resource:
            out.append(f"resource: {self.resource}")
        for kind, subject, description in self.preconditions:
            out.append(f"precondition {kind} {subject}" + (f": {description}" if description else ""))
        if self.retry_after_s is not None:
            out.append(f"retry after {format_delay(self.retry_after_s)}")
        return out


def format_delay(seconds: float) -> str:
    """``0.25 s``, ``2.5 s``, ``1000 s``: rounded up, so that a retry at that time is not early."""
    if seconds < 10:
        return f"{math.ceil(seconds * 100) / 100:g} s"
    return f"{math.ceil(seconds)} s"


def from_status(status: status_pb2.Status) -> RpcDetails:
    """The details of ``status`` this CLI knows."""
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    retry = error_details_pb2.RetryInfo()
    resource = error_details_pb2.ResourceInfo()
    precondition = error_details_pb2.PreconditionFailure()
    found: set[str] = set()
    for detail in status.details:
        # Detail types this CLI does not know are skipped: a newer server may send more.
        for message in (info, bad, retry, resource, precondition):
            if detail.Is(message.DESCRIPTOR):
                detail.Unpack(message)
                found.add(message.DESCRIPTOR.name)
    return RpcDetails(
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        violations=[(v.field, v.description) for v in bad.field_violations],
        retry_after_s=retry.retry_delay.ToTimedelta().total_seconds() if "RetryInfo" in found else None,
        resource=f"{resource.resource_type} {resource.resource_name}".strip(),
        preconditions=[(v.type, v.subject, v.description) for v in precondition.violations],
    )


def rpc_details(error: grpc.RpcError) -> RpcDetails | None:
    """The details of a failed call, or None when it has none (or they do not match its status)."""
    if not isinstance(error, grpc.Call):
        return None
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details for another status than the call's: a broken hop, not worth failing on
        return None
    return None if status is None else from_status(status)
