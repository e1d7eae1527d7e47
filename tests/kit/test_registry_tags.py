"""The evaluation key the trainer writes is the one the promotion gate reads back."""

from kit.registry_tags import EvalKey


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
