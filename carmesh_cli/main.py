"""``carmesh``: the command-line client. It speaks only gRPC, to the gateway by default."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from carmesh_cli import counting, datasets, ingest, model_files, paging, track, train
from carmesh_cli.argtypes import count as _count
from carmesh_cli.argtypes import fraction as _fraction
from carmesh_cli.argtypes import names as _classes
from carmesh_cli.argtypes import seconds as _seconds
from carmesh_cli.connection import (
    DEFAULT_GATEWAY,
    EXIT_AUTH,
    EXIT_OK,
    EXIT_RPC_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Connection,
    Transport,
)
from carmesh_cli.detect import run_detect
from carmesh_cli.models import FAMILIES, run_import, run_list, run_promote, run_rollback, run_versions
from carmesh_cli.names import PRESETS, NamesError, parse_names

EPILOG = f"""\
The gateway address comes from --gateway, else $CARMESH_GATEWAY, else {DEFAULT_GATEWAY}.
The API key comes from --api-key, else $CARMESH_API_KEY (prefer the variable: flags show in `ps`).

exit codes:
  {EXIT_OK}  success
  {EXIT_RPC_FAILED}  a call failed (the status and details are printed as `error: STATUS: details`)
  {EXIT_USAGE}  bad arguments or unreadable input files
  {EXIT_UNREACHABLE}  nothing answers at the gateway address
  {EXIT_AUTH}  the API key is missing, unknown, or lacks the scope (UNAUTHENTICATED / PERMISSION_DENIED)
"""

# Per-command deadlines when --timeout is not given: uploads of big models need longer.
DEFAULT_TIMEOUT_S = 30.0
IMPORT_TIMEOUT_S = 600.0


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS lets these be given before or after the subcommand without one erasing the other.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--gateway",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help=f"gateway (or daemon) address (default $CARMESH_GATEWAY or {DEFAULT_GATEWAY})",
    )
    group.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        metavar="KEY",
        help="API key sent as 'authorization: Bearer KEY' (default $CARMESH_API_KEY)",
    )
    group.add_argument(
        "--tls",
        dest="plaintext",
        action="store_false",
        default=argparse.SUPPRESS,
        help="TLS to the gateway (the default)",
    )
    group.add_argument(
        "--plaintext",
        dest="plaintext",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no TLS: only for a gateway started with --public-plaintext (default $CARMESH_PLAINTEXT=1)",
    )
    group.add_argument(
        "--ca",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="CA certificate (PEM) that signed the gateway's certificate (default $CARMESH_CA, else the local "
        "stack's .run/tls/public/ca.pem when present, else the system's CAs)",
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=argparse.SUPPRESS,
        metavar="S",
        help=f"deadline of each call in seconds (default {DEFAULT_TIMEOUT_S:g}; "
        f"{IMPORT_TIMEOUT_S:g} for models import, {ingest.IMPORT_TIMEOUT_S:g} for ingest dataset, "
        f"{datasets.CREATE_TIMEOUT_S:g} for datasets create)",
    )
    common.add_argument(
        "--output",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="write what the command prints on stdout (its result, e.g. with --json) to FILE "
        "instead, complete or not at all: FILE exists only when the command succeeded",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="carmesh",
        description="Detect cars, ingest frames and data sets, build dataset snapshots and manage detector models "
        "through the carmesh gateway.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    detect = commands.add_parser(
        "detect",
        parents=[common],
        help="detect objects in images",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sends each image to DetectorService.Detect and prints what was found.",
    )
    detect.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of images")
    detect.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    detect.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write annotated JPEGs (boxes, labels, scores) to DIR, named after the inputs",
    )
    detect.add_argument("--score-threshold", type=_fraction, metavar="F", help="minimum score (default: detector's)")
    detect.add_argument("--iou-threshold", type=_fraction, metavar="F", help="NMS IoU threshold (default: detector's)")
    detect.add_argument(
        "--classes", type=_classes, default=[], metavar="A,B", help="keep only these class names, e.g. car,truck"
    )
    detect.add_argument(
        "--max-detections",
        type=_count,
        default=0,
        metavar="N",
        help="at most N detections per image (default: detector's)",
    )

    models = commands.add_parser(
        "models",
        parents=[common],
        help="manage registered detector models",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    imp = actions.add_parser(
        "import",
        parents=[common],
        help="register an ONNX detector file",
        description="Uploads an ONNX detector to the registry in chunks (sha256-checked).",
    )
    imp.add_argument("path", type=Path, metavar="PATH", help="the ONNX file")
    imp.add_argument("--name", default="car-detector", help="registered model name (default car-detector)")
    imp.add_argument(
        "--family",
        default="auto",
        choices=sorted(FAMILIES),
        help="output layout of the model (default auto: the registry tells it from the layout)",
    )
    imp.add_argument(
        "--names",
        metavar="SPEC",
        help=f"class names: a preset ({', '.join(sorted(PRESETS))}), a file with one name per line, "
        "or a,b,c (needed when the file has no `names` metadata)",
    )
    imp.add_argument("--alias", default="", help="point this alias (e.g. champion) at the new version")
    imp.add_argument("--description", default="", help="free text kept with the version")

    lst = actions.add_parser("list", parents=[common], help="list registered models")
    lst.add_argument("--json", action="store_true", help="one JSON object per model")
    paging.add_arguments(lst)

    versions = actions.add_parser("versions", parents=[common], help="list the versions of a model")
    versions.add_argument("name", metavar="NAME")
    versions.add_argument("--json", action="store_true", help="one JSON object per version")
    paging.add_arguments(versions)

    promote = actions.add_parser("promote", parents=[common], help="point an alias at a version (SetAlias)")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", metavar="VERSION")
    promote.add_argument("--alias", default="champion", help="the alias to move (default champion)")
    promote.add_argument(
        "--force",
        action="store_true",
        help="skip the gate (champion moves only to a version at least as good on the same data)",
    )
    promote.add_argument(
        "--dataset",
        default="",
        metavar="SNAPSHOT",
        help="compare on this evaluation data set (default: the version's training snapshot)",
    )

    evaluate = actions.add_parser(
        "evaluate", parents=[common], help="score a version on a data set's validation split (recorded on the version)"
    )
    evaluate.add_argument("name", metavar="NAME")
    evaluate.add_argument("version", metavar="VERSION")
    evaluate.add_argument("--dataset", required=True, metavar="SNAPSHOT", help="snapshot (NAME[:VERSION]) or folder")
    evaluate.add_argument(
        "--classes",
        type=_classes,
        default=[],
        metavar="A,B",
        help="classes to score (default: the model's classes the data set has)",
    )
    evaluate.add_argument(
        "--ignore-classes",
        type=_classes,
        default=[],
        metavar="A,B",
        help="classes whose boxes are don't-care, e.g. van,truck,bus",
    )

    rollback = actions.add_parser("rollback", parents=[common], help="point an alias back at its previous version")
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--alias", default="champion", help="the alias to roll back (default champion)")
    model_files.add_parsers(actions, common)

    ingest.add_parser(commands, common, EPILOG)
    train.add_parsers(commands, common, EPILOG)
    datasets.add_parsers(commands, common, EPILOG)
    track.add_parser(commands, common, EPILOG)
    counting.add_parsers(commands, common, EPILOG)
    return parser


def _dispatch(args: argparse.Namespace, env: Mapping[str, str], stdout: TextIO) -> int:
    address = getattr(args, "gateway", None) or env.get("CARMESH_GATEWAY") or DEFAULT_GATEWAY
    api_key = getattr(args, "api_key", None) or env.get("CARMESH_API_KEY") or None
    timeout_s: float | None = getattr(args, "timeout", None)
    # Resolve the class names before any network traffic, so a typo is a usage error.
    class_names: list[str] = []
    if args.command == "models" and args.action == "import" and args.names:
        try:
            class_names = parse_names(args.names)
        except NamesError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
    transport = Transport.choose(getattr(args, "plaintext", None), getattr(args, "ca", None), env)
    with Connection(address, api_key, connect_timeout_s=min(timeout_s or 5.0, 5.0), transport=transport) as conn:
        if args.command == "ingest":
            return ingest.run(conn, args, timeout_s=timeout_s, stdout=stdout)
        if args.command in ("datasets", "features"):
            return datasets.run(conn, args, timeout_s=timeout_s, stdout=stdout)
        if args.command in ("cameras", "counts", "events"):
            return counting.run(conn, args, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, stdout=stdout)
        if args.command == "track":
            return track.run(conn, args, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, stdout=stdout)
        if args.command in ("train", "jobs"):
            return train.run(conn, args, timeout_s=timeout_s, stdout=stdout)
        if args.command == "models" and args.action == "evaluate":
            return train.evaluate(
                conn,
                args.name,
                args.version,
                args.dataset,
                args.classes,
                args.ignore_classes,
                timeout_s=timeout_s,
                stdout=stdout,
            )
        if args.command == "detect":
            return run_detect(
                conn,
                args.images,
                as_json=args.json,
                out_dir=args.out,
                score_threshold=args.score_threshold,
                iou_threshold=args.iou_threshold,
                classes=args.classes,
                max_detections=args.max_detections,
                timeout_s=timeout_s or DEFAULT_TIMEOUT_S,
                stdout=stdout,
            )
        if args.action == "download":
            return model_files.run_download(
                conn, args.ref, args.out, timeout_s=timeout_s or model_files.DOWNLOAD_TIMEOUT_S, stdout=stdout
            )
        if args.action == "export-triton":
            return model_files.run_export_triton(
                conn, args.ref, args.dir, timeout_s=timeout_s or model_files.DOWNLOAD_TIMEOUT_S, stdout=stdout
            )
        timeout_s = timeout_s or DEFAULT_TIMEOUT_S
        if args.action == "import":
            return run_import(
                conn,
                args.path,
                name=args.name,
                family=args.family,
                class_names=class_names,
                alias=args.alias,
                description=args.description,
                timeout_s=getattr(args, "timeout", None) or IMPORT_TIMEOUT_S,
                stdout=stdout,
            )
        if args.action == "list":
            return run_list(conn, as_json=args.json, timeout_s=timeout_s, stdout=stdout, page=paging.Paging.of(args))
        if args.action == "versions":
            return run_versions(
                conn, args.name, as_json=args.json, timeout_s=timeout_s, stdout=stdout, page=paging.Paging.of(args)
            )
        if args.action == "promote":
            return run_promote(
                conn,
                args.name,
                args.version,
                alias=args.alias,
                timeout_s=timeout_s,
                force=args.force,
                dataset=args.dataset,
                stdout=stdout,
            )
        return run_rollback(conn, args.name, alias=args.alias, timeout_s=timeout_s, stdout=stdout)


def _dispatch_to_file(args: argparse.Namespace, env: Mapping[str, str], output: Path) -> int:
    """Runs the command with its stdout in ``output``: written to a temporary file beside it and renamed when the
    command succeeds, so a script never reads half a result, nor a stale one after a failure."""
    partial = output.with_name(f".{output.name}.partial")
    try:
        output.unlink(missing_ok=True)
        stream = partial.open("w", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write --output {output}: {exc.strerror or exc}", EXIT_USAGE) from exc
    try:
        with stream:
            code = _dispatch(args, env, stream)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if code == EXIT_OK:
        partial.replace(output)
    else:
        partial.unlink(missing_ok=True)
    return code


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        output: Path | None = getattr(args, "output", None)
        if output is None:
            return _dispatch(args, os.environ if env is None else env, sys.stdout)
        return _dispatch_to_file(args, os.environ if env is None else env, output)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
