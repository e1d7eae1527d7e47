"""Training-data poisoning (issue 16, hole 4), through the gateway to the real ingestor, Kafka and
feature_service: a client key cannot pre-empt an import's frames with its own boxes, its labels
land in its own namespace, and labels need the `ingest.labels` scope."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2

from carmesh.v1 import common_pb2, feature_pb2, feature_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from kit.errors import STATUS_DETAILS_KEY
from tests.feature_service.support import daemon_args, fetch, fetchval, fresh_database
from tests.helpers import DaemonProcess, free_port
from tests.ingestor.datasets import SPLITS, TRUTH, expected_boxes, file_name, write_yolo
from tests.ingestor.support import small_apollo_frames
from tests.status_details import details_of
from tests.support import eventually_async

pytestmark = pytest.mark.e2e

# name -> (key, scopes): a client allowed to send labels, a camera that may not, the operator.
KEYS = {
    "mallory": ("mallory-key-0123456789abcdef", "ingest,ingest.labels"),
    "camera": ("camera-key-0123456789abcdef", "ingest"),
    "ops": ("ops-key-0123456789abcdef", "*"),
}
# The fake boxes the client sends for every image: nothing like the data set's.
FAKE = (("person", 1.0, 2.0, 33.0, 44.0),)

Box = tuple[str, int, int, int, int]


def _bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[name][0]}"),)


def _predictable_id(dataset: str, rel: str) -> str:
    """The id an import gave a frame before the fix: anyone could compute it from the data set
    name and the image's path, and send a frame with it first."""
    return hashlib.sha256("\x1f".join(("dataset", dataset, rel)).encode()).hexdigest()[:32]


def _boxes(annotations: object) -> list[Box]:
    return sorted(
        (a.class_name, round(a.box.x1), round(a.box.y1), round(a.box.x2), round(a.box.y2))
        for a in annotations  # type: ignore[attr-defined]
    )


def _rounded(boxes: list[tuple[str, float, float, float, float]]) -> list[Box]:
    return sorted((name, round(x1), round(y1), round(x2), round(y2)) for name, x1, y1, x2, y2 in boxes)


def _import_request(root: Path, dataset: str) -> ingest_pb2.ImportDatasetRequest:
    return ingest_pb2.ImportDatasetRequest(format=ingest_pb2.DATASET_FORMAT_YOLO, path=str(root), dataset=dataset)


def _reason(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            return str(details_of(status_pb2.Status.FromString(value))["ErrorInfo"].reason)
    return ""


@contextmanager
def _mesh(tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str, redis_url: str) -> Iterator[tuple[str, str]]:
    """The gateway in front of an ingestor and a feature_service; yields (gateway address, database DSN)."""
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{key} {name} {scopes}\n" for name, (key, scopes) in KEYS.items()))
    kafka = ["--kafka-bootstrap", kafka_bootstrap, "--no-kafka-idempotence"]
    with (
        contextmanager(fresh_database)(postgres_dsn, "poison") as db,
        DaemonProcess(
            "feature_service",
            daemon_args(dsn=db.dsn, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, blob_dir=tmp_path / "blobs"),
        ) as features,
        DaemonProcess("ingestor", [*kafka, "--metrics-port", "0", "--allowed-roots", str(tmp_path / "data")]) as ing,
        DaemonProcess(
            "gateway",
            [
                "--api-keys-file",
                str(keys),
                "--registry-addr",
                f"127.0.0.1:{free_port()}",
                "--detector-addrs",
                f"127.0.0.1:{free_port()}",
                "--ingestor-addr",
                ing.address,
                "--feature-addr",
                features.address,
                "--health-check-interval-s",
                "0.2",
            ],
        ) as gateway,
    ):
        yield gateway.address, db.dsn


async def _stored(dsn: str, dataset: str, count: int, what: str) -> None:
    async def enough() -> bool:
        return await fetchval(dsn, "select count(*) from frames where dataset = $1", dataset) >= count

    await eventually_async(enough, what=what, timeout_s=90)


async def _snapshot_boxes(
    features: feature_pb2_grpc.FeatureServiceStub, name: str, dataset: str, namespace: str
) -> dict[str, tuple[str, list[Box]]]:
    """Snapshot of ``dataset`` in ``namespace``: image file stem -> (namespace on the frame, boxes)."""
    flt = feature_pb2.DatasetFilter(datasets=[dataset], dataset_namespace=namespace)
    request = feature_pb2.CreateDatasetSnapshotRequest(name=name, filter=flt, keep_source_split=True)
    await features.CreateDatasetSnapshot(request, metadata=_bearer("ops"), timeout=30)
    out = {}
    async for item in features.StreamDataset(
        feature_pb2.StreamDatasetRequest(name=name), metadata=_bearer("ops"), timeout=60
    ):
        frame = item.frame
        stem = Path(frame.source).stem if namespace == "" else frame.source
        out[stem] = (frame.dataset_namespace, _boxes(frame.annotations))
    return out


async def _attack_then_import(gateway: str, dsn: str, root: Path, written: dict[str, bytes], dataset: str) -> None:
    async with grpc.aio.insecure_channel(gateway, options=[("grpc.max_receive_message_length", 64 << 20)]) as chan:
        ingest = ingest_pb2_grpc.IngestServiceStub(chan)
        features = feature_pb2_grpc.FeatureServiceStub(chan)

        # 1. The client sends every image of the data set first, under the data set's name, the
        #    ids the import would give them, and fake boxes.
        async def poisoned() -> object:
            for truth in TRUTH:
                rel = f"images/{truth.split}/{file_name(truth)}"
                yield ingest_pb2.IngestFramesRequest(
                    frame=common_pb2.Frame(
                        frame_id=_predictable_id(dataset, rel),
                        camera_id=dataset,
                        image=written[file_name(truth)],
                        dataset=dataset,
                        split=SPLITS[truth.split],
                        source=truth.name,
                        annotations=[
                            common_pb2.Annotation(class_name=c, box=common_pb2.BoundingBox(x1=x1, y1=y1, x2=x2, y2=y2))
                            for c, x1, y1, x2, y2 in FAKE
                        ],
                    )
                )

        reply = await ingest.IngestFrames(poisoned(), metadata=_bearer("mallory"), timeout=30)  # type: ignore[arg-type]
        assert (reply.accepted, reply.acknowledged, reply.rejected) == (len(TRUTH), len(TRUTH), 0), reply
        await _stored(dsn, dataset, len(TRUTH), "feature_service to store the client's frames")

        # 2. The operator imports the real data set under the same name.
        request = _import_request(root, dataset)
        progress = [p async for p in ingest.ImportDataset(request, metadata=_bearer("ops"), timeout=60)]
        assert progress[-1].done and progress[-1].frames_published == len(TRUTH), progress[-1]
        await _stored(dsn, dataset, 2 * len(TRUTH), "feature_service to store the imported frames beside the client's")

        # 3. The snapshot of the data set holds the real boxes only, from the operator's namespace.
        real = await _snapshot_boxes(features, f"{dataset}-real", dataset, "")
        assert real == {t.name: ("", _rounded(expected_boxes(t.name))) for t in TRUTH}

        # 4. The client's frames are kept, in its own namespace, with its own boxes.
        theirs = await _snapshot_boxes(features, f"{dataset}-mallory", dataset, "mallory")
        assert theirs == {t.name: ("mallory", _rounded(list(FAKE))) for t in TRUTH}
        rows = await fetch(dsn, "select dataset_namespace, source from frames where dataset = $1", dataset)
        assert sorted(r["dataset_namespace"] for r in rows if r["source"] in {t.name for t in TRUTH}) == [
            "mallory"
        ] * len(TRUTH)


async def _scopes(gateway: str, root: Path, written: dict[str, bytes], dataset: str) -> None:
    async with grpc.aio.insecure_channel(gateway) as chan:
        ingest = ingest_pb2_grpc.IngestServiceStub(chan)
        image = written[file_name(TRUTH[0])]

        async def one(**fields: object) -> object:
            yield ingest_pb2.IngestFramesRequest(frame=common_pb2.Frame(camera_id="cam-1", image=image, **fields))  # type: ignore[arg-type]

        # Plain `ingest` sends unlabelled frames ...
        reply = await ingest.IngestFrames(one(), metadata=_bearer("camera"), timeout=30)  # type: ignore[arg-type]
        assert (reply.accepted, reply.rejected) == (1, 0)
        # ... and no labels of any kind.
        labels: list[dict[str, object]] = [
            {"annotations": [common_pb2.Annotation(class_name="car", box=common_pb2.BoundingBox(x2=5, y2=5))]},
            {"dataset": dataset},
            {"split": common_pb2.SPLIT_TRAIN},
        ]
        for fields in labels:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ingest.IngestFrames(one(**fields), metadata=_bearer("camera"), timeout=30)  # type: ignore[arg-type]
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, fields
            assert _reason(err.value) == "SCOPE_DENIED" and "ingest.labels" in (err.value.details() or "")
        # Importing into the operator's namespace takes `ingest.import`, which neither client key has.
        request = _import_request(root, dataset)
        for name in ("camera", "mallory"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [p async for p in ingest.ImportDataset(request, metadata=_bearer(name), timeout=30)]
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and _reason(err.value) == "SCOPE_DENIED"


def test_client_cannot_poison_an_import_and_labels_need_their_scope(
    shared_dir: Path, kafka_bootstrap: str, postgres_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    dataset = f"poison-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "data" / dataset
    written = write_yolo(root, small_apollo_frames(shared_dir, len(TRUTH)))
    with _mesh(tmp_path, kafka_bootstrap, postgres_dsn, redis_url) as (gateway, dsn):
        asyncio.run(_scopes(gateway, root, written, dataset))
        asyncio.run(_attack_then_import(gateway, dsn, root, written, dataset))
