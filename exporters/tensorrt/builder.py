"""Build one serialized TensorRT engine from one prepared ONNX graph.

TensorRT APIs used (Python, https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):
- `trt.Builder(logger).create_network(flags)`, `trt.OnnxParser(network, logger).parse_from_file(path)`
  with `get_error(i)` for diagnostics (parsers/Onnx/pyOnnx.html);
- `builder.create_builder_config()`, `config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, n)`,
  `config.clear_flag(trt.BuilderFlag.TF32)` for fp32 parity (infer/Core/BuilderConfig.html);
- `builder.create_optimization_profile()`, `profile.set_shape(name, min, opt, max)`,
  `config.add_optimization_profile(profile)` (infer/Core/OptimizationProfile.html);
- `builder.build_serialized_network(network, config)` -> bytes written to disk (infer/Core/Builder.html).

Precision. TensorRT 11 removed weak typing (`BuilderFlag.FP16` and friends): a network is strongly
typed and takes its precision from the graph
(https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html).
So the fp16 engine is built from an fp16 copy of the ONNX graph (`to_fp16`, inputs and outputs kept
float32 so callers feed the same buffers to both engines) with the STRONGLY_TYPED network flag, which
TensorRT 10.x honours and 11.x takes as given. The MultiMax plugin then receives fp16 X and returns
fp16 Y; its kernel computes in float32 internally (the quadratic term overflows fp16 for |x| > ~250).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import onnx

from mmserve.errors import UserError
from plugins.tensorrt.availability import import_tensorrt, require_cuda

from .profiles import InputProfile

__all__ = ["Precision", "EngineBuildError", "BuildResult", "build_engine", "to_fp16", "FP16_KEEP_FLOAT32_OPS"]

Precision = Literal["fp32", "fp16"]

# Ops whose fp16 versions lose too much (statistics over a row) stay float32 in the fp16 graph; the
# converter inserts the Casts around them.
FP16_KEEP_FLOAT32_OPS: tuple[str, ...] = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt")


class EngineBuildError(UserError):
    """TensorRT could not parse or build the graph."""


@dataclass
class BuildResult:
    engine_path: Path
    precision: Precision
    seconds: float
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    plugin_layers: int = 0
    notes: list[str] = field(default_factory=list)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 copy of `model` with float32 graph inputs/outputs (Casts inserted at the boundary).

    Uses onnxconverter-common's converter; MultiMax plugin nodes are converted like any other node
    (the plugin advertises FP16 I/O) except their float32 `params` input; ops in FP16_KEEP_FLOAT32_OPS
    stay float32.
    """
    try:
        from onnxconverter_common import float16
    except ImportError as exc:  # pragma: no cover - dependency of the tensorrt extra
        raise UserError("fp16 engines need onnxconverter-common (pip install 'mmserve[tensorrt]')") from exc
    import warnings

    from .graph import ONNX_DOMAIN

    # The plugins' last input holds the modulator constants; the kernel reads them as float32 (the
    # autotune declares FP32 for it), so they keep their exact float32 values in the fp16 graph.
    source = onnx.ModelProto()
    source.CopyFrom(model)  # the converter edits the model it is given
    model = source
    params = {n.input[-1] for n in model.graph.node if n.domain == ONNX_DOMAIN}
    originals = {}
    for tensor in model.graph.initializer:
        if tensor.name in params:
            originals[tensor.name] = onnx.TensorProto()
            originals[tensor.name].CopyFrom(tensor)
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FLOAT32_OPS)
    with warnings.catch_warnings():  # it warns for every weight below fp16's smallest normal
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=block, disable_shape_infer=True, check_fp16_ready=False
        )
    for tensor in converted.graph.initializer:
        if tensor.name in originals:
            tensor.CopyFrom(originals[tensor.name])
    return converted


def _make_logger(trt: Any, verbose: bool) -> Any:
    """A trt.ILogger that keeps errors for the exception message and forwards the rest to logging."""
    import logging

    log = logging.getLogger("mmserve.tensorrt")

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:  # TensorRT callback
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(str(msg))
                log.error("%s", msg)
            elif severity == trt.ILogger.WARNING:
                log.warning("%s", msg)
            elif verbose:
                log.info("%s", msg)

    return Logger()


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    if hasattr(creation, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:  # pragma: no cover
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    return flags


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profiles: Sequence[InputProfile],
    precision: Precision = "fp32",
    workspace_bytes: int = 1 << 30,
    verbose: bool = False,
) -> BuildResult:
    """Parse `onnx_path` (already prepared for the plugin, and fp16 already for precision="fp16") and
    write a serialized engine to `engine_path`."""
    trt = import_tensorrt()
    require_cuda()
    from plugins.tensorrt import register_plugins

    register_plugins()  # the parser looks the MultiMax plugin creators up in TensorRT's registry
    logger = _make_logger(trt, verbose)
    started = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, strongly_typed=True))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        problems = [str(e.desc()) if hasattr(e, "desc") else str(e) for e in errors]
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {'; '.join(problems) or logger.errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    notes: list[str] = []
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls would break fp32 parity
        notes.append("TF32 disabled")
    profile = builder.create_optimization_profile()
    for item in profiles:
        profile.set_shape(item.name, item.min, item.opt, item.max)
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build the {precision} engine: "
                               f"{'; '.join(logger.errors) or 'no error message'}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    plugin_layers = sum(
        1 for i in range(network.num_layers) if network.get_layer(i).type == trt.LayerType.PLUGIN_V3
    ) if hasattr(trt.LayerType, "PLUGIN_V3") else 0

    def describe(tensor: Any) -> dict[str, Any]:
        return {"name": tensor.name, "dtype": str(tensor.dtype).split(".")[-1], "shape": list(tensor.shape)}

    return BuildResult(
        engine_path=engine_path,
        precision=precision,
        seconds=time.perf_counter() - started,
        inputs=[describe(network.get_input(i)) for i in range(network.num_inputs)],
        outputs=[describe(network.get_output(i)) for i in range(network.num_outputs)],
        plugin_layers=plugin_layers,
        notes=notes,
    )


def gpu_description() -> dict[str, Optional[str]]:
    """GPU name and compute capability for the manifest (engines are specific to both)."""
    import torch

    if not torch.cuda.is_available():
        return {"name": None, "compute_capability": None}
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
