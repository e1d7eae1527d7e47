"""``carmesh models download`` and ``carmesh models export-triton`` through the real gateway in front of the
real registry_gateway (on the session's MLflow server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import text_format

from carmesh_cli.model_files import model_ref
from kit.hashing import sha256_file
from tests.cli.support import carmesh, constant_model
from tests.gateway.support import DETECT_KEY, READER_KEY, WRITER_KEY, run_gateway
from tests.helpers import DaemonProcess

pytest.importorskip("registry_gateway.app", reason="the registry_gateway daemon is not in this tree")


@pytest.fixture(scope="module")
def registry(keys_file: Path, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The gateway's address and the registry's cache directory (the tests damage a cached file)."""
    cache = tmp_path_factory.mktemp("registry-cache")
    args = ["--mlflow-tracking-uri", mlflow_uri, "--cache-dir", str(cache), "--metrics-port", "0"]
    with (
        DaemonProcess("registry_gateway", args, timeout_s=90) as daemon,
        run_gateway(keys_file, daemon.address) as gateway,
    ):
        yield gateway.address, cache


@pytest.fixture(scope="module")
def two_versions(registry: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """A model with version 1 (alias champion, 8 anchors) and version 2 (2 anchors): its name and both files."""
    gateway, _ = registry
    folder = tmp_path_factory.mktemp("model-files")
    name = f"files-{uuid.uuid4().hex[:8]}"
    first = constant_model(folder / "first.onnx", score=0.9, anchors=8)
    second = constant_model(folder / "second.onnx", score=0.8)
    for path, extra in ((first, ("--alias", "champion")), (second, ("--family", "yolov8"))):
        done = carmesh("models", "import", str(path), "--name", name, *extra, gateway=gateway, api_key=WRITER_KEY)
        assert done.returncode == 0, done.stderr
    return name, first, second


def test_download_by_alias_version_and_newest(registry, two_versions, tmp_path):
    gateway, _ = registry
    name, first, second = two_versions
    for ref, expected in ((f"{name}@champion", first), (f"{name}:1", first), (name, second)):
        out = tmp_path / f"{ref.replace('@', '_').replace(':', '_')}.onnx"
        done = carmesh("models", "download", ref, "-o", str(out), gateway=gateway, api_key=READER_KEY)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == expected.read_bytes()
        assert f"to {out}" in done.stdout and f"sha256 {sha256_file(expected)[:12]}" in done.stdout
        assert "100%" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{name}_champion.onnx", f"{name}_1.onnx", f"{name}.onnx"]
    ), "no partial files are left behind"


def test_export_triton_writes_a_model_repository(registry, two_versions, tmp_path):
    from tritonclient.grpc import model_config_pb2

    gateway, _ = registry
    name, first, second = two_versions
    for ref in (f"{name}@champion", f"{name}:2"):
        done = carmesh("models", "export-triton", ref, str(tmp_path), gateway=gateway, api_key=READER_KEY)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / name / "1" / "model.onnx").read_bytes() == first.read_bytes()
    assert (tmp_path / name / "2" / "model.onnx").read_bytes() == second.read_bytes()
    # Version 2 has 2 anchors, version 1 had 8: one config per model in Triton, so the user hears of it.
    assert "replaced" in done.stderr and "differed" in done.stderr

    # Triton's own schema reads it (a typo in a field name or enum fails here); dims come from the file.
    config = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("images", model_config_pb2.TYPE_FP32, [3, 64, 64])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("output0", model_config_pb2.TYPE_FP32, [6, 2])
    ]


def test_a_damaged_download_leaves_no_file(registry, two_versions, tmp_path):
    gateway, cache = registry
    name, first, _ = two_versions
    ok = carmesh(
        "models", "download", f"{name}:1", "-o", str(tmp_path / "ok.onnx"), gateway=gateway, api_key=READER_KEY
    )
    assert ok.returncode == 0, ok.stderr
    # The registry serves its verified cache from disk: flip bytes there (same size) to damage what it sends.
    cached = cache / f"{sha256_file(first)}.onnx"
    data = bytearray(cached.read_bytes())
    data[-16:] = bytes(16)
    cached.write_bytes(bytes(data))
    try:
        out = tmp_path / "damaged.onnx"
        done = carmesh("models", "download", f"{name}:1", "-o", str(out), gateway=gateway, api_key=READER_KEY)
        assert done.returncode == 1
        assert "is damaged" in done.stderr and "nothing was written" in done.stderr
        assert list(tmp_path.iterdir()) == [tmp_path / "ok.onnx"]
        repo = tmp_path / "repo"
        done = carmesh("models", "export-triton", f"{name}:1", str(repo), gateway=gateway, api_key=READER_KEY)
        # Refused either way: the config is read from the same damaged file, or the download's check fails.
        assert done.returncode == 1, done.stderr
        assert not (repo / name / "config.pbtxt").exists() and not (repo / name / "1" / "model.onnx").exists()
    finally:
        cached.unlink()  # the registry fetches and verifies it again on the next download


def test_errors_and_scopes(registry, two_versions, tmp_path):
    gateway, _ = registry
    name, _, _ = two_versions
    out = tmp_path / "x.onnx"
    missing = carmesh("models", "download", f"{name}:99", "-o", str(out), gateway=gateway, api_key=READER_KEY)
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND: ")
    no_alias = carmesh("models", "export-triton", f"{name}@nope", str(tmp_path), gateway=gateway, api_key=READER_KEY)
    assert no_alias.returncode == 1 and "NOT_FOUND" in no_alias.stderr
    denied = carmesh("models", "export-triton", f"{name}:1", str(tmp_path), gateway=gateway, api_key=DETECT_KEY)
    assert denied.returncode == 4 and denied.stderr.startswith("error: PERMISSION_DENIED: ")
    for bad in ("../x", f"{name}:0", f"{name}:v1", f"{name}@a.b", f"{name}@"):
        usage = carmesh("models", "download", bad, "-o", str(out), gateway=gateway, api_key=READER_KEY)
        assert usage.returncode == 2, bad
        assert "expected NAME, NAME@ALIAS or NAME:VERSION" in usage.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "name", "alias", "version"),
    [("car", "car", "", ""), ("car@champion", "car", "champion", ""), ("car.v2:12", "car.v2", "", "12")],
)
def test_model_ref_parses(text, name, alias, version):
    ref = model_ref(text)
    assert (ref.name, ref.alias, ref.version) == (name, alias, version) and str(ref) == text
