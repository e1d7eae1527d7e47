"""FeatureService servicer: proto <-> domain translation only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from carmesh.v1 import common_pb2, feature_pb2, feature_pb2_grpc
from feature_service.datasets import Datasets, Snapshot, SnapshotFilter, SnapshotSpec
from feature_service.errors import BadRequest
from feature_service.online import OnlineStore
from feature_service.validation import SPLIT_NAMES, StoredFrame
from kit.names import validate_name
from kit.pagination import BadPageToken, SortKey, next_page_token, page_request

SERVICE_NAME = feature_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name

_SPLIT_TO_PROTO = {name: value for value, name in SPLIT_NAMES.items()}
_SPLIT_BY_NUMBER: dict[int, str] = {int(value): name for value, name in SPLIT_NAMES.items()}
_ENCODING_TO_PROTO = {
    "jpeg": common_pb2.IMAGE_ENCODING_JPEG,
    "png": common_pb2.IMAGE_ENCODING_PNG,
    "other": common_pb2.IMAGE_ENCODING_OTHER,
}


def _timestamp(when: datetime | None) -> Timestamp | None:
    if when is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def _datetime(message: feature_pb2.DatasetFilter, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    try:
        return getattr(message, field).ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError) as exc:  # seconds or nanos outside what a Timestamp may hold
        raise BadRequest(f"filter.{field} is not a valid time: {exc}", field=f"filter.{field}") from None


def filter_from_proto(message: feature_pb2.DatasetFilter) -> SnapshotFilter:
    return SnapshotFilter(
        camera_ids=tuple(message.camera_ids),
        datasets=tuple(message.datasets),
        captured_after=_datetime(message, "captured_after"),
        captured_before=_datetime(message, "captured_before"),
        labelled_only=message.labelled_only,
        classes=tuple(message.classes),
        dataset_namespace=message.dataset_namespace,
    )


def filter_to_proto(flt: SnapshotFilter) -> feature_pb2.DatasetFilter:
    return feature_pb2.DatasetFilter(
        camera_ids=list(flt.camera_ids),
        datasets=list(flt.datasets),
        captured_after=_timestamp(flt.captured_after),
        captured_before=_timestamp(flt.captured_before),
        labelled_only=flt.labelled_only,
        classes=list(flt.classes),
        dataset_namespace=flt.dataset_namespace,
    )


def snapshot_to_proto(snapshot: Snapshot) -> feature_pb2.DatasetSnapshot:
    return feature_pb2.DatasetSnapshot(
        name=snapshot.name,
        version=str(snapshot.version),
        filter=filter_to_proto(snapshot.filter),
        val_fraction=snapshot.val_fraction,
        seed=snapshot.seed,
        train_frames=snapshot.train_frames,
        val_frames=snapshot.val_frames,
        test_frames=snapshot.test_frames,
        class_names=list(snapshot.class_names),
        created_at=_timestamp(snapshot.created_at),
        keep_source_split=snapshot.keep_source_split,
    )


def frame_to_proto(frame: StoredFrame) -> common_pb2.Frame:
    return common_pb2.Frame(
        frame_id=frame.frame_id,
        camera_id=frame.camera_id,
        seq=frame.seq,
        captured_at=_timestamp(frame.captured_at),
        encoding=_ENCODING_TO_PROTO.get(frame.encoding, common_pb2.IMAGE_ENCODING_OTHER),
        image=frame.image,
        width=frame.width,
        height=frame.height,
        annotations=[
            common_pb2.Annotation(
                box=common_pb2.BoundingBox(x1=a.x1, y1=a.y1, x2=a.x2, y2=a.y2),
                class_id=a.class_id,
                class_name=a.class_name,
                ignore=a.ignore,
            )
            for a in frame.annotations
        ],
        source=frame.source,
        dataset=frame.dataset,
        split=_SPLIT_TO_PROTO.get(frame.split, common_pb2.SPLIT_UNSPECIFIED),
        dataset_namespace=frame.dataset_namespace,
    )


def _split_name(split: int) -> str | None:
    if split == common_pb2.SPLIT_UNSPECIFIED:
        return None
    name = _SPLIT_BY_NUMBER.get(split)
    if name is None:
        raise BadRequest(f"split {split} is not one of SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST (or UNSPECIFIED for all)")
    return name


class FeatureServicer(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(self, online: OnlineStore, datasets: Datasets) -> None:
        self._online = online
        self._datasets = datasets

    async def GetOnlineFeatures(
        self, request: feature_pb2.GetOnlineFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> feature_pb2.GetOnlineFeaturesResponse:
        if not request.camera_id:
            raise BadRequest("camera_id is required")
        cam = await self._online.get(validate_name("camera id", request.camera_id, "camera_id"))
        camera = feature_pb2.CameraFeatures(
            camera_id=cam.camera_id,
            last_frame_id=cam.last_frame_id,
            last_seen_at=_timestamp(cam.last_seen_at),
            last_car_count=cam.last_car_count,
            car_count_1m=cam.car_count_1m,
        )
        if cam.features is not None:
            f = cam.features
            camera.features.CopyFrom(
                feature_pb2.FrameFeatures(
                    brightness=f.brightness, contrast=f.contrast, sharpness=f.sharpness, width=f.width, height=f.height
                )
            )
        if cam.last_model is not None:
            m = cam.last_model
            camera.last_model.CopyFrom(common_pb2.ModelRef(name=m.name, version=m.version, alias=m.alias))
        return feature_pb2.GetOnlineFeaturesResponse(camera=camera)

    async def CreateDatasetSnapshot(
        self, request: feature_pb2.CreateDatasetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> feature_pb2.CreateDatasetSnapshotResponse:
        spec = SnapshotSpec(
            name=request.name,
            filter=filter_from_proto(request.filter),
            val_fraction=request.val_fraction,
            seed=request.seed,
            keep_source_split=request.keep_source_split,
        )
        snapshot = await self._datasets.create(spec)
        return feature_pb2.CreateDatasetSnapshotResponse(snapshot=snapshot_to_proto(snapshot))

    async def ListDatasetSnapshots(
        self, request: feature_pb2.ListDatasetSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> feature_pb2.ListDatasetSnapshotsResponse:
        if request.name:
            validate_name("snapshot name", request.name, "name")
        page = page_request("ListDatasetSnapshots", request.page_size, request.page_token, {"name": request.name})
        after = _snapshot_key(page.after) if page.after is not None else ("", 0)
        # One more than the page tells whether another page follows, in the same query.
        found = await self._datasets.list_snapshots(request.name, after, page.size + 1)
        snapshots = found[: page.size]
        token = next_page_token(page, (snapshots[-1].name, snapshots[-1].version)) if len(found) > page.size else ""
        return feature_pb2.ListDatasetSnapshotsResponse(
            snapshots=[snapshot_to_proto(s) for s in snapshots], next_page_token=token
        )

    async def StreamDataset(
        self, request: feature_pb2.StreamDatasetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[feature_pb2.StreamDatasetResponse]:
        split = _split_name(request.split)
        validate_name("snapshot name", request.name, "name")
        async for example in self._datasets.stream(request.name, _version(request.version), split):
            yield feature_pb2.StreamDatasetResponse(
                frame=frame_to_proto(example.frame), index=example.index, total=example.total
            )


def _version(text: str) -> int:
    """A snapshot version as the store keeps it; 0 (the latest) for an empty string."""
    if not text:
        return 0
    if not text.isdecimal() or int(text) < 1:
        raise BadRequest(f"version must be a snapshot version like '2' (or empty for the latest), got {text!r}")
    return int(text)


def _snapshot_key(after: SortKey) -> tuple[str, int]:
    match after:
        case (str(name), int(version)):
            return name, version
    raise BadPageToken("page_token does not fit ListDatasetSnapshots; send an empty page_token to start over")
