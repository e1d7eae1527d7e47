"""The served model: fetched once from the registry by alias (the detector's own download and cache
code) or read from a local file, and opened by the detector's engine."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from bento_detector.settings import BentoSettings
from carmesh.v1 import registry_pb2, registry_pb2_grpc
from detector.engine import Engine, EngineOptions, ModelRef, ModelSpec, choose_providers, load_engine
from detector.registry_source import ModelCache, spec_of
from kit.hashing import sha256_file
from kit.mesh_tls import load_mesh_tls, mesh_channel
from kit.server import channel_options

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """The registry cannot give the model (unknown alias, registry down, bad download)."""


async def _fetch(cfg: BentoSettings) -> tuple[Path, ModelSpec]:
    cache = ModelCache(cfg.model_cache_dir.expanduser())
    target = f"{cfg.model_name}@{cfg.model_alias} from the registry at {cfg.registry_addr}"
    # Over mutual TLS with a detector's certificate (the registry lets detectors read), or plaintext
    # under CARMESH_BENTO_MESH_PLAINTEXT.
    tls = load_mesh_tls(cfg)
    async with mesh_channel(cfg.registry_addr, tls, channel_options(cfg.max_message_bytes)) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        try:
            reply = await stub.GetModelVersion(
                registry_pb2.GetModelVersionRequest(name=cfg.model_name, alias=cfg.model_alias),
                timeout=cfg.registry_timeout_s,
            )
            version = reply.version
            path = await asyncio.to_thread(cache.lookup, version.sha256)
            if path is None:
                request = registry_pb2.DownloadModelRequest(name=cfg.model_name, version=version.version)
                call = stub.DownloadModel(request, timeout=cfg.registry_timeout_s)
                try:
                    downloaded, path = await cache.store(call, version.version)
                finally:
                    call.cancel()
                if not downloaded.class_names:
                    downloaded.class_names.extend(version.class_names)
                if not downloaded.family:
                    downloaded.family = version.family
                version = downloaded
        except grpc.aio.AioRpcError as exc:
            raise ModelUnavailable(f"cannot fetch {target}: {exc.code().name}: {exc.details()}") from exc
    log.info("fetched %s: version %s (sha256 %s)", target, version.version, version.sha256[:12])
    return path, spec_of(version, cfg.model_alias, (cfg.input_height, cfg.input_width))


def _local(cfg: BentoSettings) -> tuple[Path, ModelSpec]:
    path = cfg.model_path
    assert path is not None
    if not path.is_file():
        raise ModelUnavailable(f"{str(path)!r} is not a file")
    sha256 = sha256_file(path)
    return path, ModelSpec(
        ref=ModelRef(name=path.stem, version=sha256[:12]),
        family=cfg.model_family,
        class_names=tuple(cfg.class_names),
        input_hw=(cfg.input_height, cfg.input_width),
        sha256=sha256,
    )


def open_engine(cfg: BentoSettings, max_batch_size: int) -> Engine:
    """Blocking; raises ModelUnavailable or detector.errors.ModelLoadError."""
    if cfg.model_path is not None:
        path, spec = _local(cfg)
    else:
        # Its own thread and event loop: BentoML may build the service inside its running loop.
        with ThreadPoolExecutor(1, thread_name_prefix="bento-fetch") as pool:
            path, spec = pool.submit(asyncio.run, _fetch(cfg)).result()
    options = EngineOptions(
        providers=choose_providers([]),
        intra_op_threads=cfg.intra_op_threads or (os.cpu_count() or 1),
        warmup_batch_size=max_batch_size,
    )
    return load_engine(path, spec, options)
