"""Optimisation profiles: (min, opt, max) shapes for every engine input, derived from the ONNX graph.

TensorRT needs a range for each dynamic dimension at build time
(https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/OptimizationProfile.html,
`IOptimizationProfile.set_shape(input, min, opt, max)`); kernels are tuned for `opt` and any shape
inside the range runs. The ONNX export names its dynamic dimensions (`dim_param`), so the ranges are
given per dimension name here and expanded to per-input shapes, with an error that lists any dynamic
dimension left without a range.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import onnx

from mmserve.errors import UserError

__all__ = ["DimRange", "InputProfile", "ProfileError", "dim_range", "input_profiles", "parse_range"]


class ProfileError(UserError):
    """A dynamic dimension has no range, or a range is inconsistent."""


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (0 <= self.min <= self.opt <= self.max) or self.max < 1:
            raise ProfileError(f"invalid dimension range min={self.min} opt={self.opt} max={self.max}: "
                               "need 0 <= min <= opt <= max and max >= 1")

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    dynamic: bool

    def as_dict(self) -> dict[str, Any]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_range(text: str, what: str = "range") -> DimRange:
    """Parse "MIN,OPT,MAX" (or a single number for a fixed size) from the command line."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ProfileError(f"{what}: expected MIN,OPT,MAX integers, got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ProfileError(f"{what}: expected MIN,OPT,MAX (3 integers), got {text!r}")
    return DimRange(*values)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _evaluate(node: ast.AST, values: Mapping[str, int]) -> int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, values)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in values:
        return values[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    raise KeyError(ast.dump(node))


def dim_range(name: str, ranges: Mapping[str, DimRange]) -> Optional[DimRange]:
    """The range of a named dimension, or of a derived one such as "past + tokens" (the exporter
    writes the relation torch.export found), evaluated at the named dims' min, opt and max."""
    if name in ranges:
        return ranges[name]
    try:
        tree = ast.parse(name, mode="eval")
        lo, mid, hi = (
            _evaluate(tree, {k: getattr(r, which) for k, r in ranges.items()}) for which in ("min", "opt", "max")
        )
    except (SyntaxError, KeyError, ZeroDivisionError):
        return None
    return DimRange(lo, mid, hi)


def input_profiles(model: onnx.ModelProto, ranges: Mapping[str, DimRange], source: str = "model") -> list[InputProfile]:
    """One profile entry per real graph input (initializers listed as inputs are skipped)."""
    initializers = {i.name for i in model.graph.initializer}
    profiles: list[InputProfile] = []
    missing: dict[str, list[str]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            raise ProfileError(f"{source}: input {value.name!r} has no shape; the ONNX export must declare one")
        lo: list[int] = []
        mid: list[int] = []
        hi: list[int] = []
        dynamic = False
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                lo.append(dim.dim_value)
                mid.append(dim.dim_value)
                hi.append(dim.dim_value)
                continue
            dynamic = True
            key = dim.dim_param
            r = dim_range(key, ranges) if key else None
            if r is None:
                missing.setdefault(key or f"<unnamed axis {axis} of {value.name}>", []).append(value.name)
                continue
            lo.append(r.min)
            mid.append(r.opt)
            hi.append(r.max)
        profiles.append(InputProfile(value.name, tuple(lo), tuple(mid), tuple(hi), dynamic))
    if missing:
        listing = "; ".join(f"{dim!r} (inputs {', '.join(names)})" for dim, names in missing.items())
        raise ProfileError(f"{source}: no (min, opt, max) range for dynamic dimension(s) {listing}; "
                           f"known: {', '.join(sorted(ranges)) or 'none'}")
    return profiles
