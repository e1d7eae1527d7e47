"""The data pipeline as one chain of real processes: the ingestor imports apollo-cars (KITTI)
into Kafka, feature_service stores it, and a snapshot streams back the same bytes and boxes."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import grpc

from carmesh.v1 import common_pb2, feature_pb2, feature_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from tests.feature_service.support import daemon_args, fetchval, fresh_database
from tests.helpers import DaemonProcess
from tests.support import eventually_async


def _kitti_boxes(label: Path) -> Counter[tuple[str, int, int, int, int]]:
    boxes: Counter[tuple[str, int, int, int, int]] = Counter()
    for line in label.read_text().splitlines():
        parts = line.split()
        if parts:
            x1, y1, x2, y2 = (round(float(v)) for v in parts[4:8])
            boxes[(parts[0], x1, y1, x2, y2)] += 1
    return boxes


async def _snapshot_round_trip(ingestor: str, features: str, root: Path, dataset: str, dsn: str) -> None:
    async with (
        grpc.aio.insecure_channel(ingestor) as ich,
        grpc.aio.insecure_channel(features, options=[("grpc.max_receive_message_length", 64 << 20)]) as fch,
    ):
        progress = [
            p
            async for p in ingest_pb2_grpc.IngestServiceStub(ich).ImportDataset(
                ingest_pb2.ImportDatasetRequest(
                    format=ingest_pb2.DATASET_FORMAT_KITTI, path=str(root), dataset=dataset
                ),
                timeout=300,
            )
        ]
        assert progress[-1].done and progress[-1].frames_published == 148, progress[-1]

        async def all_stored() -> bool:
            return await fetchval(dsn, "select count(*) from frames where dataset = $1", dataset) == 148

        await eventually_async(all_stored, what="feature_service to store all 148 frames", timeout_s=180)

        stub = feature_pb2_grpc.FeatureServiceStub(fch)
        snapshot = (
            await stub.CreateDatasetSnapshot(
                feature_pb2.CreateDatasetSnapshotRequest(
                    name=dataset, filter=feature_pb2.DatasetFilter(datasets=[dataset]), keep_source_split=True
                )
            )
        ).snapshot
        assert (snapshot.train_frames, snapshot.val_frames) == (98, 50)

        seen = 0
        for split, folder in ((common_pb2.SPLIT_TRAIN, "train"), (common_pb2.SPLIT_VAL, "val")):
            async for item in stub.StreamDataset(feature_pb2.StreamDatasetRequest(name=dataset, split=split)):
                frame = item.frame
                image = Path(frame.source)
                assert image.parent.parent.name == folder
                assert frame.image == image.read_bytes(), f"{image}: bytes differ after the round trip"
                got = Counter(
                    (a.class_name, round(a.box.x1), round(a.box.y1), round(a.box.x2), round(a.box.y2))
                    for a in frame.annotations
                )
                assert got == _kitti_boxes(image.parent.parent / "labels" / f"{image.stem}.txt"), image
                seen += 1
        assert seen == 148


def test_apollo_import_store_snapshot_round_trip(
    shared_dir: Path, kafka_bootstrap: str, postgres_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    dataset = f"apollo-chain-{uuid.uuid4().hex[:8]}"
    kafka = ["--kafka-bootstrap", kafka_bootstrap, "--no-kafka-idempotence"]
    with (
        contextmanager(fresh_database)(postgres_dsn, "chain") as db,
        DaemonProcess(
            "feature_service",
            daemon_args(dsn=db.dsn, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, blob_dir=tmp_path / "blobs"),
        ) as features,
        DaemonProcess(
            "ingestor", [*kafka, "--metrics-port", "0", "--allowed-roots", str(shared_dir / "data")]
        ) as ingestor,
    ):
        asyncio.run(
            _snapshot_round_trip(
                ingestor.address, features.address, shared_dir / "data" / "apollo-cars", dataset, db.dsn
            )
        )
