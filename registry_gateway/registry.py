"""The registry operations behind RegistryService: argument checks, imports, alias changes
(serialised per alias) and downloads through the cache."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kit.names import ALIAS, validate_name
from kit.registry_tags import (
    MANIFEST_FILE,
    ONNX_FILE,
    RUN_KIND_IMPORT,
    RUN_TAG_KIND,
    RUN_TAG_MODEL_NAME,
    TAG_FILE_NAME,
    TAG_PREFIX,
    TAG_SHA256,
    TRITON_CONFIG_FILE,
    VersionTags,
)
from registry_gateway.cache import ArtifactCache
from registry_gateway.errors import DataLoss, InvalidArgument, ResourceExhausted
from registry_gateway.mlflow_store import MlflowStore, NewVersion
from registry_gateway.onnx_check import DetectorSpec, check_class_names, inspect_detector
from registry_gateway.schema import Family, ModelVersionInfo, RegisteredModelInfo
from registry_gateway.triton import triton_config

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")
_VERSION_ALIAS_RE = re.compile(r"^[vV][0-9]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_./ -]{1,250}$")


@dataclass(frozen=True)
class ImportRequest:
    name: str
    family: Family | None
    class_names: tuple[str, ...] = ()
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    alias: str = ""
    sha256: str = ""
    file_name: str = ""


def check_name(name: str) -> str:
    """The kit's name syntax (kit/names.py), as for every camera, data set and snapshot name."""
    if not name:
        raise InvalidArgument("model name is empty", field="name")
    return validate_name("model name", name, "name")


def check_alias(alias: str) -> str:
    """The kit's alias syntax (MLflow's, no '.'), checked before anything is written (an import
    sets its alias last), and MLflow's reserved aliases."""
    if not alias:
        raise InvalidArgument("alias is empty", field="alias")
    validate_name(ALIAS, alias, "alias")
    if alias.lower() == "latest" or _VERSION_ALIAS_RE.match(alias):
        raise InvalidArgument(f"alias {alias!r} is reserved by MLflow ('latest' and 'v<number>' name versions)")
    return alias


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise InvalidArgument(f"version {version!r} is not valid: versions are positive integers, e.g. '3'")
    return version


def _one_of(version: str, alias: str) -> tuple[str, str]:
    if bool(version) == bool(alias):
        raise InvalidArgument("give exactly one of version and alias")
    return (check_version(version), "") if version else ("", check_alias(alias))


class Registry:
    def __init__(
        self,
        store: MlflowStore,
        cache: ArtifactCache,
        *,
        max_import_bytes: int,
        triton_max_batch_size: int,
    ) -> None:
        self._store = store
        self._cache = cache
        self._max_import_bytes = max_import_bytes
        self._triton_max_batch_size = triton_max_batch_size
        # Alias changes read, then write the alias and its history: one at a time per alias.
        # Each entry counts its users, so aliases nobody is changing hold no lock.
        self._alias_locks: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def _alias_lock(self, name: str, alias: str) -> AsyncIterator[None]:
        key = (name, alias)
        lock, users = self._alias_locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._alias_locks[key]

    # -- reads --------------------------------------------------------------------------------

    async def list_models(self) -> list[RegisteredModelInfo]:
        return await self._store.list_models()

    async def list_versions(self, name: str) -> list[ModelVersionInfo]:
        return await self._store.list_versions(check_name(name))

    async def get_version(self, name: str, version: str = "", alias: str = "") -> ModelVersionInfo:
        check_name(name)
        version, alias = _one_of(version, alias)
        if version:
            return await self._store.get_version(name, version)
        return await self._store.get_by_alias(name, alias)

    async def open_download(self, name: str, version: str = "", alias: str = "") -> tuple[ModelVersionInfo, Path]:
        """The version and the local path of its verified ONNX file."""
        info = await self.get_version(name, version, alias)
        return info, await self._cache.fetch(info)

    async def triton_config(self, name: str, version: str = "", alias: str = "") -> tuple[ModelVersionInfo, str]:
        """The version and its Triton ``config.pbtxt``, made as at import (one definition: triton.py)
        from its verified ONNX file, so versions the trainer registered get the same text."""
        info, path = await self.open_download(name, version, alias)
        spec = await asyncio.to_thread(inspect_detector, path, info.family, info.class_names)
        return info, triton_config(info.name, spec, self._triton_max_batch_size)

    def check_watch(self, name: str, alias: str) -> None:
        check_name(name)
        check_alias(alias)

    # -- aliases ------------------------------------------------------------------------------

    async def set_alias(self, name: str, alias: str, version: str) -> tuple[ModelVersionInfo, str]:
        check_name(name)
        check_alias(alias)
        check_version(version)
        async with self._alias_lock(name, alias):
            info, previous = await self._store.set_alias(name, alias, version)
        log.info("alias %s@%s -> %s (was %s)", name, alias, info.version, previous or "unset")
        return info, previous

    async def delete_alias(self, name: str, alias: str) -> None:
        check_name(name)
        check_alias(alias)
        async with self._alias_lock(name, alias):
            await self._store.delete_alias(name, alias)
        log.info("alias %s@%s deleted", name, alias)

    async def rollback_alias(self, name: str, alias: str) -> tuple[ModelVersionInfo, str]:
        check_name(name)
        check_alias(alias)
        async with self._alias_lock(name, alias):
            info, previous = await self._store.rollback_alias(name, alias)
        log.info("alias %s@%s rolled back %s -> %s", name, alias, previous, info.version)
        return info, previous

    # -- import -------------------------------------------------------------------------------

    def check_import(self, request: ImportRequest) -> ImportRequest:
        """Checks the metadata before any bytes are accepted."""
        check_name(request.name)
        if request.alias:
            check_alias(request.alias)
        if request.class_names:
            check_class_names(request.class_names)
        if request.sha256 and not _SHA256_RE.match(request.sha256.lower()):
            raise InvalidArgument(f"sha256 {request.sha256!r} is not 64 hex digits")
        for key in request.tags:
            if not _TAG_KEY_RE.match(key) or key.startswith(TAG_PREFIX):
                raise InvalidArgument(f"tag key {key!r} is not allowed (carmesh.* keys are set by the registry)")
        return request

    async def import_model(self, request: ImportRequest, chunks: AsyncIterator[bytes]) -> ModelVersionInfo:
        self.check_import(request)
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="import-", dir=self._cache.tmp))
        try:
            onnx_path = work / ONNX_FILE
            sha256, size = await self._receive(chunks, onnx_path)
            if request.sha256 and request.sha256.lower() != sha256:
                raise DataLoss(
                    f"received {size} bytes with sha256 {sha256}, but the metadata says {request.sha256.lower()}: "
                    "the upload was truncated or altered; send the file again",
                    reason="CHECKSUM_MISMATCH",
                )
            spec = await asyncio.to_thread(inspect_detector, onnx_path, request.family, request.class_names)
            await asyncio.to_thread(self._write_companions, work, request, spec, sha256, size)
            info = await self._store.register_files(self._new_version(request, spec, work, sha256, size))
            log.info("imported %s version %s (%s, %d bytes)", info.name, info.version, spec.family.value, size)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        if request.alias:
            info, _ = await self.set_alias(info.name, request.alias, info.version)
        return info

    async def _receive(self, chunks: AsyncIterator[bytes], path: Path) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        out: IO[bytes] = await asyncio.to_thread(path.open, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self._max_import_bytes:
                    raise ResourceExhausted(
                        f"the upload exceeds the import limit of {self._max_import_bytes} bytes (max_import_bytes)",
                        reason="MODEL_TOO_LARGE",
                        metadata={"max_import_bytes": self._max_import_bytes},
                    )
                digest.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        finally:
            await asyncio.to_thread(out.close)
        if size == 0:
            raise InvalidArgument("no file bytes received: send the ONNX file as chunk messages after the metadata")
        return digest.hexdigest(), size

    def _write_companions(self, work: Path, request: ImportRequest, spec: DetectorSpec, sha256: str, size: int) -> None:
        (work / TRITON_CONFIG_FILE).write_text(triton_config(request.name, spec, self._triton_max_batch_size))
        manifest = {
            "family": spec.family.value,
            "class_names": list(spec.class_names),
            "input_width": spec.input_width,
            "input_height": spec.input_height,
            "sha256": sha256,
            "size_bytes": size,
            "onnx_path": ONNX_FILE,
            "inputs": [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in spec.inputs],
            "outputs": [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in spec.outputs],
            "file_name": request.file_name,
        }
        (work / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    def _new_version(
        self, request: ImportRequest, spec: DetectorSpec, work: Path, sha256: str, size: int
    ) -> NewVersion:
        tags = dict(request.tags)
        carmesh = VersionTags(spec.family.value, spec.class_names, spec.input_width, spec.input_height, sha256, size)
        tags.update(carmesh.tags())
        if request.file_name:
            tags[TAG_FILE_NAME] = request.file_name
        run_tags = {RUN_TAG_KIND: RUN_KIND_IMPORT, RUN_TAG_MODEL_NAME: request.name, TAG_SHA256: sha256}
        return NewVersion(
            name=request.name, files_dir=work, tags=tags, run_tags=run_tags, description=request.description
        )
