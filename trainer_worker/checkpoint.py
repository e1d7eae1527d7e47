"""Reading a user's Ultralytics ``.pt`` without unpickling arbitrary objects.

An Ultralytics checkpoint pickles the model object itself, and kyolo's converter loads it with
``torch.load(weights_only=False)``: any ``.pt`` a request names could run code in the worker.
Here torch's weights-only unpickler reads it instead, and every module class the file names
(``ultralytics.*``, ``torch.nn.modules.*``) is rebuilt as an inert :class:`ModuleRecord` that
only keeps its attributes: no Ultralytics or torch.nn code runs, and ultralytics need not be
installed. Any other global (``os.system``, ``builtins.eval``...) is refused before loading. The
tensors are then read from the records as ``Module.state_dict()`` would order them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Module paths whose classes a YOLOv8 checkpoint pickles; each becomes a ModuleRecord, never imported.
MODULE_PREFIXES = ("ultralytics.", "torch.nn.modules.")
# Ultralytics checkpoints keep the trained model under "model" and its EMA under "ema" (kyolo's order).
_MODEL_KEYS = ("model", "ema")


class CheckpointError(ValueError):
    """An Ultralytics checkpoint that cannot be used: refused (unsafe contents) or not fitting the model."""


class ModuleRecord:
    """What a pickled module or Ultralytics object holds, without its class: its attribute dict.

    The weights-only unpickler creates it (``__new__``, or a call for reduce-style pickles) and
    hands it the pickled state (``__setstate__``); nothing else of the original class exists.
    """

    def __new__(cls, *args: object, **kwargs: object) -> ModuleRecord:
        record = super().__new__(cls)
        record.state = {}
        return record

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    state: dict[str, Any]

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {}


def read_checkpoint(path: Path) -> OrderedDict[str, np.ndarray]:
    """The checkpoint's tensors by state-dict name (float32, CPU), in the order the model holds them."""
    import torch
    from torch import serialization

    try:
        names = serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # not a zip written by torch.save, truncated...
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint ({type(exc).__name__})") from None
    refused = sorted(name for name in names if not name.startswith(MODULE_PREFIXES))
    if refused:
        raise CheckpointError(
            f"{path.name} is refused: it would run {', '.join(refused[:5])} when loaded "
            "(a checkpoint may hold only tensors and model classes)"
        )
    aliases: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [(ModuleRecord, name) for name in names]
    try:
        with serialization.safe_globals(aliases):
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler's refusal of anything it does not allow, or a broken file
        raise CheckpointError(f"{path.name} is refused by the weights-only loader: {type(exc).__name__}") from None
    state = _state_dict(loaded, torch)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, value in state.items():
        if name.endswith("num_batches_tracked") or not torch.is_tensor(value):
            continue
        out[name] = value.detach().cpu().float().numpy()
    if not out:
        raise CheckpointError(f"{path.name} holds no tensors")
    return out


def _state_dict(loaded: object, torch: Any) -> dict[str, Any]:
    """A name -> tensor map from an Ultralytics checkpoint, a pickled module, or a plain state dict."""
    if isinstance(loaded, ModuleRecord):
        out: dict[str, Any] = OrderedDict()
        _walk(loaded, "", out)
        return out
    if isinstance(loaded, dict):
        for key in _MODEL_KEYS:
            if loaded.get(key) is not None:
                return _state_dict(loaded[key], torch)
        if loaded.get("state_dict") is not None:
            return _state_dict(loaded["state_dict"], torch)
        if any(torch.is_tensor(v) for v in loaded.values()):
            return loaded
    raise CheckpointError(
        f"no model in the checkpoint: expected an Ultralytics checkpoint, a module or a state dict, got {type(loaded)}"
    )


def _walk(module: ModuleRecord, prefix: str, out: dict[str, Any]) -> None:
    """``nn.Module.state_dict()``'s order: parameters, persistent buffers, then each child."""
    state = module.state
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value
    transient = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in transient:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, ModuleRecord):
            _walk(child, f"{prefix}{name}.", out)
