"""The carmesh tags as the writers (registry_gateway's import, the trainer) write them are what the
readers (registry_gateway, the promotion gate) read back; malformed tags read as empty."""

import json

from kit.registry_tags import (
    ONNX_FILE,
    TAG_CLASS_NAMES,
    TAG_FAMILY,
    TAG_INPUT_HEIGHT,
    TAG_INPUT_WIDTH,
    TAG_ONNX_PATH,
    TAG_PREFIX,
    TAG_SHA256,
    TAG_SIZE_BYTES,
    EvalKey,
    VersionTags,
    alias_history_key,
    alias_history_tag,
    merged_eval_tag,
    parse_alias_history,
    parse_evaluations,
)


def test_eval_key_round_trips_and_sorts_dont_care_classes() -> None:
    key = EvalKey.of("apollo-cars:1", ["car", "van"], ["truck", "bus"])
    assert key.key == "apollo-cars:1|car,van|bus,truck"
    assert EvalKey.parse(key.key) == key
    assert str(key) == "apollo-cars:1 (car,van, don't care bus,truck)"


def test_eval_key_without_dont_care_classes() -> None:
    key = EvalKey.parse("folder:/data/x|car|")
    assert key == EvalKey("folder:/data/x", ("car",), ())
    assert str(key) == "folder:/data/x (car)"
    assert EvalKey.of("folder:/data/x", ["car"]).key == "folder:/data/x|car|"


def test_version_tags_are_strings_and_read_back() -> None:
    tags = VersionTags("yolov8", ("car", "van"), 640, 352, "ab" * 32, 12345).tags()
    assert tags == {
        TAG_FAMILY: "yolov8",
        TAG_CLASS_NAMES: '["car", "van"]',
        TAG_INPUT_WIDTH: "640",
        TAG_INPUT_HEIGHT: "352",
        TAG_SHA256: "ab" * 32,
        TAG_SIZE_BYTES: "12345",
        TAG_ONNX_PATH: ONNX_FILE,
    }
    assert all(key.startswith(TAG_PREFIX) for key in tags)
    assert VersionTags.parse(tags) == VersionTags("yolov8", ("car", "van"), 640, 352, "ab" * 32, 12345)


def test_malformed_version_tags_read_as_empty() -> None:
    # Tags edited by hand in the MLflow UI must not make every read of the version fail.
    parsed = VersionTags.parse(
        {TAG_CLASS_NAMES: "car,van", TAG_INPUT_WIDTH: "wide", TAG_SIZE_BYTES: "", TAG_ONNX_PATH: ""}
    )
    assert parsed == VersionTags("", (), 0, 0, "", 0, ONNX_FILE)
    assert VersionTags.parse({TAG_CLASS_NAMES: '{"0": "car"}'}).class_names == ()
    assert VersionTags.parse({}).onnx_path == ONNX_FILE


def test_merged_eval_tag_keeps_other_keys_and_rounds() -> None:
    first = merged_eval_tag(None, "a:1|car|", {"map50": 0.123456789, "images": 10})
    both = merged_eval_tag(first, "b:2|car|", {"map50": 0.5})
    again = merged_eval_tag(both, "a:1|car|", {"map50": 0.25})
    assert json.loads(again) == {"a:1|car|": {"map50": 0.25}, "b:2|car|": {"map50": 0.5}}
    assert json.loads(first) == {"a:1|car|": {"map50": 0.123457, "images": 10.0}}
    # A malformed existing tag is replaced rather than failing the evaluation that is being recorded.
    assert json.loads(merged_eval_tag("not json", "k", {"map50": 1})) == {"k": {"map50": 1.0}}
    assert json.loads(merged_eval_tag("[1, 2]", "k", {"map50": 1})) == {"k": {"map50": 1.0}}


def test_parse_evaluations_reads_what_the_trainer_writes() -> None:
    written = merged_eval_tag(None, "a:1|car|", {"map50": 0.7, "map50_95": 0.4})
    assert parse_evaluations(written) == {"a:1|car|": {"map50": 0.7, "map50_95": 0.4}}
    # Entries without a map50 cannot be compared by the gate; garbage reads as no evaluation.
    assert parse_evaluations('{"a": {"map50_95": 0.4}, "b": 3, "c": {"map50": 0.1}}') == {"c": {"map50": 0.1}}
    assert parse_evaluations(None) == parse_evaluations("") == parse_evaluations("{") == parse_evaluations("[]") == {}


def test_alias_history_round_trips() -> None:
    assert alias_history_key("champion") == "carmesh.alias_history.champion"
    assert parse_alias_history(alias_history_tag(["3", "5", "4"])) == ["3", "5", "4"]
    assert parse_alias_history(None) == parse_alias_history("") == parse_alias_history('{"v": 1}') == []
    assert parse_alias_history("[3, 5]") == ["3", "5"]
