"""``carmesh models download`` and ``carmesh models export-triton``: a registered version's ONNX file
(DownloadModel, streamed and sha256-checked) and a Triton model repository built from it."""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

import grpc

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from carmesh_cli.connection import EXIT_OK, EXIT_RPC_FAILED, EXIT_USAGE, CliError, Connection, rpc_failure
from carmesh_cli.progress import ProgressBar, human_bytes
from kit.names import ALIAS, name_problem

# Downloads of big models need longer than the 30 s default deadline.
DOWNLOAD_TIMEOUT_S = 600.0
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Triton's file names in a model repository.
TRITON_MODEL_FILE = "model.onnx"
TRITON_CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class ModelRef:
    """``NAME`` (the newest version), ``NAME@ALIAS`` or ``NAME:VERSION``."""

    name: str
    alias: str = ""
    version: str = ""

    def __str__(self) -> str:
        return self.name + (f"@{self.alias}" if self.alias else f":{self.version}" if self.version else "")


def model_ref(text: str) -> ModelRef:
    """argparse type for ``NAME[@ALIAS|:VERSION]``."""
    name, at, alias = text.partition("@")
    if not at:
        name, _, version = text.partition(":")
    else:
        version = ""
    problem = name_problem("model name", name)
    if problem is None and at:
        problem = name_problem(ALIAS, alias)
    if problem is None and ":" in text and not _VERSION_RE.match(version):
        problem = f"version {version!r} is not valid: versions are positive integers, e.g. 3"
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem} (expected NAME, NAME@ALIAS or NAME:VERSION)")
    return ModelRef(name, alias, version)


def add_parsers(actions: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    download = actions.add_parser(
        "download",
        parents=[common],
        help="download a version's ONNX file (sha256-checked)",
        description="Streams a version's ONNX file from the registry (DownloadModel) and checks its size and "
        "sha256 before FILE appears. NAME alone means its newest version.",
    )
    download.add_argument("ref", type=model_ref, metavar="NAME[@ALIAS|:VERSION]")
    download.add_argument("-o", "--out", dest="out", type=Path, required=True, metavar="FILE", help="where to write")

    export = actions.add_parser(
        "export-triton",
        parents=[common],
        help="write a version into a Triton model repository",
        description="Writes DIR/NAME/config.pbtxt (the registry's config: onnxruntime backend, dynamic batching, "
        "dims from the file) and DIR/NAME/VERSION/model.onnx (sha256-checked), the layout `tritonserver "
        "--model-repository DIR` loads. NAME alone means its newest version.",
    )
    export.add_argument("ref", type=model_ref, metavar="NAME[@ALIAS|:VERSION]")
    export.add_argument("dir", type=Path, metavar="DIR", help="the model repository (created when missing)")


def _stub(conn: Connection) -> registry_pb2_grpc.RegistryServiceStub:
    conn.ensure_reachable()
    return registry_pb2_grpc.RegistryServiceStub(conn.channel)


def _resolve(stub: registry_pb2_grpc.RegistryServiceStub, conn: Connection, ref: ModelRef, timeout_s: float) -> str:
    """The version number ``ref`` names; NAME alone: the newest version (the first of the newest-first list)."""
    if ref.version:
        return ref.version
    try:
        if ref.alias:
            request = registry_pb2.GetModelVersionRequest(name=ref.name, alias=ref.alias)
            return str(stub.GetModelVersion(request, timeout=timeout_s, metadata=conn.metadata).version.version)
        listing = registry_pb2.ListModelVersionsRequest(name=ref.name, page_size=1)
        versions = stub.ListModelVersions(listing, timeout=timeout_s, metadata=conn.metadata).versions
    except grpc.RpcError as error:
        raise rpc_failure(error, f"resolving {ref}") from None
    if not versions:
        raise CliError(f"{ref.name} has no versions", EXIT_RPC_FAILED)
    return str(versions[0].version)


def _check_version(version: registry_pb2.ModelVersion, name: str, number: str) -> None:
    """The registry's answer is input too: it names paths on this machine and the bytes to expect."""
    if version.name != name or version.version != number:
        raise CliError(
            f"the registry answered for {version.name}:{version.version}, not {name}:{number}", EXIT_RPC_FAILED
        )
    if not _SHA256_RE.match(version.sha256) or version.size_bytes <= 0:
        raise CliError(
            f"{name}:{number} has no valid sha256 and size in the registry; it cannot be checked", EXIT_RPC_FAILED
        )


def _stream_to(
    stub: registry_pb2_grpc.RegistryServiceStub,
    conn: Connection,
    name: str,
    number: str,
    out: IO[bytes],
    timeout_s: float,
    stderr: TextIO,
) -> registry_pb2.ModelVersion:
    """Writes the file's bytes to ``out``; raises unless they are exactly the registered size and sha256."""
    request = registry_pb2.DownloadModelRequest(name=name, version=number)
    digest = hashlib.sha256()
    try:
        replies: Iterator[registry_pb2.DownloadModelResponse] = stub.DownloadModel(
            request, timeout=timeout_s, metadata=conn.metadata
        )
        first = next(replies, None)
        if first is None or first.WhichOneof("payload") != "version":
            raise CliError("the registry's download did not start with the version record", EXIT_RPC_FAILED)
        version = first.version
        _check_version(version, name, number)
        progress = ProgressBar(f"downloading {name}:{number}", version.size_bytes, stderr)
        for reply in replies:
            if reply.WhichOneof("payload") != "chunk":
                raise CliError("the registry sent a second version record mid-download", EXIT_RPC_FAILED)
            progress.advance(len(reply.chunk))
            if progress.done > version.size_bytes:
                raise CliError(
                    f"the registry sent more than the {version.size_bytes} bytes it announced", EXIT_RPC_FAILED
                )
            digest.update(reply.chunk)
            out.write(reply.chunk)
    except grpc.RpcError as error:
        raise rpc_failure(error, f"downloading {name}:{number}") from None
    if progress.done != version.size_bytes or digest.hexdigest() != version.sha256:
        raise CliError(
            f"the download of {name}:{number} is damaged: {progress.done} bytes with sha256 {digest.hexdigest()}, "
            f"expected {version.size_bytes} bytes with sha256 {version.sha256}; nothing was written",
            EXIT_RPC_FAILED,
        )
    progress.finish()
    return version


def _download(
    stub: registry_pb2_grpc.RegistryServiceStub,
    conn: Connection,
    name: str,
    number: str,
    target: Path,
    timeout_s: float,
    stderr: TextIO,
) -> registry_pb2.ModelVersion:
    """Downloads into a hidden file beside ``target`` and renames it once checked: ``target`` is complete or absent."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = partial.open("wb")
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}", EXIT_USAGE) from exc
    try:
        with handle:
            version = _stream_to(stub, conn, name, number, handle, timeout_s, stderr)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return version


def run_download(
    conn: Connection,
    ref: ModelRef,
    out: Path,
    *,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    stub = _stub(conn)
    number = _resolve(stub, conn, ref, timeout_s)
    version = _download(stub, conn, ref.name, number, out, timeout_s, stderr)
    print(
        f"downloaded {version.name} version {version.version} to {out} "
        f"({human_bytes(version.size_bytes)}, sha256 {version.sha256[:12]})",
        file=stdout,
    )
    return EXIT_OK


def run_export_triton(
    conn: Connection,
    ref: ModelRef,
    repository: Path,
    *,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    stub = _stub(conn)
    number = _resolve(stub, conn, ref, timeout_s)
    try:
        request = registry_pb2.GetTritonConfigRequest(name=ref.name, version=number)
        reply = stub.GetTritonConfig(request, timeout=timeout_s, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error, f"getting the Triton config of {ref.name}:{number}") from None
    _check_version(reply.version, ref.name, number)
    model_dir = repository / ref.name
    # The file first: a repository never holds a config whose model did not arrive.
    _download(stub, conn, ref.name, number, model_dir / number / TRITON_MODEL_FILE, timeout_s, stderr)
    config = model_dir / TRITON_CONFIG_FILE
    try:
        previous = config.read_text(encoding="utf-8") if config.is_file() else None
        partial = config.with_name(f".{config.name}.partial")
        partial.write_text(reply.config_pbtxt, encoding="utf-8")
        partial.replace(config)
    except OSError as exc:
        raise CliError(f"cannot write {config}: {exc.strerror or exc}", EXIT_USAGE) from exc
    if previous is not None and previous != reply.config_pbtxt:
        # One config serves every version in Triton: say so when this version's differs.
        print(f"note: replaced {config}, which differed (another version's config)", file=stderr)
    print(
        f"exported {ref.name} version {number} to {model_dir} ({TRITON_CONFIG_FILE}, {number}/{TRITON_MODEL_FILE})",
        file=stdout,
    )
    return EXIT_OK
