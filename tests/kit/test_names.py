"""The one name syntax (kit/names.py) and the one URL redaction (kit/redact.py), and the daemons'
edge checks built on them (issue 16, holes 5 and 7)."""

from __future__ import annotations

import pytest

from carmesh.v1 import training_pb2
from kit.errors import InvalidArgument
from kit.names import ALIAS, InvalidName, is_valid_name, validate_name
from kit.redact import redact_url
from registry_gateway.registry import check_alias, check_name
from trainer.server import train_request

# Names the README, docs and tests use: all valid.
GOOD = (
    "apollo",
    "gate-1",
    "dash-1",
    "door-2",
    "car-detector",
    "apollo-snap",
    "champion",
    "src-0123456789",
    "C",
    "v1.2_x",
)
BAD = ("", "cam1:cars", "cam 1", "-x", ".hidden", "_x", "a/b", "a*", "a?", "a[1]", "x" * 129, "caméra", "a\nb", "a\x00")


@pytest.mark.parametrize("name", GOOD)
def test_names_in_use_are_valid(name: str) -> None:
    assert validate_name("camera id", name, "camera_id") == name
    assert is_valid_name("data set", "x" * 128)


@pytest.mark.parametrize("name", BAD)
def test_names_that_could_break_keys_are_refused(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name("camera id", name, "spec.camera_id")
    status = info.value.status()
    assert info.value.reason == "INVALID_NAME" and [v.field for v in info.value.violations] == ["spec.camera_id"]
    assert "camera id" in status.message and len(status.message) < 400


def test_aliases_take_no_dots() -> None:
    assert validate_name(ALIAS, "champion_2-b", "alias") == "champion_2-b"
    with pytest.raises(InvalidName):
        validate_name(ALIAS, "champ.ion", "alias")


def test_registry_and_trainer_check_names_at_the_edge() -> None:
    assert check_name("car-detector") == "car-detector" and check_alias("champion") == "champion"
    for bad in ("car:detector", "x" * 129):
        with pytest.raises(InvalidName):
            check_name(bad)
    with pytest.raises(InvalidName):
        check_alias("prod:x")
    with pytest.raises(InvalidArgument, match="reserved"):
        check_alias("latest")
    for request in (
        training_pb2.StartTrainingRequest(dataset="apollo:2", model_name="car:detector"),
        training_pb2.StartTrainingRequest(dataset="apol lo:2"),
    ):
        with pytest.raises(InvalidName):
            train_request(request)
    ok = train_request(training_pb2.StartTrainingRequest(dataset="apollo-snap:2", model_name="car-detector"))
    assert (ok.dataset, ok.model_name) == ("apollo-snap:2", "car-detector")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("rtsp://user:pass@cam.local:554/live", "rtsp://user:***@cam.local:554/live"),
        ("http://u:p@ss:w@10.0.0.2/x.mjpg", "http://u:***@10.0.0.2/x.mjpg"),
        ("cannot open stream rtsp://a:b@h/s within 2000 ms", "cannot open stream rtsp://a:***@h/s within 2000 ms"),
        ("postgresql://carmesh:secret@127.0.0.1:5432/db", "postgresql://carmesh:***@127.0.0.1:5432/db"),
        ("rtsp://cam.local/live", "rtsp://cam.local/live"),
        ("http://10.0.0.2:8080/a@b", "http://10.0.0.2:8080/a@b"),
    ],
)
def test_url_passwords_are_redacted(text: str, shown: str) -> None:
    assert redact_url(text) == shown
