"""kill -9 of the detector (streaming mode), of the feature service and of the gateway under load through the
gateway: Detect calls from three clients and a client stream of frames (IngestFrames) run while
the daemon is SIGKILLed and restarted. Afterwards every frame the ingestor accepted is stored
exactly once (row and blob) and detected exactly once per model version, every Detect call was
answered correctly or failed with UNAVAILABLE, and the clients, never restarted, recovered.

Load runs CARMESH_FAULTS_LOAD_S seconds before and after each kill (2 here; `make test-faults`
runs 30)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kit.kafka import ensure_topics
from tests.faults.support import (
    LOAD_S,
    Load,
    ServingMesh,
    detect_client,
    each_accepted_frame_stored_once,
    missing_blobs,
    serving_mesh,
    stored,
    stream_client,
)
from tests.feature_service.support import FreshDatabase
from tests.helpers import DaemonProcess
from tests.support import eventually_async

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def _kill_under_load(mesh: ServingMesh, victim: DaemonProcess, load: Load) -> None:
    stop = asyncio.Event()
    clients = [asyncio.create_task(detect_client(mesh.gateway.address, load, stop)) for _ in range(3)]
    clients.append(asyncio.create_task(stream_client(mesh.gateway.address, mesh.camera, load, stop)))
    try:

        async def flowing(frames: int, runs: int) -> bool:
            got = await stored(mesh.dsn, mesh.camera)
            return got[0] >= frames and got[2] >= runs

        await eventually_async(lambda: flowing(10, 10), what="frames stored and detected", timeout_s=90)
        await asyncio.sleep(LOAD_S)  # sleep is the test: load runs before the kill
        mesh.kill(victim)
        ok_at_kill, accepted_at_kill = load.detect["OK"], len(load.accepted_frames)
        await asyncio.sleep(1.0)  # sleep is the test: load runs while the daemon is dead
        victim.start()
        # The same clients (same channels, same streams loop) carry on.
        await eventually_async(
            lambda: load.detect["OK"] >= ok_at_kill + 20, what="Detect answering again", timeout_s=60
        )
        await eventually_async(
            lambda: len(load.accepted_frames) >= accepted_at_kill + 20, what="the client stream flowing", timeout_s=60
        )
        await asyncio.sleep(LOAD_S)  # sleep is the test: load runs after the restart
    finally:
        stop.set()
        results = await asyncio.gather(*clients, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors

    accepted = len(load.accepted_frames)
    assert accepted == len(set(load.accepted_frames))

    await each_accepted_frame_stored_once(mesh, accepted, timeout_s=120)
    assert not load.wrong_answers, load.wrong_answers[:5]
    # Shown with -s (or -rP): the figures docs/reliability.md quotes.
    print(f"{victim.module}: {accepted} frames accepted and stored once; detect {dict(load.detect)}")


async def test_detector_sigkill_in_streaming_mode_loses_no_frame_and_clients_recover(
    feature_db: FreshDatabase, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap)
    load = Load()
    with serving_mesh(feature_db.dsn, redis_url, kafka_bootstrap, tmp_path) as mesh:
        await _kill_under_load(mesh, mesh.detector, load)
        missing = await missing_blobs(mesh.dsn, mesh.camera, tmp_path / "blobs")
    # Detect while the only replica was dead: UNAVAILABLE, never another status, never a wrong box.
    assert set(load.detect) <= {"OK", "UNAVAILABLE"}, load.detect
    assert load.detect["UNAVAILABLE"] >= 1, load.detect
    assert not load.stream_errors, load.stream_errors
    assert missing == [], missing[:5]


async def test_feature_service_sigkill_under_load_stores_every_frame_once(
    feature_db: FreshDatabase, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap)
    load = Load()
    with serving_mesh(feature_db.dsn, redis_url, kafka_bootstrap, tmp_path) as mesh:
        await _kill_under_load(mesh, mesh.features, load)
        missing = await missing_blobs(mesh.dsn, mesh.camera, tmp_path / "blobs")
    # The feature service is not on the Detect path: every call succeeded.
    assert set(load.detect) == {"OK"}, load.detect
    assert not load.stream_errors, load.stream_errors
    assert missing == [], missing[:5]


async def test_gateway_sigkill_under_load_loses_no_accepted_frame_and_clients_recover(
    feature_db: FreshDatabase, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The front door dies: in-flight calls fail UNAVAILABLE, the clients' own channels reconnect to
    the restarted gateway, and a stream cut mid-way is sent again without storing a frame twice."""
    await ensure_topics(kafka_bootstrap)
    load = Load()
    with serving_mesh(feature_db.dsn, redis_url, kafka_bootstrap, tmp_path) as mesh:
        await _kill_under_load(mesh, mesh.gateway, load)
        missing = await missing_blobs(mesh.dsn, mesh.camera, tmp_path / "blobs")
    assert set(load.detect) <= {"OK", "UNAVAILABLE"}, load.detect
    assert load.detect["UNAVAILABLE"] >= 1, load.detect
    assert set(load.stream_errors) <= {"UNAVAILABLE"}, load.stream_errors
    assert missing == [], missing[:5]
