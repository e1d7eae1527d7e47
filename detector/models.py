"""The served model and its hot swap: load and warm up off the hot path, swap atomically,
let the old model drain its admitted requests, then close it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from detector.batcher import Batcher, BatchingOptions
from detector.engine import Engine, EngineOptions, ModelSpec, load_engine
from detector.errors import ModelLoadError
from detector.metrics import DetectorMetrics

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    engine: Engine
    batcher: Batcher
    loaded_at: datetime
    path: Path

    @property
    def spec(self) -> ModelSpec:
        return self.engine.spec


class ModelManager:
    """Holds the model requests go to. Each loaded model owns its batcher, so a swap is one
    assignment: new requests see the new model, admitted ones finish on the old one."""

    def __init__(
        self,
        *,
        engine_options: EngineOptions,
        batching: BatchingOptions,
        inference_executor: Executor,
        metrics: DetectorMetrics,
        drain_timeout_s: float,
        on_loaded: Callable[[LoadedModel], Awaitable[None]] | None = None,
    ) -> None:
        self._engine_options = engine_options
        self._batching = batching
        self._executor = inference_executor
        self._metrics = metrics
        self._drain_timeout_s = drain_timeout_s
        self._on_loaded = on_loaded
        self._current: LoadedModel | None = None
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def batching(self) -> BatchingOptions:
        return self._batching

    async def activate(self, path: Path, spec: ModelSpec) -> LoadedModel:
        """Loads ``path`` in a thread, warms it up and makes it current; raises :class:`ModelLoadError`."""
        async with self._lock:
            started = time.perf_counter()
            try:
                engine = await asyncio.to_thread(load_engine, path, spec, self._engine_options)
            except ModelLoadError:
                self._metrics.reloads.labels("failed").inc()
                raise
            batcher = Batcher(engine, self._batching, self._executor, self._metrics, str(spec.ref))
            batcher.start()
            new = LoadedModel(engine=engine, batcher=batcher, loaded_at=datetime.now(UTC), path=path)
            old, self._current = self._current, new
            self._metrics.reloads.labels("ok").inc()
            self._metrics.model_loaded.set(1)
            log.info(
                "serving %s (%s, %d classes, input %dx%d, batch %s, providers %s), loaded in %.2fs%s",
                spec.ref,
                spec.family,
                len(engine.class_names),
                engine.input_hw[1],
                engine.input_hw[0],
                engine.static_batch or "dynamic",
                ",".join(engine.providers),
                time.perf_counter() - started,
                f"; draining {old.spec.ref}" if old else "",
                extra={"model_name": spec.ref.name, "model_version": spec.ref.version, "sha256": spec.sha256},
            )
            if old is not None:
                task = asyncio.create_task(self._retire(old), name=f"drain {old.spec.ref}")
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
        if self._on_loaded is not None:
            await self._on_loaded(new)
        return new

    async def _retire(self, old: LoadedModel) -> None:
        pending = old.batcher.pending
        await old.batcher.close(self._drain_timeout_s)
        await asyncio.to_thread(old.engine.close)
        log.info("closed %s after draining %d requests", old.spec.ref, pending)

    async def close(self) -> None:
        """Lets every model finish its admitted requests, then closes them."""
        async with self._lock:
            current, self._current = self._current, None
        self._metrics.model_loaded.set(0)
        if current is not None:
            await current.batcher.close(self._drain_timeout_s)
            await asyncio.to_thread(current.engine.close)
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
