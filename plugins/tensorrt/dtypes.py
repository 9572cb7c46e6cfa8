"""One table for the element types the plugin meets, keyed by TensorRT's `DataType` member names.

TensorRT names types one way (`trt.DataType.FLOAT`, the autotune grammar's "FP32"), Triton another
(signature strings "*fp32"), torch a third; the plugin, the engine runner and the tests all convert
through this table, which needs none of those libraries to be imported. Autotune type strings follow
https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/tensorrt.plugin/trt_plugin_autotune/AutoTuneCombination.html
("FP32", "FP16", otherwise the `trt.DataType` member name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ElementType",
    "ELEMENT_TYPES",
    "KERNEL_IO_TYPES",
    "MASK_TYPE",
    "PARAMS_TYPE",
    "element_type",
    "trt_type_name",
    "torch_dtype_for",
    "numpy_dtype_for",
]


@dataclass(frozen=True)
class ElementType:
    trt_name: str  # member of tensorrt.DataType
    autotune: str  # token in AutoTuneCombination's io_types grammar
    triton_pointer: str  # Triton signature string of a pointer to this type
    torch: str  # attribute of the torch module
    numpy: str  # numpy dtype name
    itemsize: int


ELEMENT_TYPES: dict[str, ElementType] = {
    "FLOAT": ElementType("FLOAT", "FP32", "*fp32", "float32", "float32", 4),
    "HALF": ElementType("HALF", "FP16", "*fp16", "float16", "float16", 2),
    "BF16": ElementType("BF16", "BF16", "*bf16", "bfloat16", "float32", 2),
    # TensorRT stores BOOL as one byte per element; Triton's *i1 pointers read one byte per element.
    "BOOL": ElementType("BOOL", "BOOL", "*i1", "bool", "bool", 1),
    "INT32": ElementType("INT32", "INT32", "*i32", "int32", "int32", 4),
    "INT64": ElementType("INT64", "INT64", "*i64", "int64", "int64", 8),
    "INT8": ElementType("INT8", "INT8", "*i8", "int8", "int8", 1),
}

# The data types the fused kernel reads and writes for X / Y (it always computes in float32).
KERNEL_IO_TYPES: tuple[str, ...] = ("FLOAT", "HALF")
MASK_TYPE = "BOOL"
PARAMS_TYPE = "FLOAT"  # the packed modulator constants (ranges then ts), float32 in every engine


def trt_type_name(dtype: Any) -> str:
    """The `tensorrt.DataType` member name of `dtype` (a member, or already a name such as "HALF")."""
    if isinstance(dtype, str):
        name = dtype.split(".")[-1].upper()
    else:
        name = getattr(dtype, "name", None) or str(dtype).split(".")[-1]
    aliases = {"FP32": "FLOAT", "FLOAT32": "FLOAT", "FP16": "HALF", "FLOAT16": "HALF", "BFLOAT16": "BF16"}
    return aliases.get(name.upper(), name.upper())


def element_type(dtype: Any) -> ElementType:
    """Look up a TensorRT data type (member or name); unknown types get an error that lists the known."""
    name = trt_type_name(dtype)
    try:
        return ELEMENT_TYPES[name]
    except KeyError:
        raise TypeError(f"unsupported TensorRT data type {name!r} (known: {', '.join(ELEMENT_TYPES)})") from None


def torch_dtype_for(dtype: Any):
    """torch dtype for a TensorRT data type, for allocating engine I/O buffers."""
    import torch

    return getattr(torch, element_type(dtype).torch)


def numpy_dtype_for(dtype: Any):
    import numpy as np

    return np.dtype(element_type(dtype).numpy)
