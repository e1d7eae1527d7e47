"""A real Triton server (pytriton's bundled tritonserver) serving ONNX files through ONNX Runtime.

pytriton 0.7.0 ships tritonserver 2.51 with the Python backend only, so each model is a
Python callable running ONNX Runtime; clients (tritonclient, the detector's Triton backend)
speak the ordinary KServe v2 gRPC protocol to it. It needs numpy<2, so it runs in its own
environment (``.venv-triton``, made by ``make setup``), never imported by the daemons:

    .venv-triton/bin/python -m devstack.pytriton_server --model car-detector=model.onnx:1 \
        --grpc-port 8001 --http-port 8000 --ready-file .run/triton.ready

The ready file gets ``{"grpc": "127.0.0.1:PORT", "http": ...}`` once every model answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("pytriton_server")

REPO = Path(__file__).resolve().parents[1]
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def launched(
    models: Mapping[str, Path],
    *,
    python: Path = TRITON_PYTHON,
    max_batch_size: int = 8,
    threads: int = 0,
    timeout_s: float = 90.0,
) -> Iterator[str]:
    """Runs this server in ``python`` (the .venv-triton interpreter) serving ``{"NAME" or
    "NAME:VERSION": onnx_file}``; yields its gRPC address once every model is ready, stops it after."""
    with tempfile.TemporaryDirectory(prefix="pytriton-") as tmp:
        ready, log_path = Path(tmp) / "ready.json", Path(tmp) / "server.log"
        args = [str(python), "-m", "devstack.pytriton_server", "--ready-file", str(ready)]
        args += ["--max-batch-size", str(max_batch_size), "--threads", str(threads)]
        args += ["--grpc-port", str(_free_port()), "--http-port", str(_free_port())]
        args += ["--metrics-port", str(_free_port())]
        for name, path in models.items():
            model, _, version = name.partition(":")
            args += ["--model", f"{model}={path}:{version or 1}"]
        with log_path.open("wb") as out:
            # Its own session: tritonserver and the Python backend stubs are its children and go with it.
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    exited = proc.poll() is not None
                    state = f"exited with {proc.returncode}" if exited else f"not ready in {timeout_s}s"
                    raise RuntimeError(f"pytriton {state}:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)  # polling the ready file the server writes
            yield str(json.loads(ready.read_text())["grpc"])
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _model_arg(value: str) -> tuple[str, Path, int]:
    """NAME=PATH[:VERSION]."""
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH[:VERSION], got {value!r}")
    path_text, _, version_text = rest.rpartition(":") if rest.rsplit(":", 1)[-1].isdigit() else (rest, "", "1")
    path = Path(path_text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path_text!r} is not a file")
    return name, path, int(version_text)


def _infer_function(path: Path, threads: int) -> tuple[Callable[..., dict[str, Any]], Any, Any]:
    """A batched callable over one ONNX file, and its input and output."""
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    model_input, model_output = session.get_inputs()[0], session.get_outputs()[0]
    # A file with a static batch size of 1 runs one image at a time; Triton still batches around it.
    static_batch = isinstance(model_input.shape[0], int)

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: Any) -> dict[str, Any]:
        images = inputs[model_input.name]
        if static_batch:
            parts = [session.run(None, {model_input.name: images[i : i + 1]})[0] for i in range(len(images))]
            out = np.concatenate(parts)
        else:
            out = session.run(None, {model_input.name: images})[0]
        return {model_output.name: np.asarray(out, dtype=np.float32)}

    return infer, model_input, model_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=_model_arg, action="append", required=True, help="NAME=PATH[:VERSION]")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    # The Python backend's stub otherwise links the system's libpython, not this interpreter's
    # (models then fail to load); tritonserver inherits this environment.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)

    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
    # pytriton restricts the shared-memory and model-control endpoints to callers with a generated token by
    # default; a stock tritonserver does not. This one listens on 127.0.0.1 only, for tests and benchmarks.
    security = TritonSecurityConfig(restricted_endpoints=[])
    with Triton(config=config, security_config=security) as triton:
        for name, path, version in args.model:
            infer, model_input, model_output = _infer_function(path, args.threads)
            out_dims = tuple(d if isinstance(d, int) else -1 for d in model_output.shape[1:])
            triton.bind(
                model_name=name,
                model_version=version,
                infer_func=infer,
                inputs=[Tensor(name=model_input.name, dtype=np.float32, shape=tuple(model_input.shape[1:]))],
                outputs=[Tensor(name=model_output.name, dtype=np.float32, shape=out_dims)],
                config=ModelConfig(
                    max_batch_size=args.max_batch_size, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)
                ),
                strict=True,
            )
            log.info("bound %s v%d -> %s", name, version, path)
        triton.run()
        if args.ready_file is not None:
            ready = {"grpc": f"127.0.0.1:{args.grpc_port}", "http": f"127.0.0.1:{args.http_port}"}
            # Atomically: a reader polling for the file never sees it half written.
            partial = args.ready_file.with_name(args.ready_file.name + ".part")
            partial.write_text(json.dumps(ready))
            os.replace(partial, args.ready_file)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
