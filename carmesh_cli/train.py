"""``carmesh train DATASET`` (start a training job and follow it), ``carmesh jobs ...`` (list,
show, watch, cancel) and ``carmesh models evaluate``, all through TrainingService."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any, TextIO

import grpc

from carmesh.v1 import common_pb2, training_pb2, training_pb2_grpc
from carmesh_cli import argtypes, paging
from carmesh_cli.connection import EXIT_OK, EXIT_RPC_FAILED, EXIT_USAGE, CliError, Connection, rpc_failure
from carmesh_cli.output import enum_name, is_set, print_json, table, when

DEFAULT_TIMEOUT_S = 30.0
# Evaluating streams a snapshot and runs every validation image: allow minutes.
EVALUATE_TIMEOUT_S = 900.0
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")


def size(text: str) -> tuple[int, int]:
    """``960x544`` -> (960, 544): width x height."""
    match = _SIZE.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 960x544")
    return int(match[1]), int(match[2])


def duration_s(text: str) -> int:
    """``90``, ``90s``, ``25m``, ``1.5h`` -> seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 600, 25m or 1.5h")
    value = float(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2] or "s"]
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1 second")
    return int(value)


def add_parsers(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    train = commands.add_parser(
        "train",
        parents=[common],
        help="train a detector on a dataset snapshot and register it",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="StartTraining, then follow the job until it ends (Ctrl-C stops following, not the job). "
        "The trained model is registered and gets the alias `challenger`; promote it with "
        "`carmesh models promote NAME VERSION`.",
    )
    train.add_argument(
        "dataset",
        metavar="DATASET",
        help="a dataset snapshot (NAME or NAME:VERSION) or a folder on the trainer in any import format",
    )
    train.add_argument("--preset", default="n", choices=["n", "s"], help="model size (default n)")
    train.add_argument(
        "--size",
        type=size,
        metavar="WxH",
        help="input size of the exported model, multiples of 32 (default 960x544, the 16:9 frame)",
    )
    train.add_argument("--crop", type=size, metavar="WxH", help="training crop size (default: the recipe's)")
    train.add_argument(
        "--epochs",
        type=argtypes.count,
        default=0,
        metavar="N",
        help="train N epochs (default: the recipe's schedule, about 28.5 min of training)",
    )
    train.add_argument("--batch-size", type=argtypes.count, default=0, metavar="N", help="images per step and worker")
    train.add_argument("--learning-rate", type=float, default=0.0, metavar="LR", help="peak learning rate")
    train.add_argument(
        "--classes",
        type=argtypes.names,
        default=[],
        metavar="A,B",
        help="classes to learn (default: every class of the data set)",
    )
    train.add_argument(
        "--ignore-classes",
        type=argtypes.names,
        default=[],
        metavar="A,B",
        help="classes whose boxes are don't-care regions, e.g. van,truck,bus",
    )
    train.add_argument(
        "--init",
        default="",
        metavar="CHECKPOINT",
        help="start from an Ultralytics YOLOv8 .pt checkpoint (a path on the trainer)",
    )
    train.add_argument(
        "--max-duration",
        type=duration_s,
        default=0,
        metavar="TIME",
        help="stop training after TIME (e.g. 25m) and finish the job with what it learned",
    )
    train.add_argument(
        "--workers", type=argtypes.count, default=1, metavar="N", help="tf.distribute worker processes (default 1)"
    )
    train.add_argument("--seed", type=argtypes.whole, default=0, metavar="N", help="seed (default: the recipe's)")
    train.add_argument(
        "--precision",
        choices=["int8", "float32"],
        default=None,
        help="number format of the registered ONNX model (default: the trainer's, int8: about 2.3x faster "
        "on CPUs at nearly the same AP; float32 for GPUs)",
    )
    train.add_argument("--model-name", default="", help="registered model name (default: the trainer's, car-detector)")
    train.add_argument("--detach", action="store_true", help="print the job id and return at once")
    train.add_argument(
        "--render-tfjob",
        action="store_true",
        help="print the Kubeflow TFJob manifest for this job instead of running it here",
    )
    train.add_argument("--namespace", default="", help="with --render-tfjob: the namespace")
    train.add_argument("--image", default="", help="with --render-tfjob: the trainer container image")
    train.add_argument("--json", action="store_true", help="print the final job as JSON")

    jobs = commands.add_parser(
        "jobs",
        parents=[common],
        help="list, follow and cancel training jobs",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = actions.add_parser("list", parents=[common], help="training jobs, newest first")
    lst.add_argument("--json", action="store_true", help="one JSON object per job")
    paging.add_arguments(lst)
    for name, text in (
        ("show", "describe a job"),
        ("watch", "follow a job until it ends"),
        ("cancel", "stop a job (nothing is registered)"),
    ):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("job_id", metavar="JOB")
        action.add_argument("--json", action="store_true", help="print the job as JSON")


def request_of(args: argparse.Namespace) -> training_pb2.StartTrainingRequest:
    config = training_pb2.TrainingConfig(
        preset=args.preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        classes=args.classes,
        ignore_classes=args.ignore_classes,
        init_checkpoint=args.init,
        max_duration_s=args.max_duration,
        seed=args.seed,
        precision={
            None: training_pb2.EXPORT_PRECISION_UNSPECIFIED,
            "int8": training_pb2.EXPORT_PRECISION_INT8,
            "float32": training_pb2.EXPORT_PRECISION_FLOAT32,
        }[args.precision],
    )
    if args.size:
        config.input_width, config.input_height = args.size
    if args.crop:
        config.crop_width, config.crop_height = args.crop
    if args.workers < 1:
        raise CliError("--workers must be at least 1", EXIT_USAGE)
    return training_pb2.StartTrainingRequest(
        dataset=args.dataset, config=config, workers=args.workers, model_name=args.model_name
    )


def _stub(conn: Connection) -> training_pb2_grpc.TrainingServiceStub:
    return training_pb2_grpc.TrainingServiceStub(conn.channel)


def run(
    conn: Connection,
    args: argparse.Namespace,
    timeout_s: float | None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    conn.ensure_reachable()
    stub = _stub(conn)
    timeout = timeout_s or DEFAULT_TIMEOUT_S
    try:
        if args.command == "train":
            request = request_of(args)
            if args.render_tfjob:
                reply = stub.RenderTrainingJob(
                    training_pb2.RenderTrainingJobRequest(request=request, namespace=args.namespace, image=args.image),
                    timeout=timeout,
                    metadata=conn.metadata,
                )
                stdout.write(reply.manifest_yaml)
                return EXIT_OK
            job = stub.StartTraining(request, timeout=timeout, metadata=conn.metadata).job
            print(f"started {job.job_id} on {args.dataset}", file=stderr)
            if args.detach:
                print(job.job_id, file=stdout)
                return EXIT_OK
            return _follow(conn, job.job_id, args.json, stdout, stderr)
        if args.action == "list":
            jobs = paging.fetch(
                lambda r: stub.ListTrainingJobs(r, timeout=timeout, metadata=conn.metadata),
                training_pb2.ListTrainingJobsRequest(),
                lambda reply: reply.jobs,
                paging.Paging.of(args),
                stderr,
            )
            if args.json:
                for job in jobs:
                    print_json(job, stdout)
            else:
                print(
                    table(["JOB", "STATE", "DATASET", "EPOCH", "mAP50", "VERSION", "STARTED"], [_row(j) for j in jobs]),
                    file=stdout,
                )
            return EXIT_OK
        if args.action == "show":
            job = stub.GetTrainingJob(
                training_pb2.GetTrainingJobRequest(job_id=args.job_id), timeout=timeout, metadata=conn.metadata
            ).job
            _print_job(job, args.json, stdout)
            return _exit_of(job)
        if args.action == "watch":
            return _follow(conn, args.job_id, args.json, stdout, stderr)
        job = stub.CancelTrainingJob(
            training_pb2.CancelTrainingJobRequest(job_id=args.job_id), timeout=timeout, metadata=conn.metadata
        ).job
        print(f"{job.job_id}: {_state(job)}", file=stdout)
        return EXIT_OK
    except grpc.RpcError as error:
        raise rpc_failure(error) from None


def _state(job: training_pb2.TrainingJob) -> str:
    return enum_name(training_pb2.TrainingState, job.state, "TRAINING_STATE_")


def _row(job: training_pb2.TrainingJob) -> list[str]:
    map50 = job.final_metrics.get("val_map50")
    version = f"{job.registered.name} v{job.registered.version}" if job.registered.version else "-"
    return [
        job.job_id,
        _state(job),
        job.dataset or job.request.dataset,
        f"{job.epoch}",
        f"{map50:.3f}" if map50 is not None else "-",
        version,
        when(job.started_at) if is_set(job.started_at) else "-",
    ]


def _print_job(job: training_pb2.TrainingJob, as_json: bool, stdout: TextIO) -> None:
    if as_json:
        print_json(job, stdout)
        return
    print(f"job       {job.job_id}  {_state(job)}  ({phase_line(job)})", file=stdout)
    print(f"dataset   {job.dataset or job.request.dataset}", file=stdout)
    print(f"progress  epoch {job.epoch}, step {job.step}/{job.total_steps}", file=stdout)
    if job.mlflow_run_id:
        print(f"mlflow    run {job.mlflow_run_id}", file=stdout)
    for entry in job.history:
        metrics = "  ".join(f"{k} {v:.4g}" for k, v in sorted(entry.metrics.items()))
        print(f"  epoch {entry.epoch:3d}  {metrics}", file=stdout)
    if job.final_metrics:
        print("final     " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(job.final_metrics.items())), file=stdout)
    if job.registered.version:
        alias = f" (alias {job.registered.alias})" if job.registered.alias else ""
        print(f"model     {job.registered.name} version {job.registered.version}{alias}", file=stdout)
    if job.error:
        print(f"error     {job.error}", file=stdout)


def _exit_of(job: training_pb2.TrainingJob) -> int:
    return EXIT_RPC_FAILED if job.state in (training_pb2.TRAINING_STATE_FAILED,) else EXIT_OK


def phase_line(job: training_pb2.TrainingJob) -> str:
    """The phase, with the download's progress while the job fetches its data set."""
    if job.total_frames and job.fetched_frames < job.total_frames:
        return f"{job.phase} ({job.fetched_frames}/{job.total_frames} frames)"
    return job.phase


def _follow(conn: Connection, job_id: str, as_json: bool, stdout: TextIO, stderr: TextIO) -> int:
    """Prints progress on stderr until the job ends; the stream is reopened if it breaks."""
    stub = _stub(conn)
    live = stderr.isatty()
    last: training_pb2.TrainingJob | None = None
    last_phase = ""
    started = time.monotonic()
    seen_epochs = 0
    while True:
        try:
            for reply in stub.WatchTrainingJob(
                training_pb2.WatchTrainingJobRequest(job_id=job_id), metadata=conn.metadata
            ):
                job = last = reply.job
                for entry in list(job.history)[seen_epochs:]:
                    metrics = "  ".join(f"{k} {v:.4g}" for k, v in sorted(entry.metrics.items()))
                    print(("\r" if live else "") + f"epoch {entry.epoch}: {metrics}", file=stderr)
                seen_epochs = len(job.history)
                limit_s = job.request.config.max_duration_s
                if limit_s and is_set(job.started_at):
                    # A time-limited job's schedule follows the clock, not a step count.
                    elapsed_s = time.time() - job.started_at.ToSeconds()
                    fraction, total = min(1.0, elapsed_s / limit_s), f"{elapsed_s:.0f}/{limit_s}s"
                else:
                    # The trainer reports its schedule's progress; without epochs the schedule follows
                    # the recipe's training-time budget, and total_steps is only a cap.
                    fraction = job.progress or (job.step / job.total_steps if job.total_steps else 0.0)
                    total = f"step {job.step}/{job.total_steps}" if job.request.config.epochs else f"step {job.step}"
                line = f"{job.job_id} {_state(job)} {phase_line(job)}: epoch {job.epoch} {total} ({fraction:4.0%}) "
                line += f"{time.monotonic() - started:6.0f}s"
                if live:
                    stderr.write("\r" + line[:160])
                    stderr.flush()
                elif job.phase != last_phase:
                    print(line, file=stderr)
                last_phase = job.phase
            break
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE:
                time.sleep(1.0)
                continue
            raise
    if live:
        stderr.write("\n")
    if last is None:
        raise CliError(f"no updates for job {job_id}", EXIT_RPC_FAILED)
    _print_job(last, as_json, stdout)
    if last.state == training_pb2.TRAINING_STATE_FAILED:
        # stdout may be a file that --output drops on failure: the reason must reach a person.
        print(f"error: job {job_id} failed: {last.error or 'no reason given'}", file=stderr)
    return _exit_of(last)


def evaluate(
    conn: Connection,
    name: str,
    version: str,
    dataset: str,
    classes: list[str],
    ignore_classes: list[str],
    timeout_s: float | None,
    stdout: TextIO = sys.stdout,
) -> int:
    conn.ensure_reachable()
    request = training_pb2.EvaluateModelRequest(
        model=common_pb2.ModelRef(name=name, version=version),
        dataset=dataset,
        classes=classes,
        ignore_classes=ignore_classes,
    )
    try:
        reply = _stub(conn).EvaluateModel(request, timeout=timeout_s or EVALUATE_TIMEOUT_S, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error) from None
    per_class = "  ".join(f"{k} {v:.3f}" for k, v in sorted(reply.ap50.items()))
    print(
        f"{name} v{reply.model.version} on {reply.dataset} ({reply.images} images): mAP50 {reply.map50:.3f}  "
        f"mAP50-95 {reply.map50_95:.3f}  AP50 {per_class}",
        file=stdout,
    )
    return EXIT_OK
