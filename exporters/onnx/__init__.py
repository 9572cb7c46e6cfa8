"""ONNX export with one `mmserve.MultiMax` node per MultiMax, and onnxruntime runners.

    op.py           the operator: domain/type/version, schema registration
    functions.py    model-local function bodies (standard ops) so stock runtimes inline the op
    translation.py  torch.ops.mmserve.multimax -> mmserve.MultiMax (trained constants as attributes)
    convert.py      torch.export + torch.onnx.export(dynamo=True) + post-processing
    wrappers.py     one nn.Module per graph, built from the models' public API
    configs.py      Optimum-style OnnxConfig per graph and the task -> graphs table
    validate.py     onnx.checker, structure checks, onnxruntime vs torch float32/float64 check
    portable.py     the portable copy of a graph: MultiMax functions inlined into standard ops
    manifest.py     the export manifest and --skip-if-current
    export.py       model directory -> export directory (the `mmserve export --format onnx` body)
    runtime.py      OnnxClassifier, OnnxSeq2SeqStepper (used by parity and by the server)
    reference.py    graphs on onnx.reference (custom-node graphs through their function bodies)
    openvino_session.py  portable graphs on OpenVINO (parity backend `openvino`)
"""

from .export import ExportOptions, ExportResult, export_onnx
from .op import DOMAIN, MASKED_OVERLOAD, OP_TYPE, OP_VERSION, register_schema
from .runtime import OnnxClassifier, OnnxSeq2SeqStepper, RuntimeOptions, load_onnx_model

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "OP_VERSION",
    "MASKED_OVERLOAD",
    "register_schema",
    "ExportOptions",
    "ExportResult",
    "export_onnx",
    "OnnxClassifier",
    "OnnxSeq2SeqStepper",
    "RuntimeOptions",
    "load_onnx_model",
]
