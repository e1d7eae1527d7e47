"""KServe v2 tensors <-> numpy: reads a request's input tensors (typed contents or raw bytes) with every
size checked before anything is allocated, and writes output tensors as raw little-endian bytes."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.errors import BadTensor

# The protocol's datatypes carmesh reads or writes, and their little-endian numpy types.
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "INT32": np.dtype("<i4"),
}
BYTES = "BYTES"
# A BYTES element on the wire: a 4-byte little-endian length, then the bytes.
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Input:
    """One input tensor of a request, with its raw bytes when the request sent them that way."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    message: Any  # ModelInferRequest.InferInputTensor
    raw: bytes | None


def inputs_of(request: Any) -> list[Input]:
    """The request's inputs; ``raw_input_contents``, when used, must hold one entry per input."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadTensor(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send one per input, in order"
        )
    found = []
    for index, tensor in enumerate(request.inputs):
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            raise BadTensor(f"input {tensor.name!r} has a negative dimension in shape {list(shape)}")
        if raw and tensor.HasField("contents"):
            raise BadTensor(f"input {tensor.name!r} has both contents and raw_input_contents: send one")
        found.append(Input(tensor.name, tensor.datatype, shape, tensor, raw[index] if raw else None))
    return found


def one_input(request: Any, name: str, datatype: str) -> Input:
    """The request's only input, which must be ``name`` of ``datatype``."""
    inputs = inputs_of(request)
    if len(inputs) != 1 or inputs[0].name != name:
        given = ", ".join(repr(i.name) for i in inputs) or "none"
        raise BadTensor(f"model {request.model_name!r} takes one input {name!r}; the request has {given}")
    tensor = inputs[0]
    if tensor.datatype != datatype:
        raise BadTensor(f"input {name!r} must be {datatype}, not {tensor.datatype!r}")
    return tensor


def float_array(tensor: Input, expected: Sequence[int | None]) -> np.ndarray:
    """An FP32 input as a float32 array of ``expected`` shape (None: any size), finite values only."""
    shape = tensor.shape
    if len(shape) != len(expected) or any(e is not None and e != d for e, d in zip(expected, shape, strict=True)):
        wanted = ["N" if e is None else e for e in expected]
        raise BadTensor(f"input {tensor.name!r} has shape {list(shape)}; the model takes {wanted}")
    count = math.prod(shape)
    if tensor.raw is not None:
        if len(tensor.raw) != count * 4:
            raise BadTensor(
                f"input {tensor.name!r} of shape {list(shape)} needs {count * 4} bytes of FP32; "
                f"raw_input_contents has {len(tensor.raw)}"
            )
        array = np.frombuffer(tensor.raw, dtype=DTYPES["FP32"]).astype(np.float32)
    else:
        values = tensor.message.contents.fp32_contents
        if len(values) != count:
            raise BadTensor(
                f"input {tensor.name!r} of shape {list(shape)} needs {count} fp32_contents values; got {len(values)}"
            )
        array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        raise BadTensor(f"input {tensor.name!r} holds NaN or infinite values")
    return array.reshape(shape)


def byte_elements(tensor: Input) -> list[bytes]:
    """A BYTES input's elements; its shape is [N] or [N, 1]."""
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise BadTensor(f"input {tensor.name!r} has shape {list(shape)}; send encoded images as [N] or [N, 1]")
    count = shape[0]
    if tensor.raw is None:
        elements = list(tensor.message.contents.bytes_contents)
        if len(elements) != count:
            raise BadTensor(f"input {tensor.name!r} of shape {list(shape)} has {len(elements)} bytes_contents")
        return elements
    data, offset, elements = tensor.raw, 0, []
    while offset < len(data):
        if len(data) - offset < _LENGTH.size:
            raise BadTensor(f"input {tensor.name!r}: raw BYTES end inside an element's 4-byte length")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if size > len(data) - offset:
            raise BadTensor(f"input {tensor.name!r}: a raw BYTES element claims {size} bytes past the end of the data")
        elements.append(bytes(data[offset : offset + size]))
        offset += size
        if len(elements) > count:
            break
    if len(elements) != count:
        raise BadTensor(
            f"input {tensor.name!r} of shape {list(shape)} needs {count} elements; raw_input_contents holds "
            f"{'more' if len(elements) > count else len(elements)}"
        )
    return elements


def requested_outputs(request: Any, available: Sequence[str]) -> list[str]:
    """The outputs to send, in the model's order: those the request names, or all of them."""
    names = [output.name for output in request.outputs]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise BadTensor(f"model {request.model_name!r} has no output {unknown}; its outputs: {', '.join(available)}")
    return [name for name in available if not names or name in names]


def add_output(response: Any, name: str, array: np.ndarray, datatype: str) -> None:
    """Appends one output as raw little-endian bytes (how Triton answers, and what tritonclient reads)."""
    tensor = response.outputs.add()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    response.raw_output_contents.append(np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes())
