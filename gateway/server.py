"""gRPC handlers for every method of the routed services, built from the generated descriptors.

Each handler admits the call (API key, scope, rate limit), then forwards its raw bytes
(identity serialisers) through a :class:`~gateway.proxy.Forwarder`, so a new RPC in a
contract is routed without code here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from carmesh.v1 import detector_pb2, feature_pb2, ingest_pb2, registry_pb2, training_pb2
from gateway.auth import Authenticator, Caller
from gateway.errors import RateLimited
from gateway.metrics import GatewayMetrics
from gateway.proxy import DeadlinePolicy, Forwarder, Metadata, forwarded_metadata
from gateway.ratelimit import RateLimiter
from gateway.upstream import UpstreamPool
from kit.errors import DomainError

log = logging.getLogger(__name__)

DETECTOR = "carmesh.v1.DetectorService"
REGISTRY = "carmesh.v1.RegistryService"
INGEST = "carmesh.v1.IngestService"
FEATURES = "carmesh.v1.FeatureService"
TRAINING = "carmesh.v1.TrainingService"


def service_descriptors() -> dict[str, ServiceDescriptor]:
    """Every public carmesh service the gateway can route, by full name."""
    services = {}
    for module in (detector_pb2, registry_pb2, ingest_pb2, feature_pb2, training_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = service
    return services


class Admission:
    """Who may call what, how often; counts refusals by reason."""

    def __init__(self, authenticator: Authenticator, limiter: RateLimiter, metrics: GatewayMetrics) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self._metrics = metrics

    def admit(self, service: str, path: str, context: grpc.aio.ServicerContext) -> Metadata:
        """The metadata to send upstream, or raises the status that refuses the call."""
        incoming = tuple(context.invocation_metadata() or ())
        try:
            caller: Caller = self._authenticator.authorize(path, incoming)
            self._limiter.check(caller.name)
        except RateLimited as exc:
            self._metrics.rejected.labels("rate_limited").inc()
            # Deprecated, for clients of the previous release: the delay is in the status's RetryInfo
            # (grpc-status-details-bin). To be removed in the next release.
            context.set_trailing_metadata((("retry-after-ms", str(max(1, round(exc.retry_after_s * 1000)))),))
            raise
        except DomainError as exc:
            self._metrics.rejected.labels(exc.code.name.lower()).inc()
            raise
        self._metrics.calls_by_key.labels(caller.name, service).inc()
        return forwarded_metadata(incoming, caller)


def _method_handler(method: MethodDescriptor, forwarder: Forwarder, admission: Admission) -> grpc.RpcMethodHandler:
    service = method.containing_service.full_name
    path = forwarder.path

    if not method.client_streaming and not method.server_streaming:

        async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await forwarder.unary_unary(request, context, admission.admit(service, path, context))

        return grpc.unary_unary_rpc_method_handler(unary_unary)

    if method.client_streaming and not method.server_streaming:

        async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            return await forwarder.stream_unary(requests, context, admission.admit(service, path, context))

        return grpc.stream_unary_rpc_method_handler(stream_unary)

    if not method.client_streaming:

        async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            metadata = admission.admit(service, path, context)
            async for item in forwarder.unary_stream(request, context, metadata):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream)

    async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        metadata = admission.admit(service, path, context)
        async for item in forwarder.stream_stream(requests, context, metadata):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream)


def build_handlers(
    routes: Mapping[str, UpstreamPool],
    admission: Admission,
    deadlines: DeadlinePolicy,
    metrics: GatewayMetrics,
) -> list[grpc.GenericRpcHandler]:
    """One generic handler per routed service, covering all of its methods."""
    descriptors = service_descriptors()
    handlers = []
    for name, pool in routes.items():
        service = descriptors[name]
        methods: dict[str, Any] = {}
        for method in service.methods:
            forwarder = Forwarder(f"/{name}/{method.name}", pool, deadlines, metrics, method.server_streaming)
            methods[method.name] = _method_handler(method, forwarder, admission)
        handlers.append(grpc.method_handlers_generic_handler(name, methods))
    return handlers
