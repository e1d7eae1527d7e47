"""Generates the Triton Inference Server ``config.pbtxt`` for a registered ONNX detector."""

from __future__ import annotations

from registry_gateway.onnx_check import DetectorSpec, TensorSpec

_TRITON_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}


def _tensor(spec: TensorSpec, batched: bool) -> str:
    # With max_batch_size > 0 Triton adds the batch dimension itself, so it is left out of dims.
    dims = spec.shape[1:] if batched else spec.shape
    dims_text = ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims)
    return (
        "  {\n"
        f'    name: "{spec.name}"\n'
        f"    data_type: {_TRITON_TYPES.get(spec.type, 'TYPE_INVALID')}\n"
        f"    dims: [ {dims_text} ]\n"
        "  }"
    )


def triton_config(model_name: str, spec: DetectorSpec, max_batch_size: int) -> str:
    """The config for Triton's ``onnxruntime_onnx`` platform: dynamic batching when the
    model's batch dimension is dynamic, otherwise ``max_batch_size: 0`` and full dims."""
    batched = spec.dynamic_batch
    lines = [
        f'name: "{model_name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size if batched else 0}",
        "input [",
        ",\n".join(_tensor(t, batched) for t in spec.inputs),
        "]",
        "output [",
        ",\n".join(_tensor(t, batched) for t in spec.outputs),
        "]",
    ]
    if batched:
        lines.append("dynamic_batching { }")
    lines.append("instance_group [ { kind: KIND_AUTO } ]")
    return "\n".join(lines) + "\n"
