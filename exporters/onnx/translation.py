"""torch -> ONNX translation of `torch.ops.mmserve.multimax` into ONE `mmserve.MultiMax` node.

The dynamo exporter hands a translation function the op's arguments as graph values. The modulator
parameters arrive as graph *inputs* (the exported program's lifted parameters, named like their
placeholders, e.g. `p_blocks_0_attn_ranges`) without a constant value attached, yet the node wants
them as float attributes. So the caller runs `torch.export.export` first, and this module maps each
placeholder name to its tensor (`ep.graph_signature.inputs_to_parameters` + `ep.state_dict`) and
reads the values by name. A MultiMax whose ranges/ts are computed rather than stored cannot become
attributes; that is reported as an error rather than silently exporting a decomposed chain.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import onnx_ir as ir
import torch
from onnxscript.values import Opset

from mmserve.ops import custom_op  # noqa: F401  (registers torch.ops.mmserve.multimax)
from mmserve.ops.reference import check_params

from .op import DOMAIN, OP_VERSION, register_schema

__all__ = ["ExportTranslationError", "parameter_values", "MultiMaxTranslation"]


class ExportTranslationError(RuntimeError):
    """The model uses MultiMax in a way the ONNX op cannot express (a bug in the model, not in input)."""


def parameter_values(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """Placeholder name -> tensor for every lifted parameter, buffer and tensor constant.

    Keys include both the placeholder names (`p_ranges`) and the state-dict names (`ranges`),
    because either can end up naming the ONNX value the translation sees.
    """
    signature = program.graph_signature
    state = program.state_dict
    constants = getattr(program, "constants", {}) or {}
    values: dict[str, torch.Tensor] = {}
    for placeholder, name in signature.inputs_to_parameters.items():
        values[placeholder] = values[name] = state[name]
    for placeholder, name in signature.inputs_to_buffers.items():
        tensor = state[name] if name in state else constants[name]
        values[placeholder] = values[name] = tensor
    for placeholder, name in getattr(signature, "inputs_to_lifted_tensor_constants", {}).items():
        values[placeholder] = values[name] = constants[name]
    return {k: v.detach().cpu() for k, v in values.items()}


class MultiMaxTranslation:
    """The custom translation for `torch.ops.mmserve.multimax.default` (one instance per export).

    Records every node it emits (order, masked or not) so the exporter knows which function
    overloads to attach and which order their bodies need.
    """

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        register_schema()
        self._values = values
        self._opset = Opset(DOMAIN, OP_VERSION)
        self.orders: set[int] = set()
        self.masked: list[bool] = []

    def table(self) -> dict[Callable, Callable]:
        """The `custom_translation_table` argument for torch.onnx.export.

        A plain function wrapping the bound method: the exporter attaches its signature metadata to
        the callable, which a bound method does not allow.
        """

        def multimax(x, ranges, ts, dim: int, mask=None):
            return self.translate(x, ranges, ts, dim, mask)

        return {torch.ops.mmserve.multimax.default: multimax}

    def _floats(self, value: Any, what: str) -> list[float]:
        const = getattr(value, "const_value", None)
        if const is not None:
            return [float(v) for v in const.numpy().reshape(-1).tolist()]
        name = getattr(value, "name", None)
        if name in self._values:
            return [float(v) for v in self._values[name].to(torch.float64).reshape(-1).tolist()]
        raise ExportTranslationError(
            f"MultiMax {what} {name!r} is not a stored parameter or constant; the mmserve.MultiMax node "
            "needs the trained values as attributes"
        )

    def translate(self, x: Any, ranges: Any, ts: Any, dim: int, mask: Optional[Any] = None) -> Any:
        """One mmserve.MultiMax node (trace-only: called once per op occurrence)."""
        r = self._floats(ranges, "ranges")
        t = self._floats(ts, "ts")
        order = check_params(torch.tensor(r), torch.tensor(t))
        self.orders.add(order)
        self.masked.append(mask is not None)
        if mask is None:
            return self._opset.MultiMax(x, axis=int(dim), ranges=r, ts=t)
        mask_dtype = getattr(mask, "dtype", None)
        if mask_dtype is not None and mask_dtype != ir.DataType.BOOL:
            raise ExportTranslationError(
                f"MultiMax mask has dtype {mask_dtype}; the ONNX op takes a bool mask (True = masked)"
            )
        return self._opset.MultiMax(x, mask, axis=int(dim), ranges=r, ts=t)
