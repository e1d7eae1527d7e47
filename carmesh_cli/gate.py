"""The promotion gate: ``champion`` moves to a version only if its mAP50 on the same validation
data (same snapshot, same scored and don't-care classes) is at least the current champion's.

The numbers live on the versions (tag ``carmesh.eval``: written by the trainer after training
and by EvaluateModel); a champion without numbers for that data is evaluated first.
"""

from __future__ import annotations

import sys
from typing import TextIO

import grpc

from carmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc, training_pb2, training_pb2_grpc
from carmesh_cli.connection import EXIT_RPC_FAILED, CliError, Connection, rpc_failure
from kit.registry_tags import TAG_EVAL, TAG_TRAIN_DATASET, EvalKey, parse_evaluations

GATED_ALIAS = "champion"
EVALUATE_TIMEOUT_S = 900.0


def evaluations(version: registry_pb2.ModelVersion) -> dict[str, dict[str, float]]:
    return parse_evaluations(version.tags.get(TAG_EVAL))


def choose_key(candidate: registry_pb2.ModelVersion, dataset: str) -> str:
    evals = evaluations(candidate)
    if not evals:
        raise CliError(
            f"{candidate.name} version {candidate.version} has no evaluation to compare: run "
            f"`carmesh models evaluate {candidate.name} {candidate.version} --dataset SNAPSHOT` first, "
            "or pass --force",
            EXIT_RPC_FAILED,
        )
    wanted = dataset or candidate.tags.get(TAG_TRAIN_DATASET, "")
    matching = [k for k in evals if EvalKey.parse(k).dataset == wanted] if wanted else list(evals)
    if not matching:
        raise CliError(
            f"{candidate.name} version {candidate.version} was not evaluated on {wanted!r} "
            f"(it was on {', '.join(sorted({EvalKey.parse(k).dataset for k in evals}))}); evaluate it there "
            "first, or pass --force",
            EXIT_RPC_FAILED,
        )
    return sorted(matching)[0]


def check(
    conn: Connection, name: str, version: str, *, dataset: str, timeout_s: float, stdout: TextIO = sys.stdout
) -> None:
    """Raises :class:`CliError` when ``version`` must not become champion; prints the comparison."""
    registry = registry_pb2_grpc.RegistryServiceStub(conn.channel)
    try:
        candidate = registry.GetModelVersion(
            registry_pb2.GetModelVersionRequest(name=name, version=version), timeout=timeout_s, metadata=conn.metadata
        ).version
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND:
            return  # SetAlias answers this (NOT_FOUND, or PERMISSION_DENIED for a key that may not promote)
        raise rpc_failure(error) from None
    try:
        current = registry.GetModelVersion(
            registry_pb2.GetModelVersionRequest(name=name, alias=GATED_ALIAS),
            timeout=timeout_s,
            metadata=conn.metadata,
        ).version
    except grpc.RpcError as error:
        if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND:
            print(f"gate: {name} has no {GATED_ALIAS} yet; nothing to compare", file=stdout)
            return
        raise rpc_failure(error) from None
    if current.version == candidate.version:
        return
    key = choose_key(candidate, dataset)
    ours = evaluations(candidate)[key]
    theirs = evaluations(current).get(key)
    parsed = EvalKey.parse(key)
    if theirs is None:
        print(f"gate: evaluating {GATED_ALIAS} version {current.version} on {parsed} ...", file=stdout)
        theirs = {"map50": _evaluate(conn, name, current.version, parsed)}
    mine, champion = float(ours["map50"]), float(theirs["map50"])
    verdict = (
        f"version {version} mAP50 {mine:.3f} vs {GATED_ALIAS} version {current.version} {champion:.3f} on {parsed}"
    )
    if mine < champion:
        raise CliError(f"gate: refused: {verdict}; pass --force to promote anyway", EXIT_RPC_FAILED)
    print(f"gate: passed: {verdict}", file=stdout)


def _evaluate(conn: Connection, name: str, version: str, key: EvalKey) -> float:
    stub = training_pb2_grpc.TrainingServiceStub(conn.channel)
    request = training_pb2.EvaluateModelRequest(
        model=common_pb2.ModelRef(name=name, version=version),
        dataset=key.dataset,
        classes=key.classes,
        ignore_classes=key.ignore_classes,
    )
    try:
        reply = stub.EvaluateModel(request, timeout=EVALUATE_TIMEOUT_S, metadata=conn.metadata)
    except grpc.RpcError as error:
        failure = rpc_failure(error, f"evaluating {GATED_ALIAS} version {version}")
        raise CliError(f"gate: cannot compare: {failure}; pass --force to promote anyway", failure.exit_code) from None
    return float(reply.map50)
