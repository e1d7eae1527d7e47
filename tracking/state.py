"""A camera tracker's whole state as plain JSON, for checkpoints stored with consumed offsets.

A restart, or a camera's partition moving to another replica, restores the checkpoint and
carries on from the next offset exactly as if nothing had happened: the same ids, the same
Kalman states, the same sides of every line. Nothing here is pickled: ``trackers``' objects
are rebuilt field by field, only for the classes listed in ``_CLASSES``, from JSON numbers,
strings, lists and arrays; anything else in a checkpoint is refused.

This walks ``trackers``' attributes, which are not its public API: the version is pinned in
the ``tracker`` extra (<3) and tests/tracking/test_state.py proves that a restored tracker
continues frame for frame like one that never stopped.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from tracking.counting import Direction, _TrackState

if TYPE_CHECKING:
    from tracking.core import CameraTracker

FORMAT_VERSION = 1
# Every class a ByteTrack state holds, by module and name; nothing else is instantiated.
_CLASSES = {
    "trackers.core.bytetrack.tracklet:ByteTrackTracklet",
    "trackers.utils.state_representations:XYXYStateEstimator",
    "trackers.utils.state_representations:XCYCSRStateEstimator",
    "trackers.utils.kalman_filter:KalmanFilter",
    "trackers.utils.motion_models:KalmanMotionModel",
    "trackers.utils.motion_models:ScalableProcessNoise",
}
# The tracker's own fields that change as it runs; the rest comes from TrackerConfig.
_BYTETRACK_FIELDS = ("tracks", "_next_track_id", "_last_timestamp")


class StateError(ValueError):
    """A checkpoint this code cannot restore (another format, a class not allowed, bad values)."""


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return {"float": repr(value)}  # JSON has no inf/nan
        return value
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return _encode(value.item())
    if isinstance(value, list | tuple):
        return {"list": [_encode(v) for v in value]}
    kind = f"{type(value).__module__}:{type(value).__qualname__}"
    if kind not in _CLASSES:
        raise StateError(f"cannot checkpoint a {kind}")
    return {"object": kind, "fields": {k: _encode(v) for k, v in vars(value).items()}}


def _decode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if not isinstance(value, dict):
        raise StateError(f"unexpected {type(value).__name__} in a checkpoint")
    if "float" in value:
        if value["float"] not in ("inf", "-inf", "nan"):
            raise StateError("a non-finite float must be inf, -inf or nan")
        return float(value["float"])
    if "ndarray" in value:
        if value.get("dtype") not in ("float64", "int64", "bool", "float32", "int32"):
            raise StateError(f"array dtype {value.get('dtype')!r} not allowed")
        array = np.array(value["ndarray"], dtype=value["dtype"])
        return array.reshape(value["shape"])
    if "list" in value:
        return [_decode(v) for v in value["list"]]
    kind = value.get("object")
    if kind not in _CLASSES:
        raise StateError(f"class {kind!r} is not allowed in a checkpoint")
    module, name = kind.split(":")
    cls = getattr(importlib.import_module(module), name)
    obj = object.__new__(cls)
    for key, field in value["fields"].items():
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("__"):
            raise StateError(f"field name {key!r} not allowed in a checkpoint")
        setattr(obj, key, _decode(field))
    return obj


def dump(tracker: CameraTracker) -> dict[str, Any]:
    """Everything that changes as the tracker runs, as JSON-able values."""
    bytetrack = {name: _encode(getattr(tracker._bytetrack, name)) for name in _BYTETRACK_FIELDS}
    return {
        "format": FORMAT_VERSION,
        "bytetrack": bytetrack,
        "last_seq": tracker._last_seq,
        "clock_s": tracker._clock_s,
        "tracks": {
            str(tid): [info.first_seq, info.first_s, info.last_seq, info.last_s, sorted(info.classes.items())]
            for tid, info in tracker._tracks.items()
        },
        "counter": {
            str(tid): {
                "line_side": state.line_side,
                "line_anchor": {k: list(v) for k, v in state.line_anchor.items()},
                "inside": state.inside,
            }
            for tid, state in tracker.counter._tracks.items()
        },
        "totals": [[name, str(direction), cid, n] for (name, direction, cid), n in sorted(tracker.totals.items())],
        "stats": vars(tracker.stats),
    }


def restore(tracker: CameraTracker, state: dict[str, Any]) -> None:
    """Loads a ``dump`` into a tracker freshly built with the same layout and config."""
    from tracking.core import TrackerStats, _TrackInfo

    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise StateError(
            f"checkpoint format {state.get('format') if isinstance(state, dict) else None!r} is not {FORMAT_VERSION}"
        )
    try:
        for name in _BYTETRACK_FIELDS:
            setattr(tracker._bytetrack, name, _decode(state["bytetrack"][name]))
        tracker._last_seq = state["last_seq"]
        tracker._clock_s = state["clock_s"]
        tracker._tracks = {
            int(tid): _TrackInfo(int(a), float(b), int(c), float(d), Counter({int(k): int(n) for k, n in votes}))
            for tid, (a, b, c, d, votes) in state["tracks"].items()
        }
        tracker.counter._tracks = {
            int(tid): _TrackState(
                {str(k): int(v) for k, v in s["line_side"].items()},
                {str(k): (float(v[0]), float(v[1]), float(v[2])) for k, v in s["line_anchor"].items()},
                {str(k): bool(v) for k, v in s["inside"].items()},
            )
            for tid, s in state["counter"].items()
        }
        tracker.counter.totals = Counter(
            {(str(name), Direction(direction), int(cid)): int(n) for name, direction, cid, n in state["totals"]}
        )
        tracker.stats = TrackerStats(**{k: int(v) for k, v in state["stats"].items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"a damaged checkpoint: {exc}") from exc
