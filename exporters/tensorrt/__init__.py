"""TensorRT engines from the ONNX export, with the fused MultiMax plugin (status: unverified on a GPU
in this project; see the README's TensorRT section for exactly what has and has not been run).

    graph.py      ONNX rewrite: MultiMax nodes -> plugin nodes the TensorRT ONNX parser maps (pure onnx)
    profiles.py   (min, opt, max) shapes per input from the export's named dims (pure onnx)
    builder.py    one engine from one prepared graph: parser, profile, precision, workspace (TensorRT)
    export.py     model directory -> TensorRT export directory (`mmserve export --format tensorrt`)
    runtime.py    TrtEngine (execute_async_v3 on torch CUDA buffers) and TrtSession (onnxruntime look-alike)
    runners.py    TrtClassifier / TrtSeq2SeqStepper: the ONNX runners over engines (parity, server)

Nothing here imports `tensorrt` at import time; functions that need it raise
`plugins.tensorrt.availability.TensorRTUnavailable` with a one-line reason.
"""

from .export import TensorRTExportOptions, export_for_cli, export_tensorrt
from .graph import GraphPreparationError, PreparedGraph, prepare_for_tensorrt
from .profiles import DimRange, InputProfile, ProfileError, input_profiles, parse_range

__all__ = [
    "TensorRTExportOptions",
    "export_for_cli",
    "export_tensorrt",
    "GraphPreparationError",
    "PreparedGraph",
    "prepare_for_tensorrt",
    "DimRange",
    "InputProfile",
    "ProfileError",
    "input_profiles",
    "parse_range",
]
