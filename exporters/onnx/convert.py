"""torch module -> ONNX graph with one `mmserve.MultiMax` node per MultiMax.

Steps (each one small, in this order):
1. `torch.export.export` the graph module ourselves, with named dynamic dims, so the exported
   program's parameters are known by placeholder name (the MultiMax translation reads ranges/ts from
   them into attributes; see translation.py);
2. `torch.onnx.export(program, dynamo=True, custom_translation_table=...)`: standard ops everywhere,
   `mmserve.MultiMax` for `torch.ops.mmserve.multimax`; the exporter's own optimizer folds constants;
3. post-process with onnx_ir: masked MultiMax nodes get the "masked" overload, the IR version is
   raised to 10 (function overloads), the symbolic dims get the config's names (batch, sequence, ...),
   and the model-local functions are attached unless the export is for a plugin runtime.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import onnx
import onnx_ir as ir
import torch
from torch import nn

from .functions import attach_functions, multimax_functions
from .op import DOMAIN, MASKED_OVERLOAD, OP_VERSION, is_multimax_node, register_schema
from .translation import ExportTranslationError, MultiMaxTranslation, parameter_values

__all__ = [
    "MIN_OPSET",
    "DEFAULT_OPSET",
    "MIN_IR_VERSION",
    "AUTO_DIM",
    "GraphSpec",
    "ConvertedGraph",
    "convert_module",
    "multimax_nodes",
]

MIN_OPSET = 18
"""Opset 18 is the exporter's native one (torchlib) and the first with Reduce* axes as inputs."""
DEFAULT_OPSET = 18
MIN_IR_VERSION = 10
"""IR 10 introduced function overloads, which the masked MultiMax body needs."""
AUTO_DIM = "*"
"""Prefix of an axis name for a dynamic dim derived from others (e.g. "*past_and_tokens" for the
cache plus the new tokens): torch.export infers its relation instead of being given a named Dim;
the text after the prefix, if any, names the dim in the ONNX graph."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphSpec:
    """What one ONNX graph looks like from outside: ordered inputs/outputs and their dynamic axes."""

    inputs: Sequence[tuple[str, dict[int, str]]]
    outputs: Sequence[tuple[str, dict[int, str]]]

    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.outputs]


@dataclass
class ConvertedGraph:
    """The exported model plus what the translation saw (for attaching functions and for checks)."""

    model: ir.Model
    multimax_count: int
    orders: set[int] = field(default_factory=set)
    overloads: set[str] = field(default_factory=set)


def _dynamic_shapes(spec: GraphSpec, module: nn.Module) -> tuple:
    """torch.export dynamic_shapes (a tuple in input order) from the spec's axis names.

    Trailing inputs that the module's forward takes as *args (per-layer caches) are grouped into one
    tuple, which is how torch.export sees them.
    """
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for _, axes in spec.inputs:
        entry = {}
        for axis, name in axes.items():
            if name.startswith(AUTO_DIM):
                entry[axis] = torch.export.Dim.AUTO
            else:
                entry[axis] = dims.setdefault(name, torch.export.Dim(name))
        shapes.append(entry or None)
    params = list(inspect.signature(module.forward).parameters.values())
    if params and params[-1].kind is inspect.Parameter.VAR_POSITIONAL:
        fixed = len(params) - 1
        return (*shapes[:fixed], tuple(shapes[fixed:]))
    return tuple(shapes)


def multimax_nodes(graph_or_model) -> list:
    """Every mmserve.MultiMax node of an onnx_ir Graph/Model or an onnx ModelProto (main graph and
    subgraphs; not inside function bodies)."""
    if isinstance(graph_or_model, onnx.ModelProto):
        found = []

        def walk(graph: onnx.GraphProto) -> None:
            for node in graph.node:
                if is_multimax_node(node):
                    found.append(node)
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        walk(attr.g)
                    for sub in attr.graphs:
                        walk(sub)

        walk(graph_or_model.graph)
        return found
    graph = graph_or_model.graph if isinstance(graph_or_model, ir.Model) else graph_or_model
    return [node for node in graph.all_nodes() if is_multimax_node(node)]


def _mark_overloads(model: ir.Model) -> set[str]:
    """Masked MultiMax nodes call the "masked" function overload; returns the overloads in use."""
    used = set()
    for node in multimax_nodes(model):
        masked = len(node.inputs) > 1 and node.inputs[1] is not None
        node.overload = MASKED_OVERLOAD if masked else ""
        used.add(node.overload)
    return used


def _rename_dims(model: ir.Model, spec: GraphSpec) -> None:
    """Give the exporter's symbols (s0, s17, ...) the spec's axis names wherever they appear."""
    names: dict[str, str] = {}
    for value, (_, axes) in zip(model.graph.inputs, spec.inputs):
        if value.shape is None:
            continue
        for axis, name in axes.items():
            dim = value.shape[axis]
            label = name[len(AUTO_DIM):] if name.startswith(AUTO_DIM) else name
            if label and isinstance(dim, ir.SymbolicDim) and dim.value:
                names.setdefault(dim.value, label)
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(re.escape(s) for s in sorted(names, key=len, reverse=True)) + r")\b")

    def rename(value: ir.Value) -> None:
        if value.shape is None:
            return
        dims = []
        changed = False
        for dim in value.shape:
            if isinstance(dim, ir.SymbolicDim) and dim.value and pattern.search(dim.value):
                dims.append(ir.SymbolicDim(pattern.sub(lambda m: names[m.group(1)], dim.value)))
                changed = True
            else:
                dims.append(dim)
        if changed:
            value.shape = ir.Shape(dims)

    for value in model.graph.inputs:
        rename(value)
    for value in model.graph.outputs:
        rename(value)
    for node in model.graph.all_nodes():
        for value in node.outputs:
            rename(value)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress and warns about torchvision; keep the CLI's output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def convert_module(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    spec: GraphSpec,
    *,
    opset: int = DEFAULT_OPSET,
    function_body: bool = True,
    doc: Optional[str] = None,
) -> ConvertedGraph:
    """Export `module(*args)` to an onnx_ir Model following `spec` (names, dynamic axes)."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: mmserve exports need opset >= {MIN_OPSET}")
    register_schema()
    module = module.eval()
    with torch.no_grad(), _quiet_exporter():
        program = torch.export.export(module, args, dynamic_shapes=_dynamic_shapes(spec, module), strict=False)
        translation = MultiMaxTranslation(parameter_values(program))
        onnx_program = torch.onnx.export(
            program,
            args,
            dynamo=True,
            custom_translation_table=translation.table(),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    model: ir.Model = onnx_program.model
    if len(translation.orders) > 1:
        raise ExportTranslationError(
            f"the model mixes MultiMax orders {sorted(translation.orders)}; one function body per model "
            "is supported"
        )
    overloads = _mark_overloads(model)
    count = len(multimax_nodes(model))
    default_opset = [onnx.helper.make_opsetid("", model.opset_imports.get("", opset))]
    model.ir_version = max(model.ir_version or 0, MIN_IR_VERSION, onnx.helper.find_min_ir_version_for(default_opset))
    if count:
        model.opset_imports[DOMAIN] = OP_VERSION
        model.graph.opset_imports[DOMAIN] = OP_VERSION
    _rename_dims(model, spec)
    if doc:
        model.doc_string = doc
    if count and function_body:
        order = next(iter(translation.orders))
        attach_functions(model, multimax_functions(order, opset, overloads))
    return ConvertedGraph(model, count, set(translation.orders), overloads)


def to_proto(graph: ConvertedGraph | ir.Model) -> onnx.ModelProto:
    """Serialise to a ModelProto (what onnx.checker and onnxruntime take)."""
    model = graph.model if isinstance(graph, ConvertedGraph) else graph
    return ir.to_proto(model)


def check(proto: onnx.ModelProto, full: bool = True) -> None:
    """onnx.checker with shape inference (the MultiMax schema must be registered for body-less graphs)."""
    register_schema()
    onnx.checker.check_model(proto, full_check=full)

