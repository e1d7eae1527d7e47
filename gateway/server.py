"""gRPC handlers for every method of the routed services, built from the generated descriptors.

Each handler admits the call (peer back-off, API key, scope, rate limit, concurrency caps),
then forwards its raw bytes (identity serialisers) through a :class:`~gateway.proxy.Forwarder`,
so a new RPC in a contract is routed without code here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from carmesh import kserve
from carmesh.v1 import detector_pb2, feature_pb2, ingest_pb2, registry_pb2, tracking_pb2, training_pb2
from gateway.auth import Authenticator, Caller
from gateway.errors import RateLimited
from gateway.limits import AuthBackoff, Concurrency, MessagePacer, peer_host
from gateway.metrics import GatewayMetrics
from gateway.proxy import DeadlinePolicy, Forwarder, Metadata, forwarded_metadata
from gateway.ratelimit import RateLimiter
from gateway.upstream import UpstreamPool
from kit.errors import DomainError, Unauthenticated

log = logging.getLogger(__name__)

DETECTOR = "carmesh.v1.DetectorService"
REGISTRY = "carmesh.v1.RegistryService"
INGEST = "carmesh.v1.IngestService"
FEATURES = "carmesh.v1.FeatureService"
TRAINING = "carmesh.v1.TrainingService"
# KServe v2 inference protocol, served by the detectors beside DetectorService.
INFERENCE = kserve.SERVICE_NAME
TRACKING = "carmesh.v1.TrackingService"


def service_descriptors() -> dict[str, ServiceDescriptor]:
    """Every public carmesh service the gateway can route, by full name."""
    services = {}
    for module in (detector_pb2, registry_pb2, ingest_pb2, feature_pb2, training_pb2, tracking_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = service
    services[INFERENCE] = kserve.protocol().service
    return services


@dataclass(frozen=True)
class Admitted:
    """An admitted call: what to send upstream, and who sends it (a key name, safe to log)."""

    metadata: Metadata
    caller: str


class Admission:
    """Who may call what, how often and how much at once; counts refusals by reason."""

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: RateLimiter,
        metrics: GatewayMetrics,
        concurrency: Concurrency | None = None,
        auth_backoff: AuthBackoff | None = None,
        pacer: MessagePacer | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self._metrics = metrics
        self._concurrency = concurrency or Concurrency(0, 0)
        self._auth_backoff = auth_backoff or AuthBackoff(0, 0, 0, 0)
        self.pacer = pacer or MessagePacer(0, 1)

    def admit(self, service: str, path: str, context: grpc.aio.ServicerContext, streaming: bool = False) -> Admitted:
        """The call's upstream metadata and caller, or raises the status that refuses the call."""
        incoming = tuple(context.invocation_metadata() or ())
        peer = peer_host(context.peer() or "")
        try:
            # A peer that keeps failing to authenticate is refused before its key is looked at.
            self._auth_backoff.check(peer)
            try:
                caller: Caller = self._authenticator.authorize(path, incoming)
            except Unauthenticated:
                self._auth_backoff.failed(peer)
                raise
            self._limiter.check(caller.name)
            release = self._concurrency.acquire(caller.name, streaming)
        except RateLimited as exc:
            self._metrics.rejected.labels("rate_limited").inc()
            # Deprecated, for clients of the previous release: the delay is in the status's RetryInfo
            # (grpc-status-details-bin). To be removed in the next release.
            context.set_trailing_metadata((("retry-after-ms", str(max(1, round(exc.retry_after_s * 1000)))),))
            raise
        except DomainError as exc:
            self._metrics.rejected.labels(exc.code.name.lower()).inc()
            raise
        # The call ends however it ends (done, failed, cancelled, timed out): its slot is free again.
        context.add_done_callback(lambda _: release())  # type: ignore[arg-type]  # the stubs want a class
        self._metrics.calls_by_key.labels(caller.name, service).inc()
        return Admitted(forwarded_metadata(incoming, caller), caller.name)


def _method_handler(method: MethodDescriptor, forwarder: Forwarder, admission: Admission) -> grpc.RpcMethodHandler:
    service = method.containing_service.full_name
    path = forwarder.path
    streaming = method.client_streaming or method.server_streaming

    if not method.client_streaming and not method.server_streaming:

        async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await forwarder.unary_unary(request, context, admission.admit(service, path, context).metadata)

        return grpc.unary_unary_rpc_method_handler(unary_unary)

    if method.client_streaming and not method.server_streaming:

        async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            admitted = admission.admit(service, path, context, streaming)
            paced = admission.pacer.paced(admitted.caller, requests)
            return await forwarder.stream_unary(paced, context, admitted.metadata)

        return grpc.stream_unary_rpc_method_handler(stream_unary)

    if not method.client_streaming:

        async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            admitted = admission.admit(service, path, context, streaming)
            async for item in forwarder.unary_stream(request, context, admitted.metadata):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream)

    async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        admitted = admission.admit(service, path, context, streaming)
        paced = admission.pacer.paced(admitted.caller, requests)
        async for item in forwarder.stream_stream(paced, context, admitted.metadata):
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
