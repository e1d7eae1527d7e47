"""The lines the CLI prints for a status's rich details, from real google.rpc messages."""

from __future__ import annotations

import grpc
from google.protobuf import wrappers_pb2

from carmesh_cli.rpc_errors import RpcDetails, format_delay, from_status
from kit.errors import FieldViolation, InvalidArgument, PreconditionViolation, Resource, ResourceExhausted, make_status


def test_delays_round_up_so_a_retry_is_never_early() -> None:
    assert [format_delay(s) for s in (0.001, 0.25, 2.501, 9.999, 10.0, 999.18)] == [
        "0.01 s",
        "0.25 s",
        "2.51 s",
        "10 s",
        "10 s",
        "1000 s",
    ]


def test_every_detail_kind_has_a_line() -> None:
    error = InvalidArgument(
        "bad request",
        reason="INVALID_VERSION",
        metadata={"b": 2, "a": "x"},
        violations=[FieldViolation("version", "not a number"), FieldViolation("name", "bad request")],
        resource=Resource("model version", "car/x"),
        preconditions=[PreconditionViolation("MODEL", "car", "not loaded")],
    )
    assert from_status(error.status()).lines("bad request") == [
        "reason: INVALID_VERSION (a=x, b=2)",
        "field version: not a number",
        "field name",  # its description only repeats the message
        "resource: model version car/x",
        "precondition MODEL car: not loaded",
    ]
    limited = ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_s=1.5)
    assert from_status(limited.status()).lines() == ["reason: RATE_LIMITED", "retry after 1.5 s"]


def test_unknown_detail_types_are_skipped() -> None:
    status = make_status(grpc.StatusCode.INTERNAL, "x", [wrappers_pb2.StringValue(value="new kind")])
    assert from_status(status) == RpcDetails()
    assert RpcDetails().lines() == []
