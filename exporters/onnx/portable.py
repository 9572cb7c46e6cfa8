"""The portable copy of a graph: every `mmserve.MultiMax` node replaced by its function body.

Why: onnxruntime inlines model-local functions itself, but other runtimes do not. OpenVINO refuses
the custom-domain node ("No conversion rule found for operations: mmserve.MultiMax"), TensorRT's
parser needs the plugin, and model converters stop at unknown domains. After
`onnx.inliner.inline_local_functions` the graph holds only standard ONNX ops (the same ops the
function body holds, with the node's trained constants substituted for the attribute references),
so any ONNX runtime can run it. The custom-node graph stays the primary file: it is what a runtime
with a fused MultiMax kernel (the TensorRT plugin) replaces with one kernel call.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import onnx
import onnx.inliner

from .op import DOMAIN

__all__ = ["PORTABLE_DIR", "portable_filename", "inline_multimax"]

PORTABLE_DIR = "portable"
"""Subdirectory of an export that holds the portable copies under the same file names. A subdirectory,
not a second name beside the graph, so that code which globs an export's `*.onnx` (parameter counts,
loaders that expect one graph per name) sees each graph once."""


def portable_filename(filename: str) -> str:
    """model.onnx -> portable/model.onnx (relative to the export directory, listed in the manifest)."""
    return str(PurePosixPath(PORTABLE_DIR) / filename)


def _custom_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes of a non-standard domain left anywhere in the graph (subgraphs included)."""
    found = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            found.append(f"{node.domain}.{node.op_type} ({node.name})")
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                found.extend(_custom_nodes(sub))
    return found


def inline_multimax(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with its model-local functions inlined and the mmserve domain dropped.

    A graph without MultiMax nodes (cross_kv.onnx) comes back as an equal copy, so every graph of an
    export has its portable twin. A graph with MultiMax nodes but no function bodies (exported with
    --no-function-body) has nothing to inline: ValueError.
    """
    if not _custom_nodes(proto.graph) and not proto.functions:
        return _with_note(_copy(proto), proto.doc_string)
    if not any(f.domain == DOMAIN for f in proto.functions):
        raise ValueError("the graph has mmserve.MultiMax nodes but no function bodies to inline")
    inlined = onnx.inliner.inline_local_functions(proto)
    left = _custom_nodes(inlined.graph)
    if left:
        raise ValueError(f"custom-domain nodes remain after inlining: {left[:3]}")
    del inlined.functions[:]
    kept = [o for o in inlined.opset_import if o.domain != DOMAIN]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)
    return _with_note(inlined, proto.doc_string)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(proto)
    return copied


def _with_note(proto: onnx.ModelProto, doc: str) -> onnx.ModelProto:
    proto.doc_string = (doc + "\n" if doc else "") + (
        "Portable copy: mmserve.MultiMax function bodies inlined into standard ONNX ops."
    )
    return proto
