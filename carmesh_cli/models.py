"""``carmesh models ...``: import, list and promote registered detectors through RegistryService."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from carmesh_cli import gate
from carmesh_cli.connection import EXIT_OK, EXIT_USAGE, CliError, Connection, rpc_failure
from carmesh_cli.output import table as _table
from carmesh_cli.output import when as _when
from carmesh_cli.paging import EVERY_PAGE, Paging, fetch
from carmesh_cli.progress import ProgressBar, human_bytes
from kit.hashing import sha256_file

# "auto": the registry tells the family from the model's tensor layout.
FAMILIES = {
    "auto": registry_pb2.MODEL_FAMILY_UNSPECIFIED,
    "yolov8": registry_pb2.MODEL_FAMILY_YOLOV8,
    "yolox": registry_pb2.MODEL_FAMILY_YOLOX,
}
CHUNK_BYTES = 1024 * 1024


def _family_name(family: int) -> str:
    return next((name for name, value in FAMILIES.items() if value == family and name != "auto"), "-")


def _stub(conn: Connection) -> registry_pb2_grpc.RegistryServiceStub:
    conn.ensure_reachable()
    return registry_pb2_grpc.RegistryServiceStub(conn.channel)


def import_requests(
    path: Path, metadata: registry_pb2.ImportModelMetadata, progress: ProgressBar, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[registry_pb2.ImportModelRequest]:
    """The metadata first, then the file in chunks (read as sent, so memory stays flat)."""
    yield registry_pb2.ImportModelRequest(metadata=metadata)
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            yield registry_pb2.ImportModelRequest(chunk=chunk)
            progress.advance(len(chunk))


def run_import(
    conn: Connection,
    path: Path,
    *,
    name: str,
    family: str,
    class_names: Sequence[str],
    alias: str,
    description: str,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    if not path.is_file():
        raise CliError(f"no such model file: {path}", EXIT_USAGE)
    try:
        size = path.stat().st_size
        digest = sha256_file(path)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
    metadata = registry_pb2.ImportModelMetadata(
        name=name,
        family=FAMILIES[family],
        class_names=list(class_names),
        description=description,
        alias=alias,
        sha256=digest,
        file_name=path.name,
    )
    stub = _stub(conn)
    progress = ProgressBar(f"uploading {path.name}", size, stderr)
    try:
        reply = stub.ImportModel(import_requests(path, metadata, progress), timeout=timeout_s, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error, f"importing {path}") from None
    progress.finish()
    version = reply.version
    print(
        f"imported {version.name} version {version.version} ({_family_name(version.family)}, "
        f"{len(version.class_names)} classes, {human_bytes(version.size_bytes)}, sha256 {version.sha256[:12]})",
        file=stdout,
    )
    if alias:
        print(f"{version.name}: {alias} -> version {version.version}", file=stdout)
    return EXIT_OK


def run_list(
    conn: Connection,
    *,
    as_json: bool,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    page: Paging = EVERY_PAGE,
    stderr: TextIO = sys.stderr,
) -> int:
    stub = _stub(conn)
    try:
        models = fetch(
            lambda r: stub.ListModels(r, timeout=timeout_s, metadata=conn.metadata),
            registry_pb2.ListModelsRequest(),
            lambda reply: reply.models,
            page,
            stderr,
        )
    except grpc.RpcError as error:
        raise rpc_failure(error) from None
    if as_json:
        for model in models:
            print(json.dumps(json_format.MessageToDict(model, preserving_proto_field_name=True)), file=stdout)
        return EXIT_OK
    rows = [
        [
            model.name,
            model.latest_version or "-",
            ", ".join(f"{alias}={version}" for alias, version in sorted(model.aliases.items())) or "-",
            _when(model.updated_at),
        ]
        for model in models
    ]
    print(_table(["NAME", "LATEST", "ALIASES", "UPDATED"], rows) if rows else "no registered models", file=stdout)
    return EXIT_OK


def run_versions(
    conn: Connection,
    name: str,
    *,
    as_json: bool,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    page: Paging = EVERY_PAGE,
    stderr: TextIO = sys.stderr,
) -> int:
    stub = _stub(conn)
    try:
        versions = fetch(
            lambda r: stub.ListModelVersions(r, timeout=timeout_s, metadata=conn.metadata),
            registry_pb2.ListModelVersionsRequest(name=name),
            lambda reply: reply.versions,
            page,
            stderr,
        )
    except grpc.RpcError as error:
        raise rpc_failure(error) from None
    if as_json:
        for version in versions:
            print(json.dumps(json_format.MessageToDict(version, preserving_proto_field_name=True)), file=stdout)
        return EXIT_OK
    rows = [
        [
            v.version,
            ",".join(v.aliases) or "-",
            _family_name(v.family),
            str(len(v.class_names)),
            f"{v.input_width}x{v.input_height}" if v.input_width else "-",
            human_bytes(v.size_bytes),
            v.sha256[:12] or "-",
            _when(v.created_at),
            " ".join(f"{k}={val:.3f}" for k, val in sorted(v.metrics.items())) or "-",
        ]
        for v in versions
    ]
    headers = ["VERSION", "ALIASES", "FAMILY", "CLASSES", "INPUT", "SIZE", "SHA256", "CREATED", "METRICS"]
    print(_table(headers, rows) if rows else f"{name} has no versions", file=stdout)
    return EXIT_OK


def run_promote(
    conn: Connection,
    name: str,
    version: str,
    *,
    alias: str,
    timeout_s: float,
    force: bool = False,
    dataset: str = "",
    stdout: TextIO = sys.stdout,
) -> int:
    stub = _stub(conn)
    if alias == gate.GATED_ALIAS and not force:
        gate.check(conn, name, version, dataset=dataset, timeout_s=timeout_s, stdout=stdout)
    request = registry_pb2.SetAliasRequest(name=name, alias=alias, version=version)
    try:
        reply = stub.SetAlias(request, timeout=timeout_s, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error) from None
    was = f"was version {reply.previous_version}" if reply.previous_version else "was unset"
    print(f"{name}: {alias} -> version {reply.version.version or version} ({was})", file=stdout)
    return EXIT_OK


def run_rollback(conn: Connection, name: str, *, alias: str, timeout_s: float, stdout: TextIO = sys.stdout) -> int:
    request = registry_pb2.RollbackAliasRequest(name=name, alias=alias)
    try:
        reply = _stub(conn).RollbackAlias(request, timeout=timeout_s, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error) from None
    print(
        f"{name}: {alias} rolled back from version {reply.previous_version or '-'} to version {reply.version.version}",
        file=stdout,
    )
    return EXIT_OK
