"""The `mmserve.MultiMax` node's attributes, parsed and validated without TensorRT.

The same checks run in three places, so an export that TensorRT would mis-build fails early with a
message naming the node:

- when the exporter prepares an ONNX graph for the TensorRT parser (`from_onnx_node`),
- when TensorRT hands the attributes to the plugin as plugin fields (`from_plugin_fields`): the ONNX
  parser turns an INT attribute into an INT32 field and a FLOATS attribute into a FLOAT32 array
  (onnx-tensorrt `loadFields`, https://github.com/onnx/onnx-tensorrt/blob/main/onnxOpImporters.cpp),
  and `tensorrt.plugin` hands a plugin declared with `int` / `numpy.typing.NDArray[np.float32]`
  annotations a Python int and a float32 array
  (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/tensorrt.plugin/trt_plugin_register.html),
- when the plugin resolves the axis against the input's rank (`resolve_axis`).

Op spec (DESIGN.md "The ONNX custom op"): attributes `axis` (int, default -1), `ranges` and `ts`
(floats, length 2N, the trained modulator constants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from mmserve.errors import UserError

__all__ = [
    "MultiMaxAttributeError",
    "MultiMaxAttrs",
    "MAX_ORDER",
    "from_onnx_node",
    "from_plugin_fields",
    "resolve_axis",
    "is_last_axis",
    "permutation_to_last",
]

# The Triton kernel unrolls the modulator's N terms at compile time (ORDER is a constexpr), so the
# order is bounded to keep the generated PTX small; the authors only ever use N = 2.
MAX_ORDER = 8


class MultiMaxAttributeError(UserError):
    """A MultiMax node carries attributes the fused kernel cannot honour."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class MultiMaxAttrs:
    """Validated attributes: `ranges`/`ts` as float tuples of length 2N, `axis` as given (maybe < 0)."""

    axis: int
    ranges: tuple[float, ...]
    ts: tuple[float, ...]

    @property
    def order(self) -> int:
        return len(self.ranges) // 2

    def onnx_attributes(self) -> dict[str, Any]:
        """The attributes to write on the ONNX node: every one explicit, because the TensorRT parser
        drops attributes the node lacks (with a warning) and `tensorrt.plugin` then calls the plugin
        with fewer arguments than it declared."""
        return {"axis": int(self.axis), "ranges": list(self.ranges), "ts": list(self.ts)}


def _floats(where: str, name: str, values: Optional[Iterable[Any]]) -> tuple[float, ...]:
    if values is None:
        raise MultiMaxAttributeError(where, f"attribute {name!r} is missing (the trained modulator constants)")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise MultiMaxAttributeError(where, f"attribute {name!r} must be a list of floats ({exc})") from exc
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise MultiMaxAttributeError(where, f"attribute {name!r} holds non-finite values {bad}")
    return out


def _validate(where: str, axis: Any, ranges: tuple[float, ...], ts: tuple[float, ...]) -> MultiMaxAttrs:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise MultiMaxAttributeError(where, f"attribute 'axis' must be an int, got {axis!r}")
    if len(ranges) != len(ts):
        raise MultiMaxAttributeError(
            where, f"'ranges' and 'ts' must have the same length, got {len(ranges)} and {len(ts)}"
        )
    if len(ranges) % 2:
        raise MultiMaxAttributeError(
            where, f"'ranges' and 'ts' must hold 2N values (one b and one d term per order), got {len(ranges)}"
        )
    if len(ranges) // 2 > MAX_ORDER:
        raise MultiMaxAttributeError(
            where, f"modulator order {len(ranges) // 2} is above the fused kernel's maximum of {MAX_ORDER}"
        )
    return MultiMaxAttrs(axis=int(axis), ranges=ranges, ts=ts)


def from_onnx_node(node: Any) -> MultiMaxAttrs:
    """Read and validate the attributes of an `onnx.NodeProto` of type MultiMax."""
    import onnx

    where = f"MultiMax node {node.name or '(unnamed)'!r}"
    found: dict[str, Any] = {}
    for attr in node.attribute:
        found[attr.name] = onnx.helper.get_attribute_value(attr)
        if attr.name in ("ranges", "ts") and attr.type not in (
            onnx.AttributeProto.FLOATS,
            onnx.AttributeProto.UNDEFINED,
        ):
            raise MultiMaxAttributeError(where, f"attribute {attr.name!r} must be of type FLOATS")
        if attr.name == "axis" and attr.type != onnx.AttributeProto.INT:
            raise MultiMaxAttributeError(where, "attribute 'axis' must be of type INT")
    axis = found.get("axis", -1)
    return _validate(where, axis, _floats(where, "ranges", found.get("ranges")), _floats(where, "ts", found.get("ts")))


def from_plugin_fields(axis: Any, ranges: Any, ts: Any, where: str = "mmserve::MultiMax plugin") -> MultiMaxAttrs:
    """Validate the attribute values TensorRT passes to the plugin (int, float32 arrays)."""
    try:
        axis = int(axis)
    except (TypeError, ValueError) as exc:
        raise MultiMaxAttributeError(where, f"attribute 'axis' must be an int, got {axis!r}") from exc
    flat = lambda v: None if v is None else list(getattr(v, "ravel", lambda: v)())  # noqa: E731
    return _validate(where, axis, _floats(where, "ranges", flat(ranges)), _floats(where, "ts", flat(ts)))


def resolve_axis(axis: int, rank: int, where: str = "MultiMax") -> int:
    """`axis` as a non-negative dimension index of a rank-`rank` tensor, with a clear error if outside."""
    if rank < 1:
        raise MultiMaxAttributeError(where, f"input must have at least one dimension, got rank {rank}")
    if not -rank <= axis < rank:
        raise MultiMaxAttributeError(where, f"axis {axis} is out of range for a rank-{rank} input")
    return axis % rank


def is_last_axis(axis: int, rank: int) -> bool:
    """Whether `axis` names the innermost dimension, the only layout the row kernel reads."""
    return resolve_axis(axis, rank) == rank - 1


def permutation_to_last(axis: int, rank: int) -> tuple[list[int], list[int]]:
    """(perm, inverse) for Transpose nodes that move `axis` last and back again."""
    axis = resolve_axis(axis, rank)
    perm = [d for d in range(rank) if d != axis] + [axis]
    inverse = [0] * rank
    for i, d in enumerate(perm):
        inverse[d] = i
    return perm, inverse

