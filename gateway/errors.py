"""Gateway errors; kit's interceptor turns each into its status code with the message as details
and its ErrorInfo reason (and RetryInfo for rate limits) in the status details trailer."""

from __future__ import annotations

import grpc

from kit.config import ConfigError
from kit.errors import (
    STATUS_DETAILS_KEY,
    DomainError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)


class ApiKeysError(ConfigError):
    """API keys that cannot be used (bad format, unknown scope, duplicate key); names the source and line."""


class MissingCredentials(Unauthenticated):
    reason = "MISSING_CREDENTIALS"


class UnknownApiKey(Unauthenticated):
    reason = "UNKNOWN_API_KEY"


class ScopeDenied(PermissionDenied):
    reason = "SCOPE_DENIED"


class RateLimited(ResourceExhausted):
    """The caller's token bucket is empty; ``retry_after_s`` says when the next token comes (RetryInfo)."""

    reason = "RATE_LIMITED"
    retry_after_s: float

    def __init__(self, message: str, retry_after_s: float, *, caller: str, rate_per_s: float, burst: int) -> None:
        super().__init__(
            message,
            retry_after_s=retry_after_s,
            metadata={"api_key": caller, "rate_per_s": f"{rate_per_s:g}", "burst": burst},
        )


class NoHealthyUpstream(Unavailable):
    reason = "NO_HEALTHY_UPSTREAM"


class UpstreamUnreachable(Unavailable):
    reason = "UPSTREAM_UNREACHABLE"


class UpstreamError(DomainError):
    """An upstream daemon's own status, passed to the client with the same code, details and status
    details trailer (``status_details``: the upstream's ``grpc-status-details-bin`` bytes, unchanged)."""

    def __init__(self, code: grpc.StatusCode, details: str, status_details: bytes | None = None) -> None:
        super().__init__(details)
        self.code = code
        self.status_details = status_details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        # The upstream's details as they came: re-encoding could drop what this gateway does not know.
        return () if self.status_details is None else ((STATUS_DETAILS_KEY, self.status_details),)


# Limits against exhaustion (docs/security.md, section 6). Each carries a RetryInfo delay.


class TooManyConcurrentCalls(ResourceExhausted):
    reason = "TOO_MANY_CONCURRENT_CALLS"


class TooManyConcurrentStreams(ResourceExhausted):
    reason = "TOO_MANY_CONCURRENT_STREAMS"


class TooManyFailedAuthentications(ResourceExhausted):
    """The calling peer sent too many unknown or malformed keys; its calls are refused unchecked for a while."""

    reason = "TOO_MANY_FAILED_AUTHENTICATIONS"


class StreamLifetimeExceeded(Unavailable):
    """A streaming-response call reached the gateway's stream lifetime; the client reconnects."""

    reason = "STREAM_LIFETIME_EXCEEDED"
