"""Validation of counting lines and zones (hostile input) and their geometry."""

from __future__ import annotations

import math

import pytest

from tracking.geometry import (
    MAX_ITEMS_PER_CAMERA,
    LayoutError,
    parse_line_spec,
    parse_zone_spec,
    validate_layout,
)


def test_a_valid_layout_is_built() -> None:
    layout = validate_layout([("gate", (0, 10), (100, 10))], [("bay", [(0, 0), (50, 0), (50, 50)])], 640, 360)
    assert layout.lines[0].name == "gate"
    assert layout.zones[0].polygon == ((0.0, 0.0), (50.0, 0.0), (50.0, 50.0))


def test_the_in_side_is_the_normal_turned_clockwise_on_screen() -> None:
    layout = validate_layout([("h", (0, 10), (100, 10)), ("v", (50, 0), (50, 100))], [], 640, 360)
    horizontal, vertical = layout.lines
    assert horizontal.signed_distance_px(20, 30) == pytest.approx(20)  # below a left-to-right line: in
    assert horizontal.signed_distance_px(20, 0) == pytest.approx(-10)
    assert vertical.signed_distance_px(40, 5) == pytest.approx(10)  # left of a downward line: in
    assert horizontal.along(50, 99) == pytest.approx(0.5)


def test_zone_distance_is_signed_by_inside() -> None:
    layout = validate_layout([], [("bay", [(0, 0), (100, 0), (100, 100), (0, 100)])], 640, 360)
    zone = layout.zones[0]
    assert zone.signed_distance_px(50, 40) == pytest.approx(40)
    assert zone.signed_distance_px(150, 50) == pytest.approx(-50)


@pytest.mark.parametrize(
    ("lines", "zones", "field"),
    [
        ([("gate", (0, 0), (700, 0))], [], "lines[0].end"),  # outside the frame
        ([("gate", (-1, 0), (10, 0))], [], "lines[0].start"),
        ([("gate", (math.nan, 0), (10, 0))], [], "lines[0].start"),
        ([("gate", (math.inf, 0), (10, 0))], [], "lines[0].start"),
        ([("gate", (5, 5), (6, 6))], [], "lines[0].end"),  # too short
        ([("gate", (5, 5, 5), (60, 6))], [], "lines[0].start"),
        ([("Gate!", (0, 0), (10, 0))], [], "lines[0].name"),
        ([("", (0, 0), (10, 0))], [], "lines[0].name"),
        ([("a" * 33, (0, 0), (10, 0))], [], "lines[0].name"),
        ([("gate", (0, 0), (10, 0)), ("gate", (0, 5), (10, 5))], [], "lines[1].name"),
        ([("bay", (0, 0), (10, 0))], [("bay", [(0, 0), (9, 0), (9, 9)])], "zones[0].name"),
        ([], [("bay", [(0, 0), (9, 0)])], "zones[0].polygon"),
        ([], [("bay", [(0, 0), (9, 0), (18, 0)])], "zones[0].polygon"),  # no area
        ([], [("bow", [(0, 0), (10, 10), (10, 0), (0, 10)])], "zones[0].polygon"),  # self-crossing
        ([], [("bay", [(0, 0), (10, 0), (10, 400)])], "zones[0].polygon[2]"),
        ([], [("bay", [(i, i % 2) for i in range(40)])], "zones[0].polygon"),  # too many vertices
    ],
)
def test_bad_layouts_name_the_field(lines: list, zones: list, field: str) -> None:
    with pytest.raises(LayoutError) as caught:
        validate_layout(lines, zones, 640, 360)
    assert caught.value.field == field


def test_at_most_n_items_per_camera() -> None:
    lines = [(f"l{i}", (0, i), (100, i)) for i in range(MAX_ITEMS_PER_CAMERA + 1)]
    with pytest.raises(LayoutError, match="at most"):
        validate_layout(lines, [], 640, 360)
    validate_layout(lines[:-1], [], 640, 360)


def test_command_line_specs() -> None:
    assert parse_line_spec("gate:320,300,320,150") == ("gate", (320.0, 300.0), (320.0, 150.0))
    assert parse_line_spec("1,2,3,4")[0] == "line"
    assert parse_zone_spec("bay:0,0,10,0,10,10") == ("bay", [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)])
    for bad in ("gate:1,2,3", "gate:a,b,c,d"):
        with pytest.raises(LayoutError):
            parse_line_spec(bad)
    for bad in ("bay:1,2,3,4", "bay:1,2,3,4,5,6,7"):
        with pytest.raises(LayoutError):
            parse_zone_spec(bad)
