"""RegistryService end to end: the daemon as its own process on a real MLflow server."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from carmesh.v1 import registry_pb2 as pb
from carmesh.v1 import registry_pb2_grpc
from kit.clients import insecure_channel
from tests.paging import assert_bad_pages_refused, assert_pages_cover
from tests.registry.support import (
    COCO80,
    MAX_IMPORT_BYTES,
    Gateway,
    import_messages,
    next_version,
    sha256,
    yolov8_file,
    yolox_file,
)
from tests.support import eventually_async

Stub = registry_pb2_grpc.RegistryServiceStub


async def import_bytes(stub: Stub, data: bytes, name: str, **metadata: object) -> pb.ModelVersion:
    reply = await stub.ImportModel(import_messages(data, name, **metadata))  # type: ignore[arg-type]
    return reply.version


async def download(stub: Stub, **request: object) -> tuple[pb.ModelVersion, list[bytes]]:
    version = pb.ModelVersion()
    chunks: list[bytes] = []
    async for message in stub.DownloadModel(pb.DownloadModelRequest(**request)):  # type: ignore[arg-type]
        if message.WhichOneof("payload") == "version":
            assert not chunks, "the version must come before the chunks"
            version = message.version
        else:
            chunks.append(message.chunk)
    return version, chunks


def run_artifact(mlflow_uri: str, run_id: str, path: str, dst: Path) -> Path:
    client = MlflowClient(tracking_uri=mlflow_uri)
    return Path(client.download_artifacts(run_id, path, str(dst)))


async def test_import_yolov8_then_list_get_and_artifacts(
    stub: Stub, gateway: Gateway, model_name: str, tmp_path: Path
) -> None:
    data = yolov8_file(tmp_path / "cars.onnx", names=["car", "truck"]).read_bytes()
    version = await import_bytes(
        stub,
        data,
        model_name,
        sha256=sha256(data),
        file_name="cars.onnx",
        description="two classes",
        tags={"owner": "tests"},
    )
    assert (version.name, version.version) == (model_name, "1")
    assert version.family == pb.MODEL_FAMILY_YOLOV8
    assert list(version.class_names) == ["car", "truck"]  # from the ONNX metadata
    assert (version.input_width, version.input_height) == (96, 64)
    assert (version.sha256, version.size_bytes) == (sha256(data), len(data))
    assert version.description == "two classes" and version.run_id
    assert version.source.endswith("/model")
    tags = dict(version.tags)
    assert tags["owner"] == "tests"
    assert tags["carmesh.family"] == "yolov8"
    assert json.loads(tags["carmesh.class_names"]) == ["car", "truck"]
    assert (tags["carmesh.input_width"], tags["carmesh.input_height"]) == ("96", "64")
    assert (tags["carmesh.sha256"], tags["carmesh.size_bytes"]) == (sha256(data), str(len(data)))
    assert tags["carmesh.onnx_path"] == "model.onnx"

    models = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert models[model_name].latest_version == "1"
    versions = (await stub.ListModelVersions(pb.ListModelVersionsRequest(name=model_name))).versions
    assert [v.version for v in versions] == ["1"]
    got = (await stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, version="1"))).version
    assert got.sha256 == version.sha256 and list(got.class_names) == ["car", "truck"]

    config = run_artifact(gateway.mlflow_uri, version.run_id, "model/config.pbtxt", tmp_path / "a").read_text()
    assert f'name: "{model_name}"' in config
    assert 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 8" in config and "dynamic_batching" in config
    assert 'name: "images"\n    data_type: TYPE_FP32\n    dims: [ 3, 64, 96 ]' in config
    assert 'name: "output0"\n    data_type: TYPE_FP32\n    dims: [ 6, 5 ]' in config
    manifest_file = run_artifact(gateway.mlflow_uri, version.run_id, "model/carmesh.json", tmp_path / "b")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["family"] == "yolov8" and manifest["class_names"] == ["car", "truck"]
    assert (manifest["sha256"], manifest["size_bytes"]) == (sha256(data), len(data))
    stored = run_artifact(gateway.mlflow_uri, version.run_id, "model/model.onnx", tmp_path / "c").read_bytes()
    assert stored == data


async def test_import_real_yolox_nano_download_and_cache(
    stub: Stub, gateway: Gateway, model_name: str, shared_dir: Path, tmp_path: Path
) -> None:
    data = (shared_dir / "models" / "yolox_nano.onnx").read_bytes()
    version = await import_bytes(
        stub,
        data,
        model_name,
        family=pb.MODEL_FAMILY_YOLOX,
        class_names=COCO80,
        alias="champion",
        sha256=sha256(data),
        chunk_bytes=1024 * 1024,
    )
    assert version.family == pb.MODEL_FAMILY_YOLOX
    assert list(version.aliases) == ["champion"]
    assert (version.input_width, version.input_height) == (416, 416)
    assert list(version.class_names) == COCO80
    by_alias = (await stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, alias="champion"))).version
    assert by_alias.version == version.version

    cached = gateway.cache_dir / f"{sha256(data)}.onnx"
    assert not cached.exists()
    meta, chunks = await download(stub, name=model_name, alias="champion", chunk_size_bytes=64 * 1024)
    assert (meta.version, meta.sha256, meta.size_bytes) == (version.version, sha256(data), len(data))
    assert len(chunks) == math.ceil(len(data) / (64 * 1024))
    assert b"".join(chunks) == data
    assert cached.read_bytes() == data
    # The second download is served from the cache, in the default chunk size (1 MiB).
    _, chunks = await download(stub, name=model_name, version=version.version)
    assert b"".join(chunks) == data and len(chunks) == math.ceil(len(data) / (1024 * 1024))

    config = run_artifact(gateway.mlflow_uri, version.run_id, "model/config.pbtxt", tmp_path).read_text()
    assert "max_batch_size: 0" in config and "dynamic_batching" not in config
    assert 'name: "output"\n    data_type: TYPE_FP32\n    dims: [ 1, 3549, 85 ]' in config


async def test_set_delete_and_rollback_alias(stub: Stub, model_name: str, tmp_path: Path) -> None:
    for score in (0.5, 0.6, 0.7):
        await import_bytes(stub, yolov8_file(tmp_path / f"{score}.onnx", score=score).read_bytes(), model_name)

    async def set_alias(version: str) -> str:
        reply = await stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="prod", version=version))
        assert reply.version.version == version and "prod" in reply.version.aliases
        return reply.previous_version

    assert await set_alias("1") == ""
    assert await set_alias("2") == "1"
    assert await set_alias("3") == "2"
    listed = (await stub.ListModelVersions(pb.ListModelVersionsRequest(name=model_name))).versions
    assert {v.version: list(v.aliases) for v in listed} == {"3": ["prod"], "2": [], "1": []}
    for expected_to, expected_from in (("2", "3"), ("1", "2")):
        reply = await stub.RollbackAlias(pb.RollbackAliasRequest(name=model_name, alias="prod"))
        assert (reply.version.version, reply.previous_version) == (expected_to, expected_from)
        got = await stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, alias="prod"))
        assert got.version.version == expected_to
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.RollbackAlias(pb.RollbackAliasRequest(name=model_name, alias="prod"))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no earlier version" in (failed.value.details() or "")

    # History restarts from the current holder: 1 -> 3, then back to 1.
    assert await set_alias("3") == "1"
    reply = await stub.RollbackAlias(pb.RollbackAliasRequest(name=model_name, alias="prod"))
    assert (reply.version.version, reply.previous_version) == ("1", "3")

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="prod", version="9"))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no version '9'; versions: 1, 2, 3" in (failed.value.details() or "")

    await stub.DeleteAlias(pb.DeleteAliasRequest(name=model_name, alias="prod"))
    for call in (
        stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, alias="prod")),
        stub.DeleteAlias(pb.DeleteAliasRequest(name=model_name, alias="prod")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert "has no alias 'prod'" in (failed.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.RollbackAlias(pb.RollbackAliasRequest(name=model_name, alias="prod"))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def scrape(gateway: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the daemon's /metrics: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_imports_downloads_alias_moves_and_mlflow_calls(
    stub: Stub, gateway: Gateway, model_name: str, tmp_path: Path
) -> None:
    before = scrape(gateway)
    files = [yolov8_file(tmp_path / f"{score}.onnx", score=score).read_bytes() for score in (0.5, 0.6)]
    for data in files:
        await import_bytes(stub, data, model_name)
    for version in ("1", "2"):
        await stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="prod", version=version))
    await stub.RollbackAlias(pb.RollbackAliasRequest(name=model_name, alias="prod"))
    _, chunks = await download(stub, name=model_name, alias="prod")
    await stub.DeleteAlias(pb.DeleteAliasRequest(name=model_name, alias="prod"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, version="9"))

    after = scrape(gateway)

    def value(name: str, **labels: str) -> float:
        return after.get((name, frozenset(labels.items())), 0.0)

    def added(name: str, **labels: str) -> float:
        return value(name, **labels) - before.get((name, frozenset(labels.items())), 0.0)

    assert value("carmesh_registry_imported_versions_total", model=model_name) == 2
    assert value("carmesh_registry_download_bytes_total", model=model_name) == len(files[0]) == len(b"".join(chunks))
    moves = {
        a: value("carmesh_registry_alias_changes_total", model=model_name, alias="prod", action=a)
        for a in (
            "set",
            "rollback",
            "delete",
        )
    }
    assert moves == {"set": 2, "rollback": 1, "delete": 1}
    # Other tests share the daemon: count at least this test's MLflow calls.
    assert added("carmesh_registry_mlflow_calls_total", operation="set_alias", outcome="ok") >= 2
    assert added("carmesh_registry_mlflow_calls_total", operation="get_version", outcome="NOT_FOUND") >= 1
    assert added("carmesh_registry_mlflow_seconds_count", operation="register_files") >= 2


async def test_watch_alias_two_watchers_share_one_poller(
    stub: Stub, gateway: Gateway, model_name: str, tmp_path: Path
) -> None:
    for score in (0.5, 0.6):
        await import_bytes(stub, yolov8_file(tmp_path / f"{score}.onnx", score=score).read_bytes(), model_name)
    await stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="live", version="1"))
    await eventually_async(
        lambda: gateway.metric("carmesh_registry_watched_aliases") == 0,
        what="no watched aliases",
        detail=lambda: f"carmesh_registry_watched_aliases is {gateway.metric('carmesh_registry_watched_aliases')}",
    )

    watchers = [stub.WatchAlias(pb.WatchAliasRequest(name=model_name, alias="live")) for _ in range(2)]
    try:
        for watcher in watchers:
            first = await next_version(watcher)
            assert first is not None and first.version == "1" and first.class_names == ["car", "truck"]
        # Two streams on the same alias are one polled key.
        assert gateway.metric("carmesh_registry_watched_aliases") == 1
        await stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="live", version="2"))
        for watcher in watchers:
            changed = await next_version(watcher)
            assert changed is not None and changed.version == "2"
        await stub.DeleteAlias(pb.DeleteAliasRequest(name=model_name, alias="live"))
        for watcher in watchers:
            assert await next_version(watcher) is None
    finally:
        for watcher in watchers:
            watcher.cancel()
    # Nobody watches any more: the key stops being polled.
    await eventually_async(
        lambda: gateway.metric("carmesh_registry_watched_aliases") == 0,
        what="no watched aliases",
        detail=lambda: f"carmesh_registry_watched_aliases is {gateway.metric('carmesh_registry_watched_aliases')}",
    )


async def test_watch_unset_alias_then_set(stub: Stub, model_name: str, tmp_path: Path) -> None:
    await import_bytes(stub, yolov8_file(tmp_path / "m.onnx").read_bytes(), model_name)
    watcher = stub.WatchAlias(pb.WatchAliasRequest(name=model_name, alias="canary"))
    try:
        assert await next_version(watcher) is None
        await stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="canary", version="1"))
        changed = await next_version(watcher)
        assert changed is not None and changed.version == "1"
    finally:
        watcher.cancel()


async def test_watch_unknown_model_is_not_found(stub: Stub, model_name: str) -> None:
    watcher = stub.WatchAlias(pb.WatchAliasRequest(name=model_name, alias="champion"))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await asyncio.wait_for(watcher.read(), timeout=60)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"registered model {model_name!r} not found" in (failed.value.details() or "")


async def expect_error(call: object, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call  # type: ignore[misc]
    assert failed.value.code() == code, failed.value.details()
    for fragment in fragments:
        assert fragment in (failed.value.details() or ""), failed.value.details()


async def test_bad_imports_are_refused_and_the_daemon_keeps_serving(
    stub: Stub, gateway: Gateway, model_name: str, tmp_path: Path
) -> None:
    v8 = yolov8_file(tmp_path / "v8.onnx", names=["car", "truck"]).read_bytes()
    yolox = yolox_file(tmp_path / "x.onnx", nc=3).read_bytes()
    bad = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (import_messages(v8, model_name, family=pb.MODEL_FAMILY_YOLOX, class_names=["car", "truck"]), bad, "YOLOX"),
        (import_messages(yolox, model_name, class_names=["a", "b", "c"]), bad, "predicts 80 classes"),
        (import_messages(v8, model_name, class_names=["car"]), bad, "lists 1 class names"),
        (import_messages(yolox, model_name, family=pb.MODEL_FAMILY_YOLOX), bad, "class names are required"),
        (import_messages(b"\x08\x07garbage" * 100, model_name), bad, "not a valid ONNX model"),
        (import_messages(v8[: len(v8) // 2], model_name), bad, "not a valid ONNX model"),
        (import_messages(v8[:-10], model_name, sha256=sha256(v8)), grpc.StatusCode.DATA_LOSS, "truncated"),
        (import_messages(v8, model_name, sha256="abc"), bad, "64 hex digits"),
        (import_messages(v8, ""), bad, "model name is empty"),
        (import_messages(v8, "bad name!"), bad, "not valid"),
        (import_messages(v8, model_name, family=pb.MODEL_FAMILY_UNSPECIFIED), bad, "cannot tell the model family"),
        (import_messages(b"", model_name), bad, "no file bytes"),
        (iter([pb.ImportModelRequest(chunk=v8)]), bad, "first ImportModel message must carry metadata"),
        (
            import_messages(b"\0" * (MAX_IMPORT_BYTES + 1), model_name, chunk_bytes=4 * 1024 * 1024),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "import limit",
        ),
    ]
    for messages, code, fragment in cases:
        await expect_error(stub.ImportModel(messages), code, fragment)
    # None of them registered anything.
    models = [m.name for m in (await stub.ListModels(pb.ListModelsRequest())).models]
    assert model_name not in models

    await import_bytes(stub, v8, model_name)
    nf = grpc.StatusCode.NOT_FOUND
    await expect_error(stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, alias="nope")), nf, "'nope'")
    await expect_error(stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, version="7")), nf, "versions: 1")
    await expect_error(
        stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name + "-x", version="1")), nf, "registered models:"
    )
    await expect_error(stub.ListModelVersions(pb.ListModelVersionsRequest(name=model_name + "-x")), nf, "not found")
    await expect_error(stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name)), bad, "exactly one")
    # version and alias are a oneof: setting one clears the other, so no request carries both.
    both = pb.GetModelVersionRequest(name=model_name, version="1")
    both.alias = "a"
    assert both.WhichOneof("selector") == "alias" and not both.version
    await expect_error(stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, version="v1")), bad, "integer")
    await expect_error(stub.GetModelVersion(pb.GetModelVersionRequest(version="1")), bad, "model name is empty")
    await expect_error(stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="", version="1")), bad, "alias is empty")
    await expect_error(stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="latest", version="1")), bad, "reserved")
    await expect_error(
        download(stub, name=model_name, version="1", chunk_size_bytes=10), bad, "chunk_size_bytes 10 is out of range"
    )
    await expect_error(download(stub, name=model_name, alias="nope"), nf, "has no alias 'nope'")

    async with insecure_channel(gateway.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len((await stub.ListModelVersions(pb.ListModelVersionsRequest(name=model_name))).versions) == 1


async def test_versions_without_carmesh_tags_are_not_served(
    stub: Stub, gateway: Gateway, model_name: str, tmp_path: Path
) -> None:
    # A version registered straight in MLflow, outside the gateway and without the tag schema.
    client = MlflowClient(tracking_uri=gateway.mlflow_uri, registry_uri=gateway.mlflow_uri)
    experiment = client.get_experiment_by_name("carmesh-imports")
    assert experiment is not None
    run = client.create_run(experiment.experiment_id)
    yolov8_file(tmp_path / "model.onnx")
    client.log_artifact(run.info.run_id, str(tmp_path / "model.onnx"), "model")
    client.create_registered_model(model_name)
    client.create_model_version(model_name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)

    got = (await stub.GetModelVersion(pb.GetModelVersionRequest(name=model_name, version="1"))).version
    assert got.family == pb.MODEL_FAMILY_UNSPECIFIED and not got.sha256
    await expect_error(
        download(stub, name=model_name, version="1"), grpc.StatusCode.FAILED_PRECONDITION, "carmesh.sha256"
    )


async def test_list_rpcs_page_through_every_item_once(stub: Stub, model_name: str, tmp_path: Path) -> None:
    for score in (0.5, 0.6, 0.7, 0.8):
        await import_bytes(stub, yolov8_file(tmp_path / f"{score}.onnx", score=score).read_bytes(), model_name)
    request = pb.ListModelVersionsRequest(name=model_name)
    versions = await assert_pages_cover(stub.ListModelVersions, request, "versions", lambda v: v.version, at_least=4)
    assert [v.version for v in versions] == ["4", "3", "2", "1"]  # newest first
    models = await assert_pages_cover(stub.ListModels, pb.ListModelsRequest(), "models", lambda m: m.name)
    assert model_name in [m.name for m in models]
    other = pb.ListModelVersionsRequest(name=model_name + "-other")
    await assert_bad_pages_refused(stub.ListModelVersions, request, other)
    await assert_bad_pages_refused(stub.ListModels, pb.ListModelsRequest())
