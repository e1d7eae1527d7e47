"""Gateway errors; kit's interceptor turns each into its status code with the message as details."""

from __future__ import annotations

import grpc

from kit.config import ConfigError
from kit.errors import DomainError, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable


class ApiKeysError(ConfigError):
    """API keys that cannot be used (bad format, unknown scope, duplicate key); names the source and line."""


class MissingCredentials(Unauthenticated):
    pass


class UnknownApiKey(Unauthenticated):
    pass


class ScopeDenied(PermissionDenied):
    pass


class RateLimited(ResourceExhausted):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoHealthyUpstream(Unavailable):
    pass


class UpstreamUnreachable(Unavailable):
    pass


class UpstreamError(DomainError):
    """An upstream daemon's own status, passed to the client with the same code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
