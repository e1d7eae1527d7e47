"""An outage of each backing store (Kafka, PostgreSQL, Redis, MLflow) for longer than the
consumers' max poll interval, under load through the gateway (Detect calls from three clients
and a client stream of frames), with the kill tests' assertions: every accepted frame stored
and detected exactly once, every Detect call answered correctly or failed UNAVAILABLE, the same
clients carry on, and the daemons recover by themselves (health SERVING, consumer groups
rejoined, nothing skipped or replayed into duplicates). The MLflow outage runs the registry
path instead: registry calls fail UNAVAILABLE, the detector keeps serving its model and follows
the alias again once MLflow is back.

The store cut is the test's own (tests/faults/stores.py): PostgreSQL and Redis are stopped and
started again on the same port, Tansu (in-memory here) and MLflow are cut behind a TCP proxy;
the others are the session's."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from carmesh.v1 import detector_pb2, detector_pb2_grpc, registry_pb2, registry_pb2_grpc
from devstack import services
from devstack.services import grpc_serving
from kit.clients import insecure_channel
from kit.kafka import ensure_topics
from tests.detector.test_registry_e2e import (
    BOX_V1,
    BOX_V2,
    IMAGE,
    detector_daemon,
    first_box,
    import_requests,
    model_file,
    registry_daemon,
)
from tests.faults.stores import RestartableStore, mlflow_behind_proxy, own_kafka, own_postgres, own_redis
from tests.faults.support import (
    KEY,
    LOAD_S,
    Load,
    ServingMesh,
    bearer,
    detect_client,
    each_accepted_frame_stored_once,
    missing_blobs,
    serving_mesh,
    stored,
    stream_client,
)
from tests.feature_service.support import FreshDatabase, fresh_database, metric
from tests.helpers import DaemonProcess
from tests.support import eventually_async

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

# The consumers' max poll interval, lowered through the daemons' settings (300 s by default), and an
# outage longer than it: a consumer stuck retrying a batch (or waiting on a full window) is dropped
# from its group meanwhile, and must rejoin from its committed offsets.
MAX_POLL_INTERVAL_MS = 4000
OUTAGE_S = 7.0


@pytest.fixture
def short_poll_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read by the daemons the test starts (their settings' environment variables)."""
    monkeypatch.setenv("CARMESH_FEATURE_KAFKA_MAX_POLL_INTERVAL_MS", str(MAX_POLL_INTERVAL_MS))
    monkeypatch.setenv("CARMESH_DETECTOR_STREAM_MAX_POLL_INTERVAL_MS", str(MAX_POLL_INTERVAL_MS))
    monkeypatch.setenv("CARMESH_DETECTOR_STREAM_SESSION_TIMEOUT_MS", "3000")
    # A client stream waits at most this for the broker's acknowledgements, then gets UNAVAILABLE and re-sends.
    monkeypatch.setenv("CARMESH_INGESTOR_ACK_WAIT_MS", "3000")


async def _outage_under_load(mesh: ServingMesh, store: RestartableStore, load: Load) -> None:
    stop = asyncio.Event()
    clients = [asyncio.create_task(detect_client(mesh.gateway.address, load, stop)) for _ in range(3)]
    clients.append(asyncio.create_task(stream_client(mesh.gateway.address, mesh.camera, load, stop)))
    try:

        async def flowing(frames: int, runs: int) -> bool:
            got = await stored(mesh.dsn, mesh.camera)
            return got[0] >= frames and got[2] >= runs

        await eventually_async(lambda: flowing(10, 10), what="frames stored and detected", timeout_s=90)
        await asyncio.sleep(LOAD_S)  # sleep is the test: load runs before the outage
        await asyncio.to_thread(store.stop)
        await asyncio.sleep(OUTAGE_S)  # sleep is the test: the outage, longer than the max poll interval
        ok_at_return, accepted_at_return = load.detect["OK"], len(load.accepted_frames)
        await asyncio.to_thread(store.start)
        returned = time.monotonic()
        # The same clients (same channels, same loops) carry on; the daemons were never restarted.
        await eventually_async(
            lambda: load.detect["OK"] >= ok_at_return + 20, what="Detect answering after the outage", timeout_s=60
        )
        await eventually_async(
            lambda: len(load.accepted_frames) >= accepted_at_return + 20,
            what="the client stream flowing after the outage",
            timeout_s=60,
            detail=mesh.logs,
        )
        flowing_after_s = time.monotonic() - returned
        await asyncio.sleep(LOAD_S)  # sleep is the test: load runs after the store returned
    finally:
        stop.set()
        results = await asyncio.gather(*clients, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors

    accepted = len(load.accepted_frames)
    assert accepted == len(set(load.accepted_frames))
    await each_accepted_frame_stored_once(mesh, accepted, timeout_s=90)
    caught_up_s = time.monotonic() - returned
    for daemon in mesh.daemons:
        assert daemon.proc is not None and daemon.proc.poll() is None, f"{daemon.module} exited:\n{daemon.log()}"
        assert await asyncio.to_thread(grpc_serving, daemon.address), f"{daemon.module} not SERVING"
    assert not load.wrong_answers, load.wrong_answers[:5]
    # Shown with -s (or -rP): the figures docs/reliability.md quotes.
    print(
        f"{store.name} down {OUTAGE_S:.0f}s: {accepted} frames accepted and stored once; "
        f"detect {dict(load.detect)}; stream errors {dict(load.stream_errors)}; flowing again "
        f"{flowing_after_s:.1f}s after the store returned, all stored {caught_up_s:.1f}s after"
    )


def _joins(daemon: DaemonProcess, group_prefix: str) -> int:
    """How often the daemon's consumer joined a group named ``group_prefix...`` (aiokafka's own log line)."""
    return daemon.log().count(f"Joined group '{group_prefix}")


@pytest.fixture
def kafka_store(tmp_path: Path) -> Iterator[RestartableStore]:
    with own_kafka(tmp_path) as store:
        yield store


@pytest.fixture
def postgres_store(stack_config: services.StackConfig) -> Iterator[RestartableStore]:
    with own_postgres(stack_config) as store:
        yield store


@pytest.fixture
def outage_db(postgres_store: RestartableStore) -> Iterator[FreshDatabase]:
    yield from fresh_database(postgres_store.address, "outage")


@pytest.fixture
def redis_store(stack_config: services.StackConfig) -> Iterator[RestartableStore]:
    with own_redis(stack_config) as store:
        yield store


async def test_kafka_outage_longer_than_the_poll_interval(
    feature_db: FreshDatabase, redis_url: str, kafka_store: RestartableStore, tmp_path: Path, short_poll_interval: None
) -> None:
    load = Load()
    await ensure_topics(kafka_store.address)
    with serving_mesh(feature_db.dsn, redis_url, kafka_store.address, tmp_path) as mesh:
        await _outage_under_load(mesh, kafka_store, load)
        missing = await missing_blobs(mesh.dsn, mesh.camera, tmp_path / "blobs")
    # Detect does not touch the broker: every call answered.
    assert set(load.detect) == {"OK"}, load.detect
    # Frames the broker could not acknowledge: UNAVAILABLE, sent again by the client.
    assert set(load.stream_errors) <= {"UNAVAILABLE"}, load.stream_errors
    assert missing == [], missing[:5]


async def test_postgres_outage_longer_than_the_poll_interval(
    postgres_store: RestartableStore,
    outage_db: FreshDatabase,
    redis_url: str,
    kafka_bootstrap: str,
    tmp_path: Path,
    short_poll_interval: None,
) -> None:
    await ensure_topics(kafka_bootstrap)
    load = Load()
    with serving_mesh(outage_db.dsn, redis_url, kafka_bootstrap, tmp_path) as mesh:
        await _outage_under_load(mesh, postgres_store, load)
        missing = await missing_blobs(mesh.dsn, mesh.camera, tmp_path / "blobs")
        # The feature service's consumers, stuck on a batch for longer than the poll interval, were
        # dropped from their groups (their commits refused) and joined again: nothing skipped or doubled.
        assert _joins(mesh.features, "faults-fs-") >= 2, mesh.features.log()[-4000:]
        assert _joins(mesh.features, "faults-fsd-") >= 2, mesh.features.log()[-4000:]
    assert set(load.detect) == {"OK"}, load.detect
    assert not load.stream_errors, load.stream_errors
    assert missing == [], missing[:5]


async def test_redis_outage_longer_than_the_poll_interval(
    feature_db: FreshDatabase,
    redis_store: RestartableStore,
    kafka_bootstrap: str,
    tmp_path: Path,
    short_poll_interval: None,
) -> None:
    await ensure_topics(kafka_bootstrap)
    load = Load()
    with serving_mesh(feature_db.dsn, redis_store.address, kafka_bootstrap, tmp_path) as mesh:
        await _outage_under_load(mesh, redis_store, load)
        missing = await missing_blobs(mesh.dsn, mesh.camera, tmp_path / "blobs")
        # The lost online writes were counted, and the camera's online features rebuilt from PostgreSQL.
        port = mesh.features.metrics_port
        assert port is not None

        def repaired() -> bool:
            outages = metric(port, "carmesh_feature_redis_outages_total")
            up = metric(port, "carmesh_feature_redis_up")
            pending = metric(port, "carmesh_feature_online_repair_pending")
            rebuilt = metric(port, "carmesh_feature_online_rebuilt_cameras_total")
            return outages >= 1 and up == 1 and pending == 0 and rebuilt >= 1

        await eventually_async(lambda: asyncio.to_thread(repaired), what="the online store repaired", timeout_s=30)
    assert set(load.detect) == {"OK"}, load.detect
    assert not load.stream_errors, load.stream_errors
    assert missing == [], missing[:5]


@pytest.fixture
def mlflow_store(mlflow_uri: str) -> Iterator[RestartableStore]:
    with mlflow_behind_proxy(mlflow_uri) as store:
        yield store


async def test_mlflow_outage_registry_unavailable_detector_keeps_serving(
    mlflow_store: RestartableStore, tmp_path: Path
) -> None:
    name = f"outage-{uuid.uuid4().hex[:8]}"
    boxes = {}  # version -> the box its model answers
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} faults *\n")
    with (
        registry_daemon(mlflow_store.address, tmp_path) as registry,
        detector_daemon(registry.address, name, tmp_path) as detector,
    ):
        gateway_args = ["--api-keys-file", str(keys), "--registry-addr", registry.address]
        gateway_args += ["--detector-addrs", detector.address, "--health-check-interval-s", "0.2"]
        with DaemonProcess("gateway", [*gateway_args, "--rate-limit-rps", "0"], timeout_s=30) as gateway:
            async with insecure_channel(gateway.address) as channel:
                registry_stub = registry_pb2_grpc.RegistryServiceStub(channel)
                v1 = await registry_stub.ImportModel(
                    import_requests(model_file(tmp_path / "v1.onnx", BOX_V1), name), metadata=bearer()
                )
                boxes[v1.version.version] = (22, 27, 42, 37)
                await eventually_async(
                    lambda: asyncio.to_thread(grpc_serving, detector.address), what="v1 served", timeout_s=60
                )
                detect: Counter[str] = Counter()
                registry_calls: Counter[str] = Counter()
                wrong: list[str] = []
                stop = asyncio.Event()

                async def detect_loop() -> None:
                    stub = detector_pb2_grpc.DetectorServiceStub(channel)
                    while not stop.is_set():
                        try:
                            reply = await stub.Detect(detector_pb2.DetectRequest(image=IMAGE), metadata=bearer())
                        except grpc.aio.AioRpcError as exc:
                            detect[exc.code().name] += 1
                            await asyncio.sleep(0.05)  # sleep is the test's pacing: a client retrying
                            continue
                        detect[reply.model.version] += 1
                        if boxes.get(reply.model.version) != first_box(reply):
                            wrong.append(f"{first_box(reply)} from {reply.model.version}")
                        await asyncio.sleep(0.01)  # sleep is the test's pacing: leaves the CPU to the daemons

                async def registry_loop() -> None:
                    request = registry_pb2.ListModelVersionsRequest(name=name)
                    while not stop.is_set():
                        try:
                            await registry_stub.ListModelVersions(request, metadata=bearer(), timeout=10)
                            registry_calls["OK"] += 1
                        except grpc.aio.AioRpcError as exc:
                            registry_calls[exc.code().name] += 1
                        await asyncio.sleep(0.1)  # sleep is the test's pacing: an operator's tool polling

                clients = [asyncio.create_task(detect_loop()) for _ in range(2)]
                clients.append(asyncio.create_task(registry_loop()))
                try:
                    await eventually_async(lambda: registry_calls["OK"] >= 3, what="registry calls answered")
                    before = Counter(registry_calls)
                    served_before = detect[v1.version.version]
                    await asyncio.to_thread(mlflow_store.stop)
                    await asyncio.sleep(OUTAGE_S)  # sleep is the test: MLflow is down
                    down = Counter(registry_calls)
                    down.subtract(before)
                    served_while_down = detect[v1.version.version] - served_before
                    await asyncio.to_thread(mlflow_store.start)
                    await eventually_async(
                        lambda: registry_calls["OK"] > down["OK"], what="registry calls answered again", timeout_s=60
                    )
                    # The alias watch recovered: a promotion after the outage reaches the detector.
                    v2 = await registry_stub.ImportModel(
                        import_requests(model_file(tmp_path / "v2.onnx", BOX_V2), name), metadata=bearer()
                    )
                    boxes[v2.version.version] = (12, 32, 20, 48)
                    await eventually_async(
                        lambda: detect[v2.version.version] >= 10,
                        what="the detector serving v2 promoted after the outage",
                        timeout_s=60,
                        detail=lambda: detector.log()[-3000:],
                    )
                    for daemon in (registry, detector, gateway):
                        assert await asyncio.to_thread(grpc_serving, daemon.address), f"{daemon.module} not SERVING"
                finally:
                    stop.set()
                    results = await asyncio.gather(*clients, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    # Registry calls while MLflow was down: UNAVAILABLE, never INTERNAL/UNKNOWN.
    assert down["UNAVAILABLE"] >= 1 and {k for k, n in down.items() if n} <= {"OK", "UNAVAILABLE"}, down
    assert set(registry_calls) <= {"OK", "UNAVAILABLE"}, registry_calls
    # The detector kept serving v1 throughout: every Detect call answered, with the right box.
    assert served_while_down > 0 and not wrong, (detect, wrong[:5])
    assert set(detect) == set(boxes), detect
    print(f"mlflow down {OUTAGE_S:.0f}s: registry calls {dict(registry_calls)}; detect {dict(detect)}")
