"""Rewrite an ONNX export (made with `--no-function-body`) so TensorRT's ONNX parser maps every
`mmserve.MultiMax` node onto the fused plugin.

How the parser treats a node it has no built-in importer for (onnx-tensorrt `ModelImporter.cpp` and
`FallbackPluginImporter`, https://github.com/onnx/onnx-tensorrt/blob/main/onnxOpImporters.cpp):

1. if the model carries a local function with the node's op type, the function body is inlined
   (so the plugin would never run: the export must not carry the `mmserve.MultiMax` function);
2. otherwise it looks up a plugin creator named after the op type, in the namespace given by the
   node's string attribute `plugin_namespace` (version from `plugin_version`, default "1"); the node's
   domain is not consulted;
3. only attributes the plugin declares become plugin fields; a missing one is skipped with a warning.
   For quickly deployable plugins an INT attribute `aot` picks the ahead-of-time (1) or Python (0)
   implementation (https://github.com/NVIDIA/TensorRT/tree/main/samples/python/quickly_deployable_plugins).

So, per MultiMax node, this pass:
- validates the attributes and writes all of them explicitly (`axis`, `ranges`, `ts`),
- adds `plugin_namespace`, `plugin_version` and `aot`,
- for a node with a mask: expands the mask to X's shape (`Expand(mask, Shape(X))`; the kernel then
  reads the mask with X's strides) and renames the op type to the two-input plugin,
- adds the packed constants as a float32 initializer input `<node>/multimax_params` (ranges then ts:
  the Triton row kernel reads them through a pointer),
- for an axis other than the last: wraps the node in Transpose nodes (the kernel reads rows along the
  innermost dimension), which needs the input's rank from ONNX shape inference,
and removes the `mmserve.MultiMax` model-local functions (all overloads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mmserve.errors import UserError
from plugins.tensorrt import MASKED_PLUGIN_NAME, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from plugins.tensorrt.attrs import MultiMaxAttributeError, from_onnx_node, permutation_to_last, resolve_axis
from plugins.tensorrt.kernel_params import PARAMS_SUFFIX, pack_params

__all__ = ["GraphPreparationError", "PreparedNode", "PreparedGraph", "prepare_for_tensorrt", "ONNX_DOMAIN", "ONNX_OP"]

ONNX_DOMAIN = "mmserve"
ONNX_OP = "MultiMax"
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version", "aot")


class GraphPreparationError(UserError):
    """The ONNX graph cannot be mapped onto the TensorRT plugin."""


@dataclass(frozen=True)
class PreparedNode:
    name: str
    plugin: str  # "MultiMax" or "MultiMaxMasked"
    order: int
    transposed: bool  # axis was not last: Transpose nodes were inserted around it


@dataclass
class PreparedGraph:
    model: onnx.ModelProto
    nodes: list[PreparedNode] = field(default_factory=list)
    removed_functions: list[str] = field(default_factory=list)


def _is_multimax(node: onnx.NodeProto) -> bool:
    return node.domain == ONNX_DOMAIN and node.op_type == ONNX_OP


def _input_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every value ONNX shape inference can type (custom-op schema registered if available)."""
    try:  # the ONNX exporter registers the op schema so inference passes through MultiMax nodes
        from exporters.onnx.op import register_schema

        register_schema()
    except ImportError:  # pragma: no cover - exporter not installed
        pass
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # inference is best effort; an unknown rank is reported where it matters
        raise GraphPreparationError(f"ONNX shape inference failed ({exc}); cannot place Transpose nodes") from exc
    ranks: dict[str, int] = {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[info.name] = len(tensor_type.shape.dim)
    return ranks


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def _rewrite_node(
    node: onnx.NodeProto,
    index: int,
    ranks: Optional[dict[str, int]],
    aot: Optional[bool],
    taken: set[str],
    initializers: list[onnx.TensorProto],
) -> tuple[list[onnx.NodeProto], PreparedNode]:
    name = node.name or f"MultiMax_{index}"
    attrs = from_onnx_node(node)
    inputs = list(node.input)
    x = inputs[0] if inputs else ""
    if not x:
        raise GraphPreparationError(f"MultiMax node {name!r}: input X is missing")
    if len(inputs) > 2:
        raise GraphPreparationError(f"MultiMax node {name!r}: expected at most 2 inputs (X, mask), got {len(inputs)}")
    mask = inputs[1] if len(inputs) == 2 and inputs[1] else None
    y = node.output[0]

    before: list[onnx.NodeProto] = []
    after: list[onnx.NodeProto] = []
    transposed = False
    if attrs.axis != -1:
        if ranks is None or x not in ranks:
            raise GraphPreparationError(
                f"MultiMax node {name!r}: axis={attrs.axis} needs the rank of input {x!r}, which ONNX shape "
                "inference could not determine (export with axis=-1, or give the graph typed inputs)"
            )
        rank = ranks[x]
        try:
            axis = resolve_axis(attrs.axis, rank, where=f"MultiMax node {name!r}")
        except MultiMaxAttributeError as exc:
            raise GraphPreparationError(str(exc)) from exc
        if axis != rank - 1:
            transposed = True
            perm, inverse = permutation_to_last(axis, rank)
            x_t = _unique(f"{x}__to_last", taken)
            before.append(helper.make_node("Transpose", [x], [x_t], name=_unique(f"{name}/transpose_in", taken), perm=perm))
            x = x_t
    if mask is not None:
        # The kernel reads the mask with X's layout: broadcast it to X's full shape first (a lower-rank
        # mask is right-aligned by broadcasting), then move the axis last like X.
        shape = _unique(f"{name}/x_shape", taken)
        full = _unique(f"{name}/mask_full", taken)
        before.append(helper.make_node("Shape", [inputs[0]], [shape], name=_unique(f"{name}/shape", taken)))
        before.append(helper.make_node("Expand", [mask, shape], [full], name=_unique(f"{name}/expand_mask", taken)))
        mask = full
        if transposed:
            mask_t = _unique(f"{full}__to_last", taken)
            before.append(
                helper.make_node("Transpose", [full], [mask_t], name=_unique(f"{name}/transpose_mask", taken), perm=perm)
            )
            mask = mask_t

    out = y
    if transposed:
        out = _unique(f"{y}__last", taken)
        after.append(helper.make_node("Transpose", [out], [y], name=_unique(f"{name}/transpose_out", taken), perm=inverse))

    # The row kernel reads ranges then ts through a pointer: a float32 initializer as the last input.
    params = _unique(f"{name}/{PARAMS_SUFFIX}", taken)
    initializers.append(numpy_helper.from_array(np.asarray(pack_params(attrs.ranges, attrs.ts), np.float32), params))

    plugin = MASKED_PLUGIN_NAME if mask is not None else PLUGIN_NAME
    new_attrs = {**attrs.onnx_attributes(), "axis": -1}
    new_attrs["plugin_namespace"] = PLUGIN_NAMESPACE
    new_attrs["plugin_version"] = PLUGIN_VERSION
    if aot is not None:
        new_attrs["aot"] = int(bool(aot))
    rewritten = helper.make_node(
        plugin,
        [x] + ([mask] if mask is not None else []) + [params],
        [out],
        name=name,
        domain=ONNX_DOMAIN,
        **new_attrs,
    )
    return before + [rewritten] + after, PreparedNode(name=name, plugin=plugin, order=attrs.order, transposed=transposed)


def prepare_for_tensorrt(model: onnx.ModelProto, aot: Optional[bool] = True, source: str = "model") -> PreparedGraph:
    """A copy of `model` whose MultiMax nodes TensorRT's ONNX parser maps onto the fused plugin.

    aot: True -> the engine embeds the compiled kernel and runs without Python; False -> the Python
    (`tensorrt.plugin.impl`) implementation, which needs this package importable when the engine
    runs; None -> leave the choice to the network's PREFER_AOT/JIT flag.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph

    for function in result.functions:
        if function.domain == ONNX_DOMAIN and function.name == ONNX_OP:
            continue
        if any(_is_multimax(n) for n in function.node):
            raise GraphPreparationError(
                f"{source}: local function {function.domain}.{function.name} contains MultiMax nodes; "
                "the exporter must place MultiMax nodes in the main graph"
            )
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                if any(_is_multimax(n) for g in subgraphs for n in g.node):
                    raise GraphPreparationError(
                        f"{source}: MultiMax inside the subgraph of {node.op_type} node {node.name!r} is not supported"
                    )

    targets = [n for n in graph.node if _is_multimax(n)]
    needs_rank = False
    for n in targets:
        try:
            needs_rank |= from_onnx_node(n).axis != -1
        except MultiMaxAttributeError as exc:
            raise GraphPreparationError(f"{source}: {exc}") from exc
    ranks = _input_ranks(result) if needs_rank else None

    taken: set[str] = {n.name for n in graph.node}
    for n in graph.node:
        taken.update(n.input)
        taken.update(n.output)
    taken.update(i.name for i in graph.input)
    taken.update(i.name for i in graph.initializer)

    new_nodes: list[onnx.NodeProto] = []
    prepared: list[PreparedNode] = []
    params: list[onnx.TensorProto] = []
    for index, node in enumerate(graph.node):
        if not _is_multimax(node):
            new_nodes.append(node)
            continue
        try:
            replacement, info = _rewrite_node(node, index, ranks, aot, taken, params)
        except MultiMaxAttributeError as exc:
            raise GraphPreparationError(f"{source}: {exc}") from exc
        except GraphPreparationError as exc:
            raise GraphPreparationError(f"{source}: {exc}") from exc
        new_nodes.extend(replacement)
        prepared.append(info)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(params)

    removed = [f"{f.domain}.{f.name}" + (f":{f.overload}" if f.overload else "") for f in result.functions
               if f.domain == ONNX_DOMAIN and f.name == ONNX_OP]
    kept = [f for f in result.functions if not (f.domain == ONNX_DOMAIN and f.name == ONNX_OP)]
    del result.functions[:]
    result.functions.extend(kept)
    if not any(op.domain == ONNX_DOMAIN for op in result.opset_import):
        result.opset_import.append(helper.make_opsetid(ONNX_DOMAIN, 1))
    return PreparedGraph(model=result, nodes=prepared, removed_functions=removed)
