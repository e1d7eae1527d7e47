"""Training pods that helm/carmesh starts (``training.mode``: a Kubeflow TFJob or an indexed Job), running
the same worker as local jobs (``python -m trainer_worker``).

``prepare`` (every pod's init container) plans the job from the request's fields with the trainer's own
planning code and writes the job folder's ``job.json`` on the shared claim, fetching a snapshot first;
the first replica fixes the spec and the others reuse it (``trainer.tfjob.prepare``).

``indexed-worker`` (the indexed Job's container) is for clusters without the Kubeflow operator: it
derives ``TF_CONFIG`` from the pod's ``JOB_COMPLETION_INDEX`` and the stable host names the headless
Service gives the Job's pods (``<job>-<index>.<service>``), then becomes ``python -m trainer_worker``.

Both take ``--dry-run``: print what would be written or run and exit, touching nothing (helm-check runs
every rendered training container that way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from kit import mlflow_auth
from kit.config import ConfigError
from trainer.errors import BadRequest
from trainer.planning import TrainRequest
from trainer.tfjob import (
    TFJobError,
    _check_job_name,
    _job_template,
    _whole_cores,
    add_mesh_arguments,
    mesh_files_of,
    prepare,
)

INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
EXIT_USAGE = 2


def request_from_args(args: argparse.Namespace) -> TrainRequest:
    """The request as ``carmesh train`` would send it, with the same checks of its shape."""
    from trainer.planning import Planner

    req = TrainRequest(
        dataset=args.dataset.strip(),
        preset=args.preset,
        input_width=args.input_width,
        input_height=args.input_height,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()),
        ignore_classes=tuple(c.strip() for c in args.ignore_classes.split(",") if c.strip()),
        crop_width=0,
        crop_height=0,
        max_duration_s=args.max_duration_s,
        seed=args.seed,
        workers=args.workers,
        model_name=args.model_name,
        precision=args.precision,
    )
    # Shape only: a folder is checked where the pods see it (prepare, the worker). Workers are the
    # chart's to size, so they are checked against themselves (>= 1) rather than a daemon's max_workers.
    planner = Planner(
        feature_addr="", cache_dir=Path("."), allowed_roots=(), max_workers=max(1, req.workers), cpu_threads=0
    )
    planner.validate_shape(req)
    _check_job_name(args.job_name, req.workers)
    return req


def tf_config(job_name: str, service: str, workers: int, port: int, index: int) -> str:
    """TF_CONFIG of indexed pod ``index``: every pod a worker, worker 0 the chief (as local jobs run)."""
    if workers < 1:
        raise TFJobError(f"workers must be >= 1, got {workers}")
    if not 0 <= index < workers:
        raise TFJobError(f"{INDEX_VARIABLE} {index} is outside 0..{workers - 1}")
    if not 0 < port < 65536:
        raise TFJobError(f"port {port} is not a TCP port")
    hosts = [f"{job_name}-{i}.{service}:{port}" for i in range(workers)]
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


def _index(environ: Mapping[str, str]) -> int:
    raw = environ.get(INDEX_VARIABLE, "")
    if not raw.isdigit():
        raise TFJobError(f"{INDEX_VARIABLE} is {raw!r}: this runs in a pod of an indexed Job")
    return int(raw)


def _mlflow_credentials(args: argparse.Namespace) -> tuple[str, str]:
    """(user, password file path) for job.json, the user read from --mlflow-username-file unless given
    literally; both or neither. The password's path, never the password. Under --dry-run no file is read
    (the user shows as the file's path)."""
    username_file = Path(args.mlflow_username_file) if args.mlflow_username_file else None
    password_file = Path(args.mlflow_password_file) if args.mlflow_password_file else None
    flags = ("--mlflow-username", "--mlflow-username-file", "--mlflow-password-file")
    try:
        mlflow_auth.check_settings(args.mlflow_username, username_file, password_file, flags)
    except ValueError as exc:
        raise TFJobError(str(exc)) from exc
    if password_file is None:
        return "", ""
    if args.dry_run:
        return args.mlflow_username.strip() or f"<{username_file}>", str(password_file)
    # The worker reads the password; a missing mount fails here, in the init container, naming the file.
    credentials = mlflow_auth.credentials_env(args.mlflow_username, password_file, username_file)
    return mlflow_auth.user_of(credentials), str(password_file)


def _prepare(args: argparse.Namespace) -> int:
    req = request_from_args(args)
    username, password_file = _mlflow_credentials(args)
    template = _job_template(
        req,
        args.job_name,
        args.model_name,
        _whole_cores(args.cpu),
        args.mlflow_tracking_uri,
        args.registry_addr,
        mlflow_username=username,
        mlflow_password_file=password_file,
    )
    if args.dry_run:
        print(json.dumps(asdict(template), indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="carmesh-prepare-") as tmp:
        template_file = Path(tmp) / "job-template.json"
        template_file.write_text(json.dumps(asdict(template)))
        spec = prepare(template_file, args.job_dir, args.cache_dir, args.feature_addr, mesh_files_of(args))
    with contextlib.suppress(BrokenPipeError):
        print(f"job {spec.job_id}: data {spec.dataset} at {spec.data_path}, {spec.workers} worker(s)")
    return 0


def _indexed_worker(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    index = _index(environ)
    config = tf_config(args.job_name, args.service, args.workers, args.port, index)
    command = [sys.executable, "-m", "trainer_worker", "--job-dir", str(args.job_dir)]
    if args.dry_run:
        print(json.dumps({"TF_CONFIG": json.loads(config), "command": command}))
        return 0
    os.execve(sys.executable, command, {**environ, "TF_CONFIG": config})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--job-name", required=True, help="the TFJob's or Job's name (also the job's id)")
    common.add_argument("--job-dir", type=Path, required=True, help="the job's folder on the shared claim")
    common.add_argument("--workers", type=int, default=1, help="pods training together (the chief counts)")
    common.add_argument("--dry-run", action="store_true", help="print what would be done, touch nothing")

    prep = sub.add_parser("prepare", parents=[common], help="plan the job and write job.json (init container)")
    prep.add_argument("--dataset", required=True, help="snapshot name[:version] or a folder the pods see")
    prep.add_argument("--preset", default="n")
    prep.add_argument("--input-width", type=int, default=0)
    prep.add_argument("--input-height", type=int, default=0)
    prep.add_argument("--epochs", type=int, default=0)
    prep.add_argument("--batch-size", type=int, default=0)
    prep.add_argument("--learning-rate", type=float, default=0.0)
    prep.add_argument("--classes", default="", help="comma-separated class names")
    prep.add_argument("--ignore-classes", default="", help="comma-separated class names")
    prep.add_argument("--max-duration-s", type=int, default=0)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument(
        "--precision", default="", choices=["", "float32", "int8"], help="registered ONNX format (default int8)"
    )
    prep.add_argument("--model-name", default="car-detector")
    prep.add_argument("--cpu", default="1", help="CPU limit of a worker pod (Kubernetes quantity): its TF threads")
    prep.add_argument("--cache-dir", type=Path, required=True, help="data set cache on the shared claim")
    prep.add_argument("--feature-addr", default="", help="feature_service, to fetch a snapshot")
    prep.add_argument("--registry-addr", default="")
    prep.add_argument("--mlflow-tracking-uri", default="")
    prep.add_argument("--mlflow-username", default="", help="MLflow user of the workers (with --mlflow-password-file)")
    prep.add_argument("--mlflow-username-file", default="", help="file holding that user, instead of --mlflow-username")
    prep.add_argument(
        "--mlflow-password-file", default="", help="file holding its password, as the pods see it (a path in job.json)"
    )
    add_mesh_arguments(prep)

    worker = sub.add_parser("indexed-worker", parents=[common], help="TF_CONFIG from the pod's index, then the worker")
    worker.add_argument("--service", required=True, help="the headless Service naming the Job's pods")
    worker.add_argument("--port", type=int, default=2222, help="the workers' collective port")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prepare":
            return _prepare(args)
        return _indexed_worker(args, os.environ if environ is None else environ)
    except (BadRequest, ConfigError) as exc:
        print(f"trainer.cluster: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
