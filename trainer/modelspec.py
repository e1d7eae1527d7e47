"""What a trained model is (:class:`ModelSpec`) and the YOLOv8 head geometry it implies.

Free of TensorFlow: the daemon validates requests and evaluates exported models with it; the
worker (``trainer_worker.model``) builds the Keras body from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STRIDES = (8, 16, 32)
REG_MAX = 16
# The input size must divide by the coarsest stride so every pyramid level tiles exactly.
SIZE_MULTIPLE = 32
PRESETS = ("n", "s")


class ModelSpecError(ValueError):
    """A model spec that cannot be built (unknown preset, bad size, no classes)."""


@dataclass(frozen=True)
class ModelSpec:
    """What a trained model is: architecture preset, classes and the exported input size."""

    preset: str
    class_names: tuple[str, ...]
    input_width: int
    input_height: int

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ModelSpecError(f"unknown model preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        if not self.class_names or any(not n.strip() for n in self.class_names):
            raise ModelSpecError("a model needs at least one non-empty class name")
        if len(set(self.class_names)) != len(self.class_names):
            raise ModelSpecError(f"class names must be unique, got {list(self.class_names)}")
        for label, value in (("input_width", self.input_width), ("input_height", self.input_height)):
            if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
                raise ModelSpecError(f"{label} {value} must be a positive multiple of {SIZE_MULTIPLE}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_height, self.input_width

    def anchors(self, height: int | None = None, width: int | None = None) -> int:
        """Anchor points of the head for an input of ``height`` x ``width`` (default: the export size)."""
        h = height or self.input_height
        w = width or self.input_width
        return sum((h // s) * (w // s) for s in STRIDES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "class_names": list(self.class_names),
            "input_width": self.input_width,
            "input_height": self.input_height,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            preset=str(data["preset"]),
            class_names=tuple(str(n) for n in data["class_names"]),
            input_width=int(data["input_width"]),
            input_height=int(data["input_height"]),
        )
