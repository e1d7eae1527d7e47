"""gRPC server factory: health, reflection, message limits, and one interceptor that maps
domain errors to status codes and records RPC metrics."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kit.errors import STATUS_DETAILS_KEY, DomainError, InvalidArgument, internal_status
from kit.metrics import Metrics

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if code in (None, 0) else grpc.StatusCode.UNKNOWN


def _with_details(context: grpc.aio.ServicerContext, details: Metadata) -> Metadata:
    """The trailers a handler set before failing, with the error's status details in place of any earlier
    ones (``abort`` replaces the trailers it is given, and one status has one details entry)."""
    earlier = tuple(context.trailing_metadata() or ()) if hasattr(context, "trailing_metadata") else ()
    return (*((k, v) for k, v in earlier if k != STATUS_DETAILS_KEY), *details)


class UnparsableRequest(InvalidArgument):
    """Request bytes that do not parse as the method's message: invalid UTF-8 in a string field,
    a truncated or malformed wire encoding. gRPC would answer UNKNOWN; it is the client's fault."""

    reason = "UNPARSABLE_REQUEST"


class _Undecoded:
    """What the tolerant deserializer hands on in place of a message that did not parse."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error

    def failure(self, where: str) -> UnparsableRequest:
        return UnparsableRequest(
            f"{where} is not a valid {self.type_name}: a string field holds bytes that are not UTF-8, "
            f"or the bytes are not a protobuf encoding of it ({self.error})"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The method's deserializer, returning :class:`_Undecoded` instead of raising, so the call
    can fail with INVALID_ARGUMENT rather than grpc's UNKNOWN (or a silently ended stream)."""
    if deserializer is None:  # a raw-bytes handler (the gateway's proxy) parses nothing
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = getattr(message_type, "full_name", "request message")

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, and whatever a custom deserializer raises
            return _Undecoded(type_name, exc)

    return deserialize


def _nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first string field (map keys and values included) holding a NUL character."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            texts = value if _repeated(field) else [value]
            if any("\x00" in text for text in texts):
                return path
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            if any(isinstance(k, str) and "\x00" in k for k in value):
                return f"{path} (a key)"
            for key, item in value.items():
                if isinstance(item, str) and "\x00" in item:
                    return f"{path}[{key!r}]"
                if isinstance(item, Message) and (found := _nul_field(item, f"{path}[{key!r}].")):
                    return found
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if _repeated(field) else [value]
            for index, item in enumerate(items):
                where = f"{path}[{index}]." if _repeated(field) else f"{path}."
                if found := _nul_field(item, where):
                    return found
    return None


def _repeated(field: FieldDescriptor) -> bool:
    # ``is_repeated`` in protobuf 6; ``label`` before it.
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else getattr(field, "label", 0) == FieldDescriptor.LABEL_REPEATED


def _check_request(request: Any, where: str) -> Any:
    """Fails requests that did not parse, and strings with NUL characters: no name, id, path or
    URL may hold one (PostgreSQL refuses them, file systems cut at them), so the edge refuses them."""
    if isinstance(request, _Undecoded):
        raise request.failure(where)
    if isinstance(request, Message) and (field := _nul_field(request)):
        raise InvalidArgument(f"{field} contains a NUL character (\\x00); remove it", field=field, reason="NUL_IN_TEXT")
    return request


async def _checked_items(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    index = 0
    async for item in requests:
        yield _check_request(item, f"request #{index} of the stream")
        index += 1


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns :class:`DomainError` into its status, anything else into INTERNAL (logged),
    so no request can take a daemon down; records count and latency per method and code.
    The error's ``google.rpc.Status`` (ErrorInfo reason, field violations, retry delay)
    goes in the ``grpc-status-details-bin`` trailer."""

    def __init__(
        self, metrics: Metrics, authorize: Callable[[str, grpc.aio.ServicerContext], None] | None = None
    ) -> None:
        self._metrics = metrics
        # Runs before every handler (a mesh CallerPolicy); raises a DomainError to refuse the call.
        self._authorize = authorize

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._wrap_unary(handler.unary_unary, method), **kwargs)
        if handler.stream_unary:
            behavior = self._wrap_unary(handler.stream_unary, method, streamed=True)
            return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._wrap_stream(handler.unary_stream, method), **kwargs)
        assert handler.stream_stream is not None
        behavior = self._wrap_stream(handler.stream_stream, method, streamed=True)
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
        if isinstance(exc, DomainError):
            await context.abort(exc.code, str(exc), _with_details(context, exc.trailing_metadata()))
        log.exception("unhandled error in %s", method, exc_info=exc)
        message = f"internal error in {method}: {type(exc).__name__}"
        details = ((STATUS_DETAILS_KEY, internal_status(message).SerializeToString()),)
        await context.abort(grpc.StatusCode.INTERNAL, message, _with_details(context, details))

    def _record(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self._metrics.observe_rpc(method, code.name, time.perf_counter() - started)

    def _wrap_unary(self, behavior: Callable[..., Any], method: str, streamed: bool = False) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if self._authorize is not None:
                    self._authorize(method, context)
                checked = _checked_items(request) if streamed else _check_request(request, "the request")
                response = await behavior(checked, context)
                code = _code_of(context)
                return response
            except (grpc.aio.AbortError, asyncio.CancelledError):
                code = _code_of(context) if not context.cancelled() else grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = exc.code if isinstance(exc, DomainError) else grpc.StatusCode.INTERNAL
                await self._fail(context, exc, method)
            finally:
                self._record(method, code, started)

        return wrapped

    def _wrap_stream(self, behavior: Callable[..., Any], method: str, streamed: bool = False) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if self._authorize is not None:
                    self._authorize(method, context)
                checked = _checked_items(request) if streamed else _check_request(request, "the request")
                result = behavior(checked, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    await result
                code = _code_of(context)
            except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                code = _code_of(context) if not context.cancelled() else grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = exc.code if isinstance(exc, DomainError) else grpc.StatusCode.INTERNAL
                await self._fail(context, exc, method)
            finally:
                self._record(method, code, started)

        return wrapped


class Server:
    """A started-on-demand grpc.aio server with health and reflection for ``service_names``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        service_names: Sequence[str],
        metrics: Metrics,
        max_message_bytes: int,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        extra_options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ServerCredentials | None = None,
        authorize: Callable[[str, grpc.aio.ServicerContext], None] | None = None,
    ) -> None:
        """``credentials`` None serves plaintext; ``authorize`` checks each call's peer (mesh mTLS)."""
        self.service_names = list(service_names)
        self.server = grpc.aio.server(
            interceptors=[*interceptors, ErrorMappingInterceptor(metrics, authorize)],
            options=[*channel_options(max_message_bytes), *extra_options],
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(f"{host}:{port}")
            else:
                self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError as exc:  # how grpcio says it could not bind; older versions returned 0
            raise OSError(f"cannot bind gRPC port {host}:{port} (in use?)") from exc
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {host}:{port} (in use?)")
        self.address = f"{host}:{self.port}"

    async def start(self) -> None:
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        # "" is the whole server, as grpc_health_probe and Kubernetes ask by default.
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop_serving(self) -> None:
        """NOT_SERVING for every service from now on; later :meth:`set_serving` calls change nothing."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Waits up to ``grace_s`` for in-flight RPCs, then cancels them; safe to call again, or unstarted."""
        await self.stop_serving()
        await self.server.stop(grace_s)
