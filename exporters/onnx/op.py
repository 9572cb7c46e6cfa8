"""The `mmserve.MultiMax` ONNX operator: identity, schema and shape inference.

One node per MultiMax (DESIGN.md, "The ONNX custom op"):

    domain "mmserve", op type "MultiMax", since version 1
    inputs   X     float tensor of any rank
             mask  optional bool tensor, True = masked out, broadcastable to X
    output   Y     probabilities softmax(seglu(X)) along `axis`, masked entries exactly 0, fully masked
                   rows all 0 (never NaN)
    attrs    axis  int, default -1
             ranges, ts  floats, length 2N (the trained modulator constants of order N)

Registering the schema with `onnx.defs` is what lets onnxscript build `Opset("mmserve", 1).MultiMax(...)`
inside the exporter and lets `onnx.checker` / shape inference understand graphs whose nodes carry no
function body (the `--no-function-body` export meant for runtimes with a plugin kernel).
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "OP_VERSION",
    "MASKED_OVERLOAD",
    "FLOAT_TYPES",
    "register_schema",
    "is_multimax_node",
]

DOMAIN = "mmserve"
OP_TYPE = "MultiMax"
OP_VERSION = 1
MASKED_OVERLOAD = "masked"
"""ONNX (IR >= 10) function overload used by nodes that pass a mask: the masked body needs a Where on
an input the unmasked body does not have, and one FunctionProto cannot branch on an optional input."""

FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)")

_DOC = (
    "MultiMax (Zhou, Fritz & Keuper, ICML 2024): Y = Softmax(seglu(X), axis) with "
    "seglu(x) = x + sum_n ts[2n-2]*relu(ranges[2n-2]-x)^n + ts[2n-1]*relu(x-ranges[2n-1])^n. "
    "Optional bool mask (True = masked) is applied after the modulator; masked entries are 0 and "
    "fully masked rows are all 0."
)


def _infer(ctx: "onnx.shape_inference.InferenceContext") -> None:
    """Y has X's element type and shape (the op is elementwise-then-normalise along one axis)."""
    if ctx.get_num_inputs() >= 1 and ctx.has_input(0):
        input_type = ctx.get_input_type(0)
        if input_type is not None:
            ctx.set_output_type(0, input_type)


def _build_schema() -> OpSchema:
    optional = OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        OP_TYPE,
        DOMAIN,
        OP_VERSION,
        _DOC,
        inputs=[
            OpSchema.FormalParameter("X", "T", "scores"),
            OpSchema.FormalParameter("mask", "tensor(bool)", "True = masked out", param_option=optional),
        ],
        outputs=[OpSchema.FormalParameter("Y", "T", "probabilities")],
        type_constraints=[("T", list(FLOAT_TYPES), "floating-point tensors")],
        attributes=[
            OpSchema.Attribute("axis", onnx.helper.make_attribute("axis", -1), "normalisation axis"),
            OpSchema.Attribute("ranges", OpSchema.AttrType.FLOATS, "thresholds, 2N floats"),
            OpSchema.Attribute("ts", OpSchema.AttrType.FLOATS, "slopes, 2N floats"),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def register_schema() -> None:
    """Register mmserve::MultiMax v1 with onnx.defs once per process (idempotent)."""
    if onnx.defs.has(OP_TYPE, OP_VERSION, DOMAIN):
        return
    onnx.defs.register_schema(_build_schema())


def is_multimax_node(node) -> bool:
    """True for an onnx NodeProto or onnx_ir Node that is an mmserve.MultiMax."""
    return node.domain == DOMAIN and node.op_type == OP_TYPE
