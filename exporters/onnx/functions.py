"""Model-local FunctionProtos for `mmserve.MultiMax`: bodies of standard ONNX ops.

A stock runtime (onnxruntime) has no MultiMax kernel; it inlines these bodies instead. Runtimes with
a plugin kernel (TensorRT) take the node as it is, so `--no-function-body` leaves them out.

Two overloads exist because the masked node has an input the unmasked one lacks:

    ""        Y = Softmax(seglu(X), axis)
    "masked"  Y = Where(mask, 0, Softmax(Where(mask, -inf, seglu(X)), axis))

The final Where is what makes a fully masked row all zeros (Softmax of a row of -inf is NaN), the
same contract as `mmserve.ops.multimax`. The bodies read the trained constants through attribute
references (`Constant<value_floats=@ranges>`, `Softmax<axis=@axis>`), so one function serves every
node of the model and the runtime constant-folds the per-node scalars after inlining.

Bodies are generated for the model's order N, term by term in the order of `seglu_reference`
(x + t_b1*relu(r_b1-x) + t_d1*relu(x-r_d1) + t_b2*relu(r_b2-x)^2 + ...), so that onnxruntime and
torch round the same way. (Rewrites with fewer or cheaper passes were measured on onnxruntime's CPU
provider and were not faster; benchmarks/bench_onnx_cpu.py keeps them as experiments.)
"""

from __future__ import annotations

from typing import Iterable

import onnx_ir as ir
from onnx_ir.tape import Tape

from .op import DOMAIN, MASKED_OVERLOAD, OP_TYPE

__all__ = ["attribute_params", "reference_modulator", "build_multimax_function", "multimax_functions", "attach_functions", "remove_functions", "scalar"]

_FLOATS = ir.AttributeType.FLOATS
_INT = ir.AttributeType.INT


def scalar(tape: Tape, vector: ir.Value, index: int) -> ir.Value:
    """vector[index] as a 0-d tensor (Gather with a scalar index)."""
    idx = tape.op("Constant", [], attributes={"value_int": index})
    return tape.op("Gather", [vector, idx], attributes={"axis": 0})


def attribute_params(tape: Tape, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """The function's `ranges` and `ts` attributes as tensors of x's dtype (every modulator body starts so)."""
    ranges = tape.op("CastLike", [tape.op("Constant", [], attributes={"value_floats": ir.RefAttr("value_floats", "ranges", _FLOATS)}), x])
    ts = tape.op("CastLike", [tape.op("Constant", [], attributes={"value_floats": ir.RefAttr("value_floats", "ts", _FLOATS)}), x])
    return ranges, ts


def reference_modulator(tape: Tape, x: ir.Value, order: int) -> ir.Value:
    """seglu(x), one term at a time in the order of `mmserve.ops.reference.seglu_reference`."""
    if order == 0:
        return x
    ranges, ts = attribute_params(tape, x)
    z = x
    for n in range(1, order + 1):
        below = tape.op("Relu", [tape.op("Sub", [scalar(tape, ranges, 2 * n - 2), x])])
        above = tape.op("Relu", [tape.op("Sub", [x, scalar(tape, ranges, 2 * n - 1)])])
        if n == 2:
            below = tape.op("Mul", [below, below])
            above = tape.op("Mul", [above, above])
        elif n > 2:
            exponent = tape.op("CastLike", [tape.op("Constant", [], attributes={"value_float": float(n)}), x])
            below = tape.op("Pow", [below, exponent])
            above = tape.op("Pow", [above, exponent])
        z = tape.op("Add", [z, tape.op("Mul", [scalar(tape, ts, 2 * n - 2), below])])
        z = tape.op("Add", [z, tape.op("Mul", [scalar(tape, ts, 2 * n - 1), above])])
    return z


def build_multimax_function(order: int, masked: bool, opset: int, modulator=None) -> ir.Function:
    """The FunctionProto (as onnx_ir) of mmserve.MultiMax for modulator order `order`.

    `modulator(tape, x, order) -> z` replaces the seglu body (the benchmark's experiments use it).
    """
    tape = Tape()
    x = ir.Value(name="X")
    inputs = [x]
    z = (modulator or reference_modulator)(tape, x, order)
    softmax_axis = {"axis": ir.RefAttr("axis", "axis", _INT)}
    if masked:
        mask = ir.Value(name="mask")
        inputs.append(mask)
        neg_inf = tape.op("CastLike", [tape.op("Constant", [], attributes={"value_float": float("-inf")}), z])
        z = tape.op("Where", [mask, neg_inf, z])
        probs = tape.op("Softmax", [z], attributes=softmax_axis)
        zero = tape.op("CastLike", [tape.op("Constant", [], attributes={"value_float": 0.0}), probs])
        y = tape.op("Where", [mask, zero, probs])
    else:
        y = tape.op("Softmax", [z], attributes=softmax_axis)
    y.name = "Y"
    graph = ir.Graph(inputs, [y], nodes=tape.nodes, opset_imports={"": opset}, name=OP_TYPE)
    attributes = [
        ir.Attr("axis", _INT, -1),
        ir.Attr("ranges", _FLOATS, None),
        ir.Attr("ts", _FLOATS, None),
    ]
    return ir.Function(DOMAIN, OP_TYPE, MASKED_OVERLOAD if masked else "", graph=graph, attributes=attributes)


def multimax_functions(order: int, opset: int, overloads: Iterable[str], modulator=None) -> list[ir.Function]:
    """One function per overload the graph uses ("" and/or "masked")."""
    return [build_multimax_function(order, o == MASKED_OVERLOAD, opset, modulator) for o in sorted(set(overloads))]


def attach_functions(model: ir.Model, functions: Iterable[ir.Function]) -> None:
    """Add (or replace) model-local functions; the model must import the mmserve domain."""
    for function in functions:
        model.functions[function.identifier()] = function


def remove_functions(model: ir.Model) -> None:
    """Drop every mmserve.MultiMax function (the --no-function-body export)."""
    for key in [k for k in model.functions if k[0] == DOMAIN and k[1] == OP_TYPE]:
        del model.functions[key]
