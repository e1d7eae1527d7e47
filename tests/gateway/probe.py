"""A real gRPC upstream for gateway tests that records what reached it.

It serves ``carmesh.v1.RegistryService`` (and grpc.health.v1) in this process on a
thread pool, so tests can see the metadata, deadline and cancellation the gateway
passes on: things no production daemon reports back. Its answers are computed from
the requests (sizes, hashes, counts), never canned.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, wrappers_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from carmesh.v1 import registry_pb2, registry_pb2_grpc

SERVICE = "carmesh.v1.RegistryService"
# Requests naming this model fail with :func:`rich_status` (its details in the grpc-status-details-bin trailer).
RICH_ERROR_NAME = "rich-error"


def _packed(message) -> any_pb2.Any:
    item = any_pb2.Any()
    item.Pack(message)
    return item


def rich_status(method: str) -> status_pb2.Status:
    """A failure with an ErrorInfo, a BadRequest and a detail type no carmesh code knows (it must pass too)."""
    return status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message=f"{method}: version 'x' is not a number",
        details=[
            _packed(
                error_details_pb2.ErrorInfo(
                    reason="INVALID_VERSION", domain="carmesh.io", metadata={"method": method, "upstream": "probe"}
                )
            ),
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field="version", description="not a number")
                    ]
                )
            ),
            _packed(wrappers_pb2.StringValue(value="an extension detail")),
        ],
    )


@dataclass
class Seen:
    """One call as the upstream saw it."""

    method: str
    metadata: dict[str, str]
    time_remaining_s: float | None
    # Every entry as it came, repeated keys included.
    entries: tuple[tuple[str, str | bytes], ...] = ()


@dataclass
class ProbeRegistry(registry_pb2_grpc.RegistryServiceServicer):
    label: str
    calls: list[Seen] = field(default_factory=list)
    watch_cancelled: threading.Event = field(default_factory=threading.Event)
    watch_started: threading.Event = field(default_factory=threading.Event)

    def _see(self, method: str, context: grpc.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata()}
        entries = tuple(context.invocation_metadata())
        self.calls.append(Seen(method, metadata, context.time_remaining(), entries))

    def ListModels(self, request, context):
        self._see("ListModels", context)
        return registry_pb2.ListModelsResponse(models=[registry_pb2.RegisteredModel(name=self.label)])

    def GetModelVersion(self, request, context):
        self._see("GetModelVersion", context)
        if request.name == RICH_ERROR_NAME:
            context.abort_with_status(rpc_status.to_status(rich_status("GetModelVersion")))
        if request.name == "missing":
            context.set_trailing_metadata((("x-probe-reason", "no-such-model"),))
            context.abort(grpc.StatusCode.NOT_FOUND, f"registered model {request.name!r} not found")
        if request.name == "busy":
            context.abort(grpc.StatusCode.UNAVAILABLE, "registry is busy, try again")
        return registry_pb2.GetModelVersionResponse(
            version=registry_pb2.ModelVersion(name=request.name, version=request.version or "1")
        )

    def ImportModel(self, request_iterator, context):
        self._see("ImportModel", context)
        digest = hashlib.sha256()
        size = 0
        meta = None
        for item in request_iterator:
            if item.HasField("metadata"):
                meta = item.metadata
            else:
                digest.update(item.chunk)
                size += len(item.chunk)
        if meta is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry metadata")
        if meta.name == RICH_ERROR_NAME:
            context.abort_with_status(rpc_status.to_status(rich_status("ImportModel")))
        return registry_pb2.ImportModelResponse(
            version=registry_pb2.ModelVersion(
                name=meta.name, version="1", sha256=digest.hexdigest(), size_bytes=size, class_names=meta.class_names
            )
        )

    def DownloadModel(self, request, context):
        self._see("DownloadModel", context)
        chunks = max(1, request.chunk_size_bytes)
        yield registry_pb2.DownloadModelResponse(version=registry_pb2.ModelVersion(name=request.name))
        if request.name == RICH_ERROR_NAME:  # fails after the stream has begun
            context.abort_with_status(rpc_status.to_status(rich_status("DownloadModel")))
        for index in range(chunks):
            yield registry_pb2.DownloadModelResponse(chunk=bytes([index % 256]) * 1000)

    def WatchAlias(self, request, context) -> Iterator[registry_pb2.WatchAliasResponse]:
        self._see("WatchAlias", context)
        ended = threading.Event()  # this call's own: the shared one stays set once any watch ended

        def on_end() -> None:
            ended.set()
            self.watch_cancelled.set()

        context.add_callback(on_end)
        yield registry_pb2.WatchAliasResponse(version=registry_pb2.ModelVersion(name=request.name))
        self.watch_started.set()
        # Keep the stream open until the caller goes away (the callback fires then).
        while context.is_active():
            ended.wait(0.1)


class ProbeServer:
    """Runs a :class:`ProbeRegistry` on 127.0.0.1 (any free port) until :meth:`stop`."""

    def __init__(self, label: str, serving: bool = True) -> None:
        self.registry = ProbeRegistry(label)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(self.registry, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()
        self.set_serving(serving)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    def stop(self) -> None:
        self.server.stop(grace=None)
