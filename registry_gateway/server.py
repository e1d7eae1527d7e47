"""RegistryService servicer: proto <-> domain translation only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import IO

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from kit.enums import enum_name
from kit.pagination import page_request, paginate
from registry_gateway.errors import InvalidArgument
from registry_gateway.metrics import RegistryMetrics
from registry_gateway.registry import ImportRequest, Registry
from registry_gateway.schema import Family, ModelVersionInfo, RegisteredModelInfo
from registry_gateway.watch import AliasWatcher

_FAMILY_FROM_PROTO = {
    registry_pb2.MODEL_FAMILY_YOLOV8: Family.YOLOV8,
    registry_pb2.MODEL_FAMILY_YOLOX: Family.YOLOX,
}
_FAMILY_TO_PROTO = {v: k for k, v in _FAMILY_FROM_PROTO.items()}
# The smallest chunk worth a message; the largest stays well under the message limit.
MIN_CHUNK_BYTES = 1024
_FRAMING_BYTES = 64 * 1024


def _timestamp_ms(ms: int) -> Timestamp:
    ts = Timestamp()
    if ms:
        ts.FromMilliseconds(ms)
    return ts


def version_to_proto(info: ModelVersionInfo) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        name=info.name,
        version=info.version,
        aliases=list(info.aliases),
        family=_FAMILY_TO_PROTO[info.family] if info.family else registry_pb2.MODEL_FAMILY_UNSPECIFIED,
        class_names=list(info.class_names),
        input_width=info.input_width,
        input_height=info.input_height,
        sha256=info.sha256,
        size_bytes=info.size_bytes,
        created_at=_timestamp_ms(info.created_at_ms),
        description=info.description,
        run_id=info.run_id,
        source=info.source,
        metrics=info.metrics,
        tags=info.tags,
    )


def model_to_proto(info: RegisteredModelInfo) -> registry_pb2.RegisteredModel:
    return registry_pb2.RegisteredModel(
        name=info.name,
        description=info.description,
        aliases=info.aliases,
        latest_version=info.latest_version,
        created_at=_timestamp_ms(info.created_at_ms),
        updated_at=_timestamp_ms(info.updated_at_ms),
    )


def import_request(meta: registry_pb2.ImportModelMetadata) -> ImportRequest:
    # UNSPECIFIED: the registry tells the family from the tensor layout.
    family = _FAMILY_FROM_PROTO.get(meta.family)
    if family is None and meta.family != registry_pb2.MODEL_FAMILY_UNSPECIFIED:
        known = ", ".join(registry_pb2.ModelFamily.Name(f) for f in _FAMILY_FROM_PROTO)
        raise InvalidArgument(
            f"family {enum_name(registry_pb2.ModelFamily, meta.family)} is not supported; use {known}",
            field="metadata.family",
        )
    return ImportRequest(
        name=meta.name,
        family=family,
        class_names=tuple(meta.class_names),
        description=meta.description,
        tags=dict(meta.tags),
        alias=meta.alias,
        sha256=meta.sha256,
        file_name=meta.file_name,
    )


async def _chunks(requests: AsyncIterator[registry_pb2.ImportModelRequest]) -> AsyncIterator[bytes]:
    async for message in requests:
        if message.WhichOneof("payload") != "chunk":
            raise InvalidArgument("only the first ImportModel message may carry metadata; the rest carry chunks")
        yield message.chunk


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self,
        registry: Registry,
        watcher: AliasWatcher,
        default_chunk_bytes: int,
        max_message_bytes: int,
        metrics: RegistryMetrics,
    ) -> None:
        self._registry = registry
        self._watcher = watcher
        self._metrics = metrics
        self._default_chunk_bytes = default_chunk_bytes
        self._max_chunk_bytes = max(MIN_CHUNK_BYTES, max_message_bytes - _FRAMING_BYTES)

    async def ImportModel(
        self, request_iterator: AsyncIterator[registry_pb2.ImportModelRequest], context: grpc.aio.ServicerContext
    ) -> registry_pb2.ImportModelResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidArgument("the first ImportModel message must carry metadata (name, family, ...)")
        info = await self._registry.import_model(import_request(first.metadata), _chunks(request_iterator))
        self._metrics.imported_versions.labels(info.name).inc()
        return registry_pb2.ImportModelResponse(version=version_to_proto(info))

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        page = page_request("ListModels", request.page_size, request.page_token)
        models, token = paginate(await self._registry.list_models(), lambda m: (m.name,), page)
        return registry_pb2.ListModelsResponse(models=[model_to_proto(m) for m in models], next_page_token=token)

    async def ListModelVersions(
        self, request: registry_pb2.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListModelVersionsResponse:
        page = page_request("ListModelVersions", request.page_size, request.page_token, {"name": request.name})
        # Newest first: MLflow versions are decimal integers, so the key negates them.
        versions, token = paginate(await self._registry.list_versions(request.name), lambda v: (-int(v.version),), page)
        return registry_pb2.ListModelVersionsResponse(
            versions=[version_to_proto(v) for v in versions], next_page_token=token
        )

    async def GetModelVersion(
        self, request: registry_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetModelVersionResponse:
        info = await self._registry.get_version(request.name, request.version, request.alias)
        return registry_pb2.GetModelVersionResponse(version=version_to_proto(info))

    async def SetAlias(
        self, request: registry_pb2.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.SetAliasResponse:
        info, previous = await self._registry.set_alias(request.name, request.alias, request.version)
        self._metrics.alias_changes.labels(info.name, request.alias, "set").inc()
        return registry_pb2.SetAliasResponse(version=version_to_proto(info), previous_version=previous)

    async def DeleteAlias(
        self, request: registry_pb2.DeleteAliasRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteAliasResponse:
        await self._registry.delete_alias(request.name, request.alias)
        self._metrics.alias_changes.labels(request.name, request.alias, "delete").inc()
        return registry_pb2.DeleteAliasResponse()

    async def RollbackAlias(
        self, request: registry_pb2.RollbackAliasRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.RollbackAliasResponse:
        info, previous = await self._registry.rollback_alias(request.name, request.alias)
        self._metrics.alias_changes.labels(info.name, request.alias, "rollback").inc()
        return registry_pb2.RollbackAliasResponse(version=version_to_proto(info), previous_version=previous)

    async def DownloadModel(
        self, request: registry_pb2.DownloadModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.DownloadModelResponse]:
        chunk_bytes = request.chunk_size_bytes or self._default_chunk_bytes
        if not MIN_CHUNK_BYTES <= chunk_bytes <= self._max_chunk_bytes:
            raise InvalidArgument(
                f"chunk_size_bytes {request.chunk_size_bytes} is out of range: use 0 for the default "
                f"({self._default_chunk_bytes}) or {MIN_CHUNK_BYTES}..{self._max_chunk_bytes}"
            )
        info, path = await self._registry.open_download(request.name, request.version, request.alias)
        yield registry_pb2.DownloadModelResponse(version=version_to_proto(info))
        file: IO[bytes] = await asyncio.to_thread(path.open, "rb")
        sent_bytes = self._metrics.download_bytes.labels(info.name)
        try:
            while chunk := await asyncio.to_thread(file.read, chunk_bytes):
                yield registry_pb2.DownloadModelResponse(chunk=chunk)
                sent_bytes.inc(len(chunk))
        finally:
            await asyncio.to_thread(file.close)

    async def GetTritonConfig(
        self, request: registry_pb2.GetTritonConfigRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetTritonConfigResponse:
        info, text = await self._registry.triton_config(request.name, request.version, request.alias)
        return registry_pb2.GetTritonConfigResponse(version=version_to_proto(info), config_pbtxt=text)

    async def WatchAlias(
        self, request: registry_pb2.WatchAliasRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.WatchAliasResponse]:
        self._registry.check_watch(request.name, request.alias)
        async for info in self._watcher.watch(request.name, request.alias):
            response = registry_pb2.WatchAliasResponse()
            response.observed_at.GetCurrentTime()
            if info is not None:
                response.version.CopyFrom(version_to_proto(info))
            yield response
