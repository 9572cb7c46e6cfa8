"""Run a serialized TensorRT engine with torch CUDA tensors as its I/O buffers.

TensorRT runtime API (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html,
.../infer/Core/Runtime.html, .../infer/Core/Engine.html):
`trt.Runtime(logger).deserialize_cuda_engine(bytes)`, `engine.num_io_tensors`/`get_tensor_name(i)`/
`get_tensor_mode(name)`/`get_tensor_dtype(name)`, `context.set_input_shape(name, shape)`,
`context.get_tensor_shape(name)` (output shapes once all input shapes are set),
`context.set_tensor_address(name, ptr)` and `context.execute_async_v3(stream_handle)`.

`TrtSession` mirrors the slice of `onnxruntime.InferenceSession` the ONNX runners use (`run`,
`get_inputs`, `get_outputs`), so the classifier and seq2seq runners of `exporters.onnx.runtime` work
on an engine unchanged; `TrtEngine.run_torch` is the zero-copy path for callers holding CUDA tensors.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from mmserve.errors import UserError
from plugins.tensorrt.availability import import_tensorrt, require_cuda
from plugins.tensorrt.dtypes import element_type, numpy_dtype_for, torch_dtype_for

__all__ = ["EngineLoadError", "TensorSpec", "TrtEngine", "TrtSession"]

log = logging.getLogger(__name__)


class EngineLoadError(UserError):
    """An engine file cannot be deserialised here (other TensorRT version, other GPU, corrupt)."""


@dataclass(frozen=True)
class TensorSpec:
    """What `get_inputs()` / `get_outputs()` return, shaped like onnxruntime's NodeArg."""

    name: str
    shape: list[Union[int, str]]
    type: str  # onnxruntime spelling, e.g. "tensor(float)"
    trt_dtype: str


_ORT_TYPE = {"FLOAT": "tensor(float)", "HALF": "tensor(float16)", "BF16": "tensor(bfloat16)",
             "BOOL": "tensor(bool)", "INT32": "tensor(int32)", "INT64": "tensor(int64)", "INT8": "tensor(int8)"}


class TrtEngine:
    """One deserialised engine and one execution context (not re-entrant: one caller at a time)."""

    def __init__(self, path: Path, device: Union[int, str] = "cuda") -> None:
        trt = import_tensorrt()
        require_cuda()
        import torch

        from plugins.tensorrt import register_plugins

        # An AOT engine carries the kernel and needs no Python at run time; a JIT (trt.plugin.impl)
        # engine needs the plugin registered in this process before deserialisation.
        try:
            register_plugins()
        except ImportError as exc:
            log.warning("MultiMax plugin not registered here (%s): only AOT-built engines will load", exc)
        self._trt = trt
        self.path = Path(path)
        self.device = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        if self.device.type != "cuda":
            raise EngineLoadError(f"{self.path}: TensorRT engines run on a CUDA device, not {self.device}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise EngineLoadError(
                    f"{self.path}: TensorRT {trt.__version__} could not deserialise this engine (engines are "
                    "tied to the TensorRT version and GPU model they were built with: rebuild it here)"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._lock = threading.Lock()
        # Zero-volume tensors (the decoder's empty KV cache on the first step) have no storage; TensorRT
        # still wants a valid address for them, so they all point at this small scratch buffer.
        self._empty = torch.empty(256, dtype=torch.uint8, device=self.device)

    def _spec(self, name: str) -> TensorSpec:
        dtype = element_type(self.engine.get_tensor_dtype(name)).trt_name
        shape = [d if d >= 0 else "dynamic" for d in self.engine.get_tensor_shape(name)]
        return TensorSpec(name, shape, _ORT_TYPE.get(dtype, dtype), dtype)

    def inputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self.input_names]

    def outputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self.output_names]

    def _address(self, tensor: Any) -> int:
        return tensor.data_ptr() if tensor.numel() else self._empty.data_ptr()

    def run_torch(self, feeds: Mapping[str, Any], stream: Optional[Any] = None) -> dict[str, Any]:
        """Run with torch tensors (any device/dtype: moved and cast to what the engine declares).

        Returns CUDA tensors; the work is enqueued on `stream` (default: torch's current stream) and
        synchronised before returning, so the outputs are ready to read.
        """
        import torch

        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.path}: missing engine inputs {missing} (expects {self.input_names})")
        with self._lock, torch.cuda.device(self.device):
            stream = stream or torch.cuda.current_stream(self.device)
            keep: list[torch.Tensor] = []  # buffers must stay alive until the stream is done
            for name in self.input_names:
                want = torch_dtype_for(self.engine.get_tensor_dtype(name))
                tensor = torch.as_tensor(feeds[name]).to(device=self.device, dtype=want).contiguous()
                keep.append(tensor)
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise ValueError(
                        f"{self.path}: input {name!r} of shape {tuple(tensor.shape)} is outside the engine's "
                        "optimisation profile (see the export manifest for its min/max shapes)"
                    )
                self.context.set_tensor_address(name, self._address(tensor))
            outputs: dict[str, torch.Tensor] = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"{self.path}: output {name!r} has unresolved shape {shape}")
                out = torch.empty(shape, dtype=torch_dtype_for(self.engine.get_tensor_dtype(name)), device=self.device)
                outputs[name] = out
                self.context.set_tensor_address(name, self._address(out))
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{self.path}: execute_async_v3 reported a failure")
            stream.synchronize()
            del keep
        return outputs


class TrtSession:
    """onnxruntime-InferenceSession look-alike over a TrtEngine (numpy in, numpy out)."""

    def __init__(self, path: Path, device: Union[int, str] = "cuda") -> None:
        self.engine = TrtEngine(path, device)

    def get_inputs(self) -> list[TensorSpec]:
        return self.engine.inputs()

    def get_outputs(self) -> list[TensorSpec]:
        return self.engine.outputs()

    def run(self, output_names: Optional[Sequence[str]], input_feed: Mapping[str, Any], run_options: Any = None) -> list[np.ndarray]:
        results = self.engine.run_torch(input_feed)
        names = list(output_names) if output_names else self.engine.output_names
        unknown = [n for n in names if n not in results]
        if unknown:
            raise ValueError(f"{self.engine.path}: unknown outputs {unknown} (has {self.engine.output_names})")
        out = []
        for name in names:
            array = results[name].cpu().numpy()
            spec = element_type(self.engine.engine.get_tensor_dtype(name))
            out.append(array.astype(numpy_dtype_for(spec.trt_name), copy=False))
        return out
