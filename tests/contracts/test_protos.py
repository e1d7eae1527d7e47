"""The committed generated code matches protos/, and the contracts pass buf lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT

PROTOS = sorted((REPO_ROOT / "protos" / "carmesh" / "v1").glob("*.proto"))


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO_ROOT / "protos"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, PROTOS),
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    stale = [
        str(rel)
        for rel in generated
        if not (REPO_ROOT / rel).exists() or (REPO_ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, f"generated code is stale, run `make protos`: {stale}"


def test_buf_lint_clean() -> None:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert buf, "buf not installed (buf-bin is in the dev extra)"
    done = subprocess.run([buf, "lint"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_design_service_has_a_contract() -> None:
    from carmesh.v1 import detector_pb2, feature_pb2, ingest_pb2, registry_pb2, training_pb2

    services = {
        name
        for mod in (detector_pb2, feature_pb2, ingest_pb2, registry_pb2, training_pb2)
        for name in mod.DESCRIPTOR.services_by_name
    }
    assert services == {"DetectorService", "FeatureService", "IngestService", "RegistryService", "TrainingService"}
