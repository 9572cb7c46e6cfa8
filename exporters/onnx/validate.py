"""Checks run on every export (Optimum's `validate_model_outputs`, plus the MultiMax-specific ones).

1. `onnx.checker` with full_check (types and shapes through the model-local functions);
2. the structure: the expected number of `mmserve.MultiMax` nodes, each fed by its scores directly,
   never by a modulator chain (Relu/Pow) that would mean the modulator was exported twice or
   decomposed around the node;
3. onnxruntime runs the graph on dummy inputs of shapes other than the traced ones (dynamic axes)
   and matches the torch module to `atol`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch

from mmserve.errors import UserError

from .configs import OnnxConfig
from .convert import check, multimax_nodes

__all__ = [
    "ExportValidationError",
    "check_model",
    "modulator_ops_feeding_multimax",
    "validate_outputs",
]

DEFAULT_ATOL = 1e-4
"""Export-time float32 tolerance (absolute). Tests use tighter ones; `mmserve parity` has its own."""

_MODULATOR_OPS = {"Relu", "Pow", "Max", "Min", "Clip"}
_STOP_OPS = {"MatMul", "Gemm", "Einsum", "MultiMax", "Softmax", "LayerNormalization", "Conv"}


class ExportValidationError(UserError):
    """An exported graph is malformed or does not reproduce the torch model."""


def check_model(proto: onnx.ModelProto, path: Path | str) -> None:
    try:
        check(proto, full=True)
    except onnx.checker.ValidationError as exc:
        raise ExportValidationError(f"{path}: onnx.checker rejected the graph: {exc}") from exc


def modulator_ops_feeding_multimax(proto: onnx.ModelProto) -> list[str]:
    """Modulator-like ops (Relu, Pow, Max, ...) on the path into any MultiMax's X input.

    Walks producers backwards from each MultiMax's X until a matrix product, a normalisation or a
    graph input; an empty list means every MultiMax takes raw scores, as it should.
    """
    producer = {out: node for node in proto.graph.node for out in node.output}
    found: list[str] = []
    for node in multimax_nodes(proto):
        stack, seen = [node.input[0]], set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producer:
                continue
            seen.add(name)
            up = producer[name]
            if up.op_type in _MODULATOR_OPS:
                found.append(f"{up.op_type} ({up.name}) -> {node.name}")
            if up.op_type in _STOP_OPS:
                continue
            stack.extend(i for i in up.input if i)
    return found


def _ort_session(proto: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def validate_outputs(
    config: OnnxConfig,
    proto: onnx.ModelProto,
    path: Path | str,
    atol: float = DEFAULT_ATOL,
    shapes: Optional[list[dict[str, int]]] = None,
    seed: int = 0,
) -> dict[str, float]:
    """Run onnxruntime and torch on the same dummy inputs; max abs error per output name."""
    session = _ort_session(proto)
    module = config.graph_module()
    names = [n for n, _ in config.inputs]
    out_names = [n for n, _ in config.outputs]
    generator = torch.Generator().manual_seed(seed)
    errors = {name: 0.0 for name in out_names}
    for dims in shapes or config.validation_shapes:
        inputs = config.generate_dummy_inputs(dims, generator)
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(out_names, {n: t.numpy() for n, t in zip(names, inputs)})
        for name, want, have in zip(out_names, expected, got):
            want = want.numpy()
            if want.shape != have.shape:
                raise ExportValidationError(
                    f"{path}: output {name!r} has shape {have.shape} on onnxruntime, {want.shape} in torch "
                    f"(input dims {dims}): a dynamic axis was baked in"
                )
            if not np.isfinite(have).all() and np.isfinite(want).all():
                raise ExportValidationError(f"{path}: output {name!r} has NaN/inf on onnxruntime (dims {dims})")
            err = float(np.abs(have.astype(np.float64) - want.astype(np.float64)).max(initial=0.0))
            errors[name] = max(errors[name], err)
    worst = max(errors, key=errors.get) if errors else None
    if worst is not None and errors[worst] > atol:
        raise ExportValidationError(
            f"{path}: onnxruntime output {worst!r} differs from torch by {errors[worst]:.3g} (> atol {atol:g})"
        )
    return errors
