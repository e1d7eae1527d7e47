"""Inference on a Triton server over gRPC (tritonclient): the detector keeps decoding, letterboxing
and post-processing; only the batched tensor goes to Triton and the raw output comes back.

Two ways to get the model version there (``model_control``):
- ``explicit``: the detector loads each version it serves into Triton through the model-control
  API (``load_model`` with the ONNX file and a JSON config for the onnxruntime backend), so the
  alias moving in the registry moves Triton too. The server must run with
  ``--model-control-mode=explicit`` and have the onnxruntime backend.
- ``none``: something else puts versions into Triton (a polled model repository written by
  ``carmesh models export-triton``, a pytriton process); the detector waits until Triton reports
  the registry's version ready and asks for that version by number.

With ``shared_memory`` the tensors travel through POSIX shared memory regions registered with
the server (only when both run on one host and share /dev/shm), not in the gRPC messages.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from detector.engine import BackendFactory, InferenceBackend, ModelIO, ModelSpec
from detector.errors import ModelLoadError

log = logging.getLogger(__name__)

ModelControl = Literal["explicit", "none"]
_DATATYPES: dict[type, tuple[str, str]] = {np.float32: ("FP32", "TYPE_FP32"), np.float16: ("FP16", "TYPE_FP16")}
# Distinguishes this process's regions from other clients' on the same server.
_REGION_IDS = itertools.count()


@dataclass(frozen=True)
class TritonOptions:
    url: str
    # Triton's name for the model (may name {name} and {version}); empty: the registry model's name.
    model: str = ""
    model_control: ModelControl = "explicit"
    shared_memory: bool = False
    max_batch_size: int = 8
    timeout_s: float = 30.0
    # How long `none` mode waits for Triton to report the version ready.
    ready_timeout_s: float = 120.0


def triton_version(spec: ModelSpec) -> str:
    """Triton versions are positive integers: the registry's version when it is one (MLflow's are), else 1."""
    return spec.ref.version if spec.ref.version.isdigit() and int(spec.ref.version) > 0 else "1"


def triton_model(template: str, spec: ModelSpec) -> tuple[str, str]:
    """Triton's model name and version for a registry version. ``template`` may name ``{name}`` and
    ``{version}``; with ``{version}`` in it each version is a model of its own (for servers that hold
    one version per name, as pytriton does), asked for without a version number."""
    version = triton_version(spec)
    if not template:
        return spec.ref.name, version
    name = template.replace("{name}", spec.ref.name).replace("{version}", version)
    return name, "" if "{version}" in template else version


def model_config(name: str, io: ModelIO, max_batch_size: int) -> dict[str, Any]:
    """The model config Triton's model-control API takes (JSON, the same fields as the
    registry's config.pbtxt in registry_gateway/triton.py): dynamic batching when the file's
    batch dimension is dynamic, else max_batch_size 0 and the full dims."""
    batched = io.input_shape[0] is None
    in_dims = io.input_shape[1:] if batched else io.input_shape
    out_dims = io.output_shape[1:] if batched else io.output_shape
    _, config_type = _DATATYPES[io.input_dtype]
    config: dict[str, Any] = {
        "name": name,
        "backend": "onnxruntime",
        "max_batch_size": max_batch_size if batched else 0,
        "input": [{"name": io.input_name, "data_type": config_type, "dims": [d or -1 for d in in_dims]}],
        "output": [{"name": io.output_name, "data_type": "TYPE_FP32", "dims": [d or -1 for d in out_dims]}],
    }
    if batched:
        config["dynamic_batching"] = {}
    return config


@dataclass
class _Region:
    name: str
    key: str
    byte_size: int
    handle: Any


class TritonBackend(InferenceBackend):
    """One model version on one Triton server; thread-safe (gRPC stubs are, and each running
    batch holds its own shared memory regions)."""

    def __init__(self, options: TritonOptions, model: str, version: str, io: ModelIO, client: Any) -> None:
        self._options = options
        self._model = model
        # Explicit mode owns the Triton model, one version at a time: ask for whatever is loaded, so batches
        # still queued on the replaced version finish on the new one rather than fail.
        self._request_version = "" if options.model_control == "explicit" else version
        self._version = version
        self._io = io
        self._client = client
        self._datatype, _ = _DATATYPES[io.input_dtype]
        self._regions: queue.SimpleQueue[tuple[_Region, _Region | None]] = queue.SimpleQueue()
        self._all_regions: list[_Region] = []
        self._closed = False
        self._any_batch = False

    @classmethod
    def open(cls, options: TritonOptions, path: Path, spec: ModelSpec, io: ModelIO) -> TritonBackend:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        if io.input_dtype not in _DATATYPES:
            raise ModelLoadError(f"{path}: input type {io.input_dtype} cannot go to Triton (FP32 or FP16 only)")
        model, version = triton_model(options.model, spec)
        where = f"Triton at {options.url}, model {model!r}" + (f" version {version}" if version else "")
        try:
            client = grpcclient.InferenceServerClient(options.url)
        except InferenceServerException as exc:
            raise ModelLoadError(f"{where}: cannot connect: {exc.message()}") from exc
        backend = cls(options, model, version, io, client)
        try:
            backend._bring_up(path, where)
        except BaseException:
            backend.close()
            raise
        return backend

    def _bring_up(self, path: Path, where: str) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            if not self._client.is_server_live(client_timeout=self._options.timeout_s):
                raise ModelLoadError(f"{where}: the server is not live")
            if self._options.model_control == "explicit":
                config = model_config(self._model, self._io, self._options.max_batch_size)
                self._client.load_model(
                    self._model,
                    config=json.dumps(config),
                    files={f"file:{self._version or 1}/model.onnx": path.read_bytes()},
                    client_timeout=self._options.ready_timeout_s,
                )
                log.info("loaded %s into %s", path.name, where)
            self._wait_ready(where)
            self._check_metadata(where)
        except InferenceServerException as exc:
            raise ModelLoadError(f"{where}: {exc.message()}") from exc

    def _wait_ready(self, where: str) -> None:
        deadline = time.monotonic() + self._options.ready_timeout_s
        logged = False
        while not self._client.is_model_ready(self._model, self._version, client_timeout=self._options.timeout_s):
            if self._options.model_control == "explicit" or time.monotonic() > deadline:
                waited = "" if self._options.model_control == "explicit" else f" after {self._options.ready_timeout_s}s"
                raise ModelLoadError(f"{where}: not ready{waited} (is that version in Triton's model repository?)")
            if not logged:
                log.info("waiting for %s to be ready", where)
                logged = True
            time.sleep(0.5)  # polling Triton's readiness; it has no watch API

    def _check_metadata(self, where: str) -> None:
        meta = self._client.get_model_metadata(self._model, self._version, as_json=True)
        inputs = {t["name"]: t["datatype"] for t in meta.get("inputs", [])}
        shapes = {t["name"]: list(t.get("shape", [])) for t in meta.get("inputs", [])}
        # Triton reports a batching model's batch dimension as -1.
        self._any_batch = shapes.get(self._io.input_name, [""])[:1] == ["-1"]
        outputs = {t["name"] for t in meta.get("outputs", [])}
        if inputs.get(self._io.input_name) != self._datatype or self._io.output_name not in outputs:
            raise ModelLoadError(
                f"{where}: serves inputs {inputs} and outputs {sorted(outputs)}, but the model file has input "
                f"{self._io.input_name!r} ({self._datatype}) and output {self._io.output_name!r}"
            )

    def takes_any_batch(self) -> bool:
        return self._any_batch

    def describe(self) -> list[str]:
        shm = ", system shared memory" if self._options.shared_memory else ""
        version = f" v{self._version}" if self._version else ""
        return [f"triton {self._options.url} {self._model}{version}{shm}"]

    def _new_regions(self, batch_shape: tuple[int, ...]) -> tuple[_Region, _Region | None]:
        import tritonclient.utils.shared_memory as shm

        per_image_in = int(np.prod(batch_shape[1:])) * np.dtype(self._io.input_dtype).itemsize
        rows = max(self._options.max_batch_size, batch_shape[0])
        out_dims = self._io.output_shape[1:]
        sizes = [per_image_in * rows]
        # The output goes through shared memory only when its size is known before the run.
        if all(d is not None for d in out_dims):
            sizes.append(int(np.prod([d for d in out_dims if d is not None])) * 4 * rows)
        regions = []
        for size in sizes:
            name = f"carmesh-{os.getpid()}-{next(_REGION_IDS)}"
            region = _Region(name, "/" + name, size, shm.create_shared_memory_region(name, "/" + name, size))
            self._all_regions.append(region)
            self._client.register_system_shared_memory(name, region.key, size)
            regions.append(region)
        return regions[0], regions[1] if len(regions) > 1 else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        batch = np.ascontiguousarray(batch, dtype=self._io.input_dtype)
        infer_input = grpcclient.InferInput(self._io.input_name, list(batch.shape), self._datatype)
        output = grpcclient.InferRequestedOutput(self._io.output_name)
        if not self._options.shared_memory:
            infer_input.set_data_from_numpy(batch)
            result = self._infer(infer_input, output)
            return np.asarray(result.as_numpy(self._io.output_name), dtype=np.float32)
        regions = self._take_regions(batch)
        try:
            return self._run_shared(batch, infer_input, output, regions)
        finally:
            self._regions.put(regions)

    def _take_regions(self, batch: np.ndarray) -> tuple[_Region, _Region | None]:
        try:
            regions = self._regions.get_nowait()
        except queue.Empty:
            return self._new_regions(batch.shape)
        if regions[0].byte_size < batch.nbytes:  # a bigger batch than the regions were made for
            self._regions.put(regions)
            return self._new_regions(batch.shape)
        return regions

    def _run_shared(
        self, batch: np.ndarray, infer_input: Any, output: Any, regions: tuple[_Region, _Region | None]
    ) -> np.ndarray:
        import tritonclient.utils.shared_memory as shm

        in_region, out_region = regions
        shm.set_shared_memory_region(in_region.handle, [batch])
        infer_input.set_shared_memory(in_region.name, batch.nbytes)
        out_bytes = 0
        if out_region is not None:
            out_shape = (len(batch), *(d for d in self._io.output_shape[1:] if d is not None))
            out_bytes = int(np.prod(out_shape)) * 4
            output.set_shared_memory(out_region.name, out_bytes)
        result = self._infer(infer_input, output)
        if out_region is None:
            return np.asarray(result.as_numpy(self._io.output_name), dtype=np.float32)
        shape = tuple(result.get_output(self._io.output_name).shape)
        if int(np.prod(shape)) * 4 != out_bytes:
            raise RuntimeError(f"Triton returned output shape {list(shape)}, expected {list(out_shape)}")
        # A copy: the region is reused by the next batch.
        return np.array(shm.get_contents_as_numpy(out_region.handle, np.float32, shape))

    def _infer(self, infer_input: Any, output: Any) -> Any:
        return self._client.infer(
            self._model,
            [infer_input],
            model_version=self._request_version,
            outputs=[output],
            client_timeout=self._options.timeout_s,
        )

    def close(self) -> None:
        """Unregisters and frees the shared memory; leaves the model loaded (the next version replaced it,
        or other replicas use it)."""
        if self._closed:
            return
        self._closed = True
        import tritonclient.utils.shared_memory as shm

        for region in self._all_regions:
            try:
                self._client.unregister_system_shared_memory(region.name)
            except Exception as exc:  # the server may be gone; the local region is freed regardless
                log.warning("could not unregister shared memory %s from Triton: %s", region.name, exc)
            shm.destroy_shared_memory_region(region.handle)
        self._all_regions.clear()
        self._client.close()


def backend_factory(options: TritonOptions) -> BackendFactory:
    """An :data:`detector.engine.BackendFactory` opening each model version on Triton."""

    def open_backend(path: Path, spec: ModelSpec, io: ModelIO) -> InferenceBackend:
        return TritonBackend.open(options, path, spec, io)

    return open_backend
