"""TensorRT plugin for the `mmserve.MultiMax` ONNX node, running the fused Triton row kernel.

Status: written against TensorRT's documented Python plugin API (`tensorrt.plugin`, "quickly
deployable plugins"); it has NOT been run with TensorRT on a GPU in this project yet (see README).
What is tested without TensorRT: attribute parsing (`attrs`), launch geometry (`geometry`), the
exact Triton kernel + grid the plugin launches (under TRITON_INTERPRET=1 on CPU tensors), the PTX the
AOT path hands TensorRT (compiled and assembled with Triton's bundled ptxas), and the ONNX rewrite
that maps nodes onto the plugin (`exporters.tensorrt.graph`).

Two plugins, because a `tensorrt.plugin` definition has a fixed number of inputs and the ONNX op's
`mask` input is optional; the exporter renames masked nodes' op type so the ONNX parser finds the
second one (the parser maps op type -> plugin name and the `plugin_namespace` attribute -> namespace,
https://github.com/NVIDIA/TensorRT/tree/main/samples/python/quickly_deployable_plugins#onnx-model-with-a-plugin):

- ``mmserve::MultiMax``       inputs (X, params)        -> Y
- ``mmserve::MultiMaxMasked`` inputs (X, mask, params)  -> Y, mask bool and already expanded to X's shape

`params` (float32 [4N], ranges then ts) is an initializer the exporter adds: the project's Triton row
kernel (`plugins.triton.kernels.multimax_fwd_kernel`, reused as is) reads the constants through a
pointer, and TensorRT passes an AOT kernel only input/output pointers and int32 scalars.

Importing this package does not import TensorRT; `register_plugins()` does (see `qdp`).
"""

from __future__ import annotations

__all__ = [
    "PLUGIN_NAMESPACE",
    "PLUGIN_NAME",
    "MASKED_PLUGIN_NAME",
    "PLUGIN_VERSION",
    "register_plugins",
]

PLUGIN_NAMESPACE = "mmserve"
PLUGIN_NAME = "MultiMax"
MASKED_PLUGIN_NAME = "MultiMaxMasked"
PLUGIN_VERSION = "1"  # tensorrt.plugin registers every quickly deployable plugin as version "1"


def register_plugins() -> None:
    """Register both plugins with TensorRT's plugin registry (idempotent); needs `tensorrt`."""
    from . import qdp

    qdp.register()
