"""Launch geometry of the row kernel, written once for concrete ints and for TensorRT's symbolic sizes.

The kernel normalises rows along the innermost dimension, so a contiguous tensor of shape
(d0, ..., dk) is `n_rows = d0*...*d(k-1)` rows of `n_cols = dk` elements. At engine build time the
sizes are `tensorrt.plugin.ShapeExpr`s (they support `*` like ints, evaluated by TensorRT per
inference, https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/tensorrt.plugin/Shape/ShapeExpr.html),
so `row_count_expr` serves both the JIT launch (ints) and the AOT launch parameters (expressions)
and the tests exercise exactly the arithmetic TensorRT will evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .attrs import MultiMaxAttributeError, resolve_axis

__all__ = ["RowGeometry", "row_geometry", "row_count_expr", "cdiv", "static_row_length_bound", "static_row_count_bound"]


@dataclass(frozen=True)
class RowGeometry:
    n_rows: int
    n_cols: int


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def row_count_expr(dims: Sequence[Any]) -> Any:
    """Product of all dimensions but the last (1 for a rank-1 input); ints or symbolic expressions.

    Multiplies left to right starting from the first dimension, never from a literal 1, because
    TensorRT's ShapeExpr implements `expr * other` but not `int * expr`.
    """
    if len(dims) < 1:
        raise MultiMaxAttributeError("MultiMax", "input must have at least one dimension")
    leading = list(dims[:-1])
    if not leading:
        return 1
    total = leading[0]
    for d in leading[1:]:
        total = total * d
    return total


def row_geometry(shape: Sequence[int], axis: int = -1) -> RowGeometry:
    """Rows/columns of a contiguous tensor whose normalised `axis` is (or has been moved) last."""
    axis = resolve_axis(axis, len(shape))
    if axis != len(shape) - 1:
        raise MultiMaxAttributeError("MultiMax", f"axis {axis} is not the last axis of shape {tuple(shape)}")
    return RowGeometry(n_rows=int(row_count_expr([int(d) for d in shape])), n_cols=int(shape[-1]))


def static_row_length_bound(shape: Any) -> int:
    """The largest row length the engine must handle: the last dimension if it is static, else the
    optimisation profile's maximum for it (`tensorrt.plugin.Shape.max` of a dynamic shape)."""
    last = int(shape[len(shape) - 1])
    if last >= 0:
        return last
    if not getattr(shape, "is_dynamic", False):
        raise MultiMaxAttributeError("MultiMax", "row length is unknown at build time")
    bound = int(shape.max[len(shape) - 1])
    if bound < 1:
        raise MultiMaxAttributeError("MultiMax", f"optimisation profile gives row length max {bound}")
    return bound


def static_row_count_bound(shape: Any) -> int:
    """The largest row count the engine must handle: the product of the leading dimensions, each
    static or at its optimisation-profile maximum."""
    rank = len(shape)
    dims = []
    for i in range(rank - 1):
        d = int(shape[i])
        if d < 0:
            if not getattr(shape, "is_dynamic", False):
                raise MultiMaxAttributeError("MultiMax", f"dimension {i} is unknown at build time")
            d = int(shape.max[i])
        dims.append(d)
    return int(row_count_expr(dims + [1])) if dims else 1
