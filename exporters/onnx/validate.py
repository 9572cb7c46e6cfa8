"""Checks run on every export (Optimum's `validate_model_outputs`, plus the MultiMax-specific ones).

1. `onnx.checker` with full_check (types and shapes through the model-local functions);
2. the structure: the expected number of `mmserve.MultiMax` nodes, each fed by its scores directly,
   never by a modulator chain (Relu/Pow) that would mean the modulator was exported twice or
   decomposed around the node;
3. onnxruntime runs the graph on dummy inputs of shapes other than the traced ones (dynamic axes)
   and must be as close to the exact answer as torch float32 is.

Why a float64 reference (3.): float32 has no single right answer. A model with sharp attention (large
scores, a softmax near one-hot) amplifies rounding, so torch float32 and onnxruntime float32 can differ
by more than any fixed atol while both are equally close to the exact result: comparing one float32
run with another then refuses correct exports. So the graph's outputs are judged against a float64
run of the same torch module, and each output may be off by what float32 itself gets wrong there:

    |onnx - ref64| <= atol + rtol * |ref64| + FLOAT32_ERROR_FACTOR * max|torch32 - ref64|

(atol/rtol as in Optimum's `validate_model_outputs` and numpy.allclose). The last term is measured per
output over all validation inputs; on well-conditioned outputs it is ~1e-6 and atol dominates, so a
graph that really computes something else (a drifted weight, a wrong constant) is still refused.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import onnx
import torch

from mmserve.errors import UserError

from .configs import OnnxConfig
from .convert import check, multimax_nodes

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "FLOAT32_ERROR_FACTOR",
    "ExportValidationError",
    "OutputErrors",
    "check_model",
    "modulator_ops_feeding_multimax",
    "validate_outputs",
]

DEFAULT_ATOL = 1e-4
"""Export-time float32 tolerance (absolute), added to the float32 error term; `--atol` changes it."""
DEFAULT_RTOL = 1e-4
"""Export-time relative tolerance (times |float64 reference|), the same as `mmserve parity`'s float32 row."""
FLOAT32_ERROR_FACTOR = 4.0
"""How many times torch float32's own error an ONNX runtime may make: a different but equally valid
order of float32 operations (onnxruntime's kernels) lands within a small multiple of it (measured:
0.4-1x on the sharp 224-px ViT of tests/test_export_validation.py)."""

_MODULATOR_OPS = {"Relu", "Pow", "Max", "Min", "Clip"}
_STOP_OPS = {"MatMul", "Gemm", "Einsum", "MultiMax", "Softmax", "LayerNormalization", "Conv"}


class ExportValidationError(UserError):
    """An exported graph is malformed or does not reproduce the torch model."""


@dataclass
class OutputErrors:
    """Max abs errors of one output over all validation inputs (what the manifest records)."""

    onnx_vs_float64: float = 0.0
    torch_vs_float64: float = 0.0
    onnx_vs_torch: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


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


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _float64_module(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of the graph module (parameters and float buffers), the exact-arithmetic stand-in."""
    return copy.deepcopy(module).double()


def _float64_inputs(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.double() if t.is_floating_point() else t for t in inputs)


def validate_outputs(
    config: OnnxConfig,
    protos: onnx.ModelProto | Mapping[str, onnx.ModelProto],
    path: Path | str,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    shapes: Optional[list[dict[str, int]]] = None,
    seed: int = 0,
) -> dict[str, dict[str, OutputErrors]]:
    """Run each graph on onnxruntime, and torch in float32 and float64, on the same dummy inputs.

    `protos` is one graph or {label: graph} (the custom-node graph and its portable copy share the
    torch runs). Returns {label: {output name: OutputErrors}}; raises ExportValidationError naming the
    graph, the output and the errors when an output is farther from float64 than the rule allows
    (see the module docstring), has another shape, or has NaN/inf where torch has none.
    """
    graphs = {"": protos} if isinstance(protos, onnx.ModelProto) else dict(protos)
    sessions = {label: _ort_session(proto) for label, proto in graphs.items()}
    module = config.graph_module()
    module64 = _float64_module(module)
    names = [n for n, _ in config.inputs]
    out_names = [n for n, _ in config.outputs]
    generator = torch.Generator().manual_seed(seed)
    runs = []  # (dims, float32 outputs, float64 outputs, {label: onnxruntime outputs})
    for dims in shapes or config.validation_shapes:
        inputs = config.generate_dummy_inputs(dims, generator)
        with torch.no_grad():
            want32 = [t.numpy().astype(np.float64) for t in _as_tuple(module(*inputs))]
            want64 = [t.numpy() for t in _as_tuple(module64(*_float64_inputs(inputs)))]
        feeds = {n: t.numpy() for n, t in zip(names, inputs)}
        runs.append((dims, want32, want64, {label: s.run(out_names, feeds) for label, s in sessions.items()}))
    # float32's own error per output, over every input: the scale of rounding this output has.
    float32_error = {name: 0.0 for name in out_names}
    for _, want32, want64, _ in runs:
        for name, a, b in zip(out_names, want32, want64):
            float32_error[name] = max(float32_error[name], _max_abs(a, b))
    report: dict[str, dict[str, OutputErrors]] = {}
    for label in graphs:
        where = f"{path}" + (f" ({label})" if label else "")
        errors = {name: OutputErrors(torch_vs_float64=float32_error[name]) for name in out_names}
        excess = {name: 0.0 for name in out_names}  # max of |onnx - ref64| - allowed; > 0 is refused
        for dims, want32, want64, got_all in runs:
            for name, a, ref, have in zip(out_names, want32, want64, got_all[label]):
                if have.shape != ref.shape:
                    raise ExportValidationError(
                        f"{where}: output {name!r} has shape {have.shape} on onnxruntime, {ref.shape} in torch "
                        f"(input dims {dims}): a dynamic axis was baked in"
                    )
                if not np.isfinite(have).all() and np.isfinite(a).all():
                    raise ExportValidationError(f"{where}: output {name!r} has NaN/inf on onnxruntime (dims {dims})")
                have = have.astype(np.float64)
                diff = _abs_diff(have, ref)
                budget = float32_error[name] if np.isfinite(float32_error[name]) else 0.0  # torch NaN: no budget
                allowed = atol + rtol * np.abs(np.nan_to_num(ref)) + FLOAT32_ERROR_FACTOR * budget
                e = errors[name]
                e.onnx_vs_float64 = max(e.onnx_vs_float64, float(diff.max(initial=0.0)))
                e.onnx_vs_torch = max(e.onnx_vs_torch, _max_abs(have, a))
                excess[name] = max(excess[name], float((diff - allowed).max(initial=0.0)))
        bad = [name for name in out_names if excess[name] > 0]
        if bad:
            e = errors[bad[0]]
            raise ExportValidationError(
                f"{where}: onnxruntime output {bad[0]!r} is {e.onnx_vs_float64:.3g} from a float64 run of the torch "
                f"module, where torch float32 is {e.torch_vs_float64:.3g} from it (allowed: atol {atol:g} + rtol "
                f"{rtol:g}*|ref| + {FLOAT32_ERROR_FACTOR:g}x torch's float32 error; onnxruntime vs torch float32 "
                f"{e.onnx_vs_torch:.3g}); export with --atol/--rtol only if that is float32 rounding"
            )
        report[label] = errors
    return report


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b|, with 0 where both hold the same non-finite value (NaN and NaN, inf and inf) and inf where
    only one is non-finite: a NaN on one side only is the worst error, never a silent pass."""
    same_special = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    return np.where(same_special, 0.0, np.nan_to_num(diff, nan=np.inf))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(_abs_diff(a, b).max(initial=0.0))
