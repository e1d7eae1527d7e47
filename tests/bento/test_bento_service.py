"""The BentoML service: `bentoml build` makes a Bento of it, and that Bento, served with `bentoml serve`
on 127.0.0.1, fetches YOLOX-nano from the real registry by alias and answers HTTP uploads with the
JSON `carmesh detect --json` prints, the detections equal to the detector's on the same images;
bad uploads get 400 with the reason."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from bento_detector.local import bentoml_command, served
from carmesh.v1 import registry_pb2, registry_pb2_grpc
from carmesh_cli.detect import as_record
from tests.detector.support import COCO80, running, settings
from tests.detector.test_registry_e2e import registry_daemon
from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

IMAGES = 4


def import_requests(data: bytes, name: str) -> Iterator[registry_pb2.ImportModelRequest]:
    yield registry_pb2.ImportModelRequest(
        metadata=registry_pb2.ImportModelMetadata(
            name=name,
            family=registry_pb2.MODEL_FAMILY_YOLOX,
            class_names=COCO80,
            alias="champion",
            file_name="yolox_nano.onnx",
        )
    )
    yield registry_pb2.ImportModelRequest(chunk=data)


def build_bento(home: Path) -> str:
    done = subprocess.run(
        [bentoml_command(), "build", "-f", "bento_detector/bentofile.yaml", "."],
        cwd=REPO_ROOT,
        env={"BENTOML_HOME": str(home), "PATH": str(Path(bentoml_command()).parent) + ":/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tag = re.search(r"carmesh-detector:[a-z0-9]+", done.stdout + done.stderr)
    assert tag, done.stdout
    assert (home / "bentos" / "carmesh-detector" / tag.group(0).split(":")[1] / "bento.yaml").is_file()
    return tag.group(0)


def post(url: str, name: str, data: bytes, **fields: Any) -> requests.Response:
    return requests.post(f"{url}/detect", files={"image": (name, data)}, data=fields, timeout=60)


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "timings_ms"}


async def test_the_built_bento_serves_the_registry_model_over_http(
    mlflow_uri: str, shared_dir: Path, tmp_path: Path
) -> None:
    model = shared_dir / "models" / "yolox_nano.onnx"
    frames = sorted((shared_dir / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))[:IMAGES]
    name = f"bento-{uuid.uuid4().hex[:8]}"
    tag = await asyncio.to_thread(build_bento, tmp_path / "bentoml")

    # What the detector answers on the same images, as `carmesh detect --json` prints it.
    async with running(settings(model_path=model, model_family="yolox", class_names=list(COCO80))) as (_, stub):
        from carmesh.v1 import detector_pb2

        expected = [
            as_record(Path(p.name), await stub.Detect(detector_pb2.DetectRequest(image=p.read_bytes())), None)
            for p in frames
        ]
    assert sum(len(r["detections"]) for r in expected) >= 10

    with registry_daemon(mlflow_uri, tmp_path) as registry:
        async with grpc.aio.insecure_channel(registry.address) as channel:
            imported = await registry_pb2_grpc.RegistryServiceStub(channel).ImportModel(
                import_requests(model.read_bytes(), name)
            )
        env = {
            "BENTOML_HOME": str(tmp_path / "bentoml"),
            "CARMESH_BENTO_REGISTRY_ADDR": registry.address,
            "CARMESH_BENTO_MESH_PLAINTEXT": "true",  # the test registry serves plaintext
            "CARMESH_BENTO_MODEL_NAME": name,
            "CARMESH_BENTO_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        }
        # Served from the Bento's own copy of the code, not the checkout.
        with served(env, target=tag, cwd=tmp_path) as url:
            replies = await asyncio.gather(*(asyncio.to_thread(post, url, p.name, p.read_bytes()) for p in frames))
            bad_image = await asyncio.to_thread(post, url, "notes.jpg", b"not an image at all")
            bad_class = await asyncio.to_thread(post, url, frames[0].name, frames[0].read_bytes(), classes="car, plane")
            bad_score = await asyncio.to_thread(post, url, frames[0].name, frames[0].read_bytes(), score_threshold=2)

    version = imported.version.version
    for reply, want in zip(replies, expected, strict=True):
        assert reply.status_code == 200, reply.text
        got = reply.json()
        assert set(got) == set(want) and set(got["timings_ms"]) == set(want["timings_ms"])
        assert got["model"] == {"name": name, "version": version, "alias": "champion"}
        want = {**want, "model": got["model"]}
        assert len(got["detections"]) == len(want["detections"])
        for g, w in zip(got["detections"], want["detections"], strict=True):
            assert (g["class_id"], g["class_name"]) == (w["class_id"], w["class_name"])
            assert abs(g["score"] - w["score"]) <= 1e-3
            assert max(abs(a - b) for a, b in zip(g["box"], w["box"], strict=True)) <= 1.0
        assert without_timings({**got, "detections": []}) == without_timings({**want, "detections": []})
    assert bad_image.status_code == 400 and "image" in bad_image.text.lower(), bad_image.text
    assert bad_class.status_code == 400 and "plane" in bad_class.text, bad_class.text
    assert bad_score.status_code == 400 and "score_threshold" in bad_score.text, bad_score.text
