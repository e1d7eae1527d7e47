"""Forwarding of one gRPC method to its upstream pool, as raw bytes (nothing is re-serialised).

Deadlines travel on (the client's remaining time, or the gateway's default, capped; streaming
responses live at most the gateway's stream lifetime);
request metadata travels on except hop-by-hop and credential entries; the upstream's
status code, details, rich status details (``grpc-status-details-bin``) and metadata come
back unchanged. When the client cancels, the
upstream call is cancelled too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from gateway.auth import Caller
from gateway.errors import StreamLifetimeExceeded, UpstreamError, UpstreamUnreachable
from gateway.metrics import GatewayMetrics
from gateway.upstream import Replica, UpstreamPool
from kit.callers import CALLER_HEADER, CALLER_SCOPES_HEADER, caller_metadata
from kit.errors import STATUS_DETAILS_KEY, DomainError

# Entries the gateway must not pass on: credentials, what gRPC sets per hop itself, and the caller
# entries only the gateway may set (a client sending them would claim another key's name or scopes).
_DROPPED = frozenset({"authorization", "user-agent", "te", "content-type", "host", CALLER_HEADER, CALLER_SCOPES_HEADER})

Metadata = tuple[tuple[str, Any], ...]

# No (de)serialisers: the gateway passes the bytes as they came.
_RAW: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}


def forwarded_metadata(incoming: Iterable[tuple[str, Any]], caller: Caller) -> Metadata:
    kept = [
        (key, value) for key, value in incoming if key.lower() not in _DROPPED and not key.startswith((":", "grpc-"))
    ]
    return (*kept, *caller_metadata(caller.name, caller.scopes))


def _relayed(metadata: Iterable[Any] | None) -> Metadata:
    """Upstream response metadata the client may see. gRPC's own entries (``grpc-status``,
    ``grpc-message``, ...) describe the upstream hop and are set by this one, except the status
    details (ErrorInfo, BadRequest, RetryInfo...), which belong to the status the client gets."""
    return tuple(
        (k, v)
        for k, v in metadata or ()
        if k == STATUS_DETAILS_KEY or (not k.startswith((":", "grpc-")) and k != "content-type")
    )


def _status_details(error: grpc.aio.AioRpcError) -> bytes | None:
    trailers: Iterable[Any] = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


@dataclass(frozen=True)
class DeadlinePolicy:
    """Upstream deadlines. Unary-response calls get ``default_s`` when the client set none, and at
    most ``max_s``. Streaming-response calls (watches, downloads, progress) are long-lived, so they
    keep the client's deadline, but live at most ``stream_lifetime_s``; a stream that reaches it ends
    with UNAVAILABLE (STREAM_LIFETIME_EXCEEDED, RetryInfo) and the client reconnects. 0 disables each."""

    default_s: float
    max_s: float
    stream_lifetime_s: float = 0.0

    def timeout(self, remaining_s: float | None, streaming_response: bool) -> float | None:
        if streaming_response:
            if self.lifetime_binds(remaining_s):
                return self.stream_lifetime_s
            return remaining_s
        if remaining_s is None:
            remaining_s = self.default_s or None
        if remaining_s is not None and self.max_s:
            remaining_s = min(remaining_s, self.max_s)
        return remaining_s

    def lifetime_binds(self, remaining_s: float | None) -> bool:
        """Whether a stream with the client's ``remaining_s`` ends by the lifetime, not the client's deadline."""
        return bool(self.stream_lifetime_s) and (remaining_s is None or remaining_s > self.stream_lifetime_s)


# When a stream ended by its lifetime may reconnect: at once, the limit is on one stream's length.
LIFETIME_RETRY_AFTER_S = 0.001


class Forwarder:
    """Forwards one method (``path`` is ``/package.Service/Method``) to ``pool``."""

    def __init__(
        self,
        path: str,
        pool: UpstreamPool,
        deadlines: DeadlinePolicy,
        metrics: GatewayMetrics,
        streaming_response: bool,
    ) -> None:
        self.path = path
        self._pool = pool
        self._deadlines = deadlines
        self._metrics = metrics
        self._streaming_response = streaming_response

    def _timeout(self, context: grpc.aio.ServicerContext) -> float | None:
        return self._deadlines.timeout(context.time_remaining(), self._streaming_response)

    def _record(self, replica: Replica, code: grpc.StatusCode) -> None:
        self._metrics.upstream_calls.labels(self._pool.service, replica.address, code.name).inc()

    def _failure(self, replica: Replica, error: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> DomainError:
        self._record(replica, error.code())
        if error.code() == grpc.StatusCode.UNAVAILABLE and not replica.connected():
            # The transport failed, not the daemon: say which hop, and re-check that replica now.
            self._pool.suspect(replica)
            return UpstreamUnreachable(
                f"{self._pool.label} ({self._pool.service}) at {replica.address} is unreachable: {error.details()}",
                metadata={"service": self._pool.service, "upstream": replica.address},
            )
        context.set_trailing_metadata(_relayed(error.trailing_metadata()))
        return UpstreamError(error.code(), error.details() or "", _status_details(error))

    async def _relay_initial(self, context: grpc.aio.ServicerContext, call: Any) -> None:
        initial = _relayed(await call.initial_metadata())
        if initial:
            await context.send_initial_metadata(initial)

    async def unary_unary(self, request: bytes, context: grpc.aio.ServicerContext, md: Metadata) -> bytes:
        # A replica that could not be reached is retried once on the next healthy one. Only the
        # detector pool has several replicas, and its unary calls are read-only, so a retry after
        # a connection that dropped mid-call repeats nothing that matters.
        candidates = (await self._pool.candidates())[:2]
        for attempt, replica in enumerate(candidates, start=1):
            call = replica.channel.unary_unary(self.path, **_RAW)(request, timeout=self._timeout(context), metadata=md)
            try:
                response: bytes = await call
            except grpc.aio.AioRpcError as error:
                failure = self._failure(replica, error, context)
                if isinstance(failure, UpstreamUnreachable) and attempt < len(candidates):
                    continue
                raise failure from None
            finally:
                call.cancel()  # no-op once done; stops the upstream when the client went away
            self._record(replica, grpc.StatusCode.OK)
            await self._relay_initial(context, call)
            context.set_trailing_metadata(_relayed(await call.trailing_metadata()))
            return response
        raise AssertionError("candidates() returns at least one replica")

    async def stream_unary(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, md: Metadata
    ) -> bytes:
        replica = (await self._pool.candidates())[0]
        call = replica.channel.stream_unary(self.path, **_RAW)(requests, timeout=self._timeout(context), metadata=md)
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as error:
            raise self._failure(replica, error, context) from None
        finally:
            call.cancel()
        self._record(replica, grpc.StatusCode.OK)
        await self._relay_initial(context, call)
        context.set_trailing_metadata(_relayed(await call.trailing_metadata()))
        return response

    async def unary_stream(
        self, request: bytes, context: grpc.aio.ServicerContext, md: Metadata
    ) -> AsyncIterator[bytes]:
        replica = (await self._pool.candidates())[0]
        call = replica.channel.unary_stream(self.path, **_RAW)(request, timeout=self._timeout(context), metadata=md)
        async for item in self._relay_stream(replica, call, context):
            yield item

    async def stream_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, md: Metadata
    ) -> AsyncIterator[bytes]:
        replica = (await self._pool.candidates())[0]
        call = replica.channel.stream_stream(self.path, **_RAW)(requests, timeout=self._timeout(context), metadata=md)
        async for item in self._relay_stream(replica, call, context):
            yield item

    async def _relay_stream(
        self, replica: Replica, call: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        by_lifetime = self._deadlines.lifetime_binds(context.time_remaining())
        try:
            await self._relay_initial(context, call)
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as error:
            if by_lifetime and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self._record(replica, error.code())
                lifetime_s = self._deadlines.stream_lifetime_s
                raise StreamLifetimeExceeded(
                    f"{self.path} ran for the gateway's stream lifetime ({lifetime_s:g}s, max_stream_lifetime_s); "
                    "open a new stream to go on",
                    retry_after_s=LIFETIME_RETRY_AFTER_S,
                    metadata={"max_stream_lifetime_s": f"{lifetime_s:g}"},
                ) from None
            raise self._failure(replica, error, context) from None
        finally:
            call.cancel()
        self._record(replica, grpc.StatusCode.OK)
        context.set_trailing_metadata(_relayed(await call.trailing_metadata()))
