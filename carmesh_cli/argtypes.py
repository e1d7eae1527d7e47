"""argparse value types: each turns a bad value into a usage error that says what is expected."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def fps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of frames per second") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} must be >= 0 frames per second (0: as fast as the source goes)")
    return value


def name(text: str) -> str:
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("must not be blank")
    return value


def names(text: str) -> list[str]:
    """``a,b,c`` (blanks ignored); used for class names, cameras and data sets."""
    values = [item.strip() for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated names such as car,truck")
    return values


def timestamp(text: str) -> datetime:
    """ISO 8601 (``2026-11-28``, ``2026-11-28T06:00:00+01:00``); no zone means UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time such as 2026-11-28T06:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def class_map(text: str) -> dict[str, str]:
    """``Van=car,Truck=truck,DontCare=``: rename classes; an empty target drops the class."""
    mapping: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        source, sep, target = item.partition("=")
        source, target = source.strip(), target.strip()
        if not sep or not source:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not SRC=DST (an empty DST drops the class)")
        if source in mapping:
            raise argparse.ArgumentTypeError(f"class {source!r} is mapped twice")
        mapping[source] = target
    if not mapping:
        raise argparse.ArgumentTypeError("expected SRC=DST[,SRC=DST...]")
    return mapping
