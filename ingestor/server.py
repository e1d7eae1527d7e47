"""IngestService: proto <-> domain translation only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from carmesh.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from ingestor.clients import ClientIngest
from ingestor.errors import BadRequest
from ingestor.importer import DatasetImporter, ImportProgress, ImportRequest
from ingestor.sources import FOLDER, STREAM, VIDEO, SourceManager, SourceSpec, SourceStatus
from kit.callers import caller_of
from kit.datasets import ParseOptions
from kit.names import validate_name
from kit.pagination import page_request, paginate

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name

_KINDS = {
    ingest_pb2.SOURCE_KIND_IMAGE_FOLDER: FOLDER,
    ingest_pb2.SOURCE_KIND_VIDEO_FILE: VIDEO,
    ingest_pb2.SOURCE_KIND_STREAM: STREAM,
}
_KIND_OF = {v: k for k, v in _KINDS.items()}
_STATES = {
    "running": ingest_pb2.SOURCE_STATE_RUNNING,
    "finished": ingest_pb2.SOURCE_STATE_FINISHED,
    "stopped": ingest_pb2.SOURCE_STATE_STOPPED,
    "failed": ingest_pb2.SOURCE_STATE_FAILED,
}
_FORMATS = {
    ingest_pb2.DATASET_FORMAT_YOLO: "yolo",
    ingest_pb2.DATASET_FORMAT_COCO: "coco",
    ingest_pb2.DATASET_FORMAT_VOC: "voc",
    ingest_pb2.DATASET_FORMAT_KITTI: "kitti",
    ingest_pb2.DATASET_FORMAT_CSV: "csv",
}


def _spec(spec: ingest_pb2.SourceSpec) -> SourceSpec:
    kind = _KINDS.get(spec.kind)
    if kind is None:
        name = ingest_pb2.SourceKind.Name(spec.kind) if spec.kind in ingest_pb2.SourceKind.values() else spec.kind
        raise BadRequest(
            f"source kind {name} is not a source: "
            "use SOURCE_KIND_IMAGE_FOLDER, SOURCE_KIND_VIDEO_FILE or SOURCE_KIND_STREAM"
        )
    if not spec.uri.strip():
        raise BadRequest("uri is required: a folder, a video file or a stream URL")
    if spec.camera_id.strip():
        validate_name("camera id", spec.camera_id.strip(), "spec.camera_id")
    return SourceSpec(kind=kind, uri=spec.uri, camera_id=spec.camera_id, max_fps=spec.max_fps, loop=spec.loop)


def _status(status: SourceStatus) -> ingest_pb2.SourceStatus:
    spec = status.spec
    return ingest_pb2.SourceStatus(
        source_id=status.source_id,
        spec=ingest_pb2.SourceSpec(
            kind=_KIND_OF[spec.kind], uri=spec.uri, camera_id=spec.camera_id, max_fps=spec.max_fps, loop=spec.loop
        ),
        state=_STATES[status.state],
        frames_published=status.frames_published,
        frames_dropped=status.frames_dropped,
        frames_read=status.frames_read,
        error=status.error,
        connected=status.connected,
        disconnects=status.disconnects,
        reconnects=status.reconnects,
    )


def _progress(progress: ImportProgress) -> ingest_pb2.ImportDatasetResponse:
    return ingest_pb2.ImportDatasetResponse(
        frames_total=progress.frames_total,
        frames_published=progress.frames_published,
        annotations_published=progress.annotations_published,
        frames_skipped=progress.frames_skipped,
        done=progress.done,
        frames_buffered=progress.frames_buffered,
        skip_reasons=progress.skip_reasons,
        class_names=progress.class_names,
    )


def _import_request(request: ingest_pb2.ImportDatasetRequest) -> ImportRequest:
    fmt = _FORMATS.get(request.format)
    if fmt is None:
        raise BadRequest(
            f"format {request.format} is not a data set format: use one of "
            + ", ".join(ingest_pb2.DatasetFormat.Name(k) for k in _FORMATS)
        )
    if request.default_split not in common_pb2.Split.values():
        raise BadRequest(f"default_split {request.default_split} is not a Split")
    for kind, field, value in (("data set", "dataset", request.dataset), ("camera id", "camera_id", request.camera_id)):
        if value.strip():
            validate_name(kind, value.strip(), field)
    return ImportRequest(
        fmt=fmt,
        path=request.path,
        dataset=request.dataset,
        camera_id=request.camera_id,
        options=ParseOptions(
            class_map=dict(request.class_map),
            class_names=[n.strip() for n in request.class_names],
            default_split=request.default_split,
        ),
    )


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, sources: SourceManager, importer: DatasetImporter, clients: ClientIngest) -> None:
        self._sources = sources
        self._importer = importer
        self._clients = clients

    async def IngestFrames(
        self, request_iterator: AsyncIterator[ingest_pb2.IngestFramesRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.IngestFramesResponse:
        async def frames() -> AsyncIterator[common_pb2.Frame]:
            async for message in request_iterator:
                yield message.frame

        result = await self._clients.ingest(frames(), context.peer(), caller_of(context.invocation_metadata()))
        return ingest_pb2.IngestFramesResponse(
            accepted=result.accepted,
            rejected=result.rejected,
            acknowledged=result.acknowledged,
            buffered=result.buffered,
            rejections=result.rejections,
        )

    async def StartSource(
        self, request: ingest_pb2.StartSourceRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.StartSourceResponse:
        status = await self._sources.start(_spec(request.spec))
        return ingest_pb2.StartSourceResponse(source=_status(status))

    async def StopSource(
        self, request: ingest_pb2.StopSourceRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.StopSourceResponse:
        status = await self._sources.stop(validate_name("source id", request.source_id, "source_id"))
        return ingest_pb2.StopSourceResponse(source=_status(status))

    async def ListSources(
        self, request: ingest_pb2.ListSourcesRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListSourcesResponse:
        page = page_request("ListSources", request.page_size, request.page_token)
        # By source_id: ids never change, so pages stay put while sources start and end.
        sources, token = paginate(self._sources.list_all(), lambda s: (s.source_id,), page)
        return ingest_pb2.ListSourcesResponse(sources=[_status(s) for s in sources], next_page_token=token)

    async def ImportDataset(
        self, request: ingest_pb2.ImportDatasetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.ImportDatasetResponse]:
        async for progress in self._importer.run(_import_request(request)):
            yield _progress(progress)
