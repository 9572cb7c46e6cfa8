"""Classifier and seq2seq runners over a TensorRT export directory.

They reuse the ONNX runners of `exporters.onnx.runtime` unchanged except for where a graph's
session comes from: `session("model.onnx")` returns a `TrtSession` over `model.<precision>.engine`,
which answers `run(output_names, feeds)` like onnxruntime. So the input/output conventions, the
seq2seq step API (and therefore mmserve's greedy/beam search and the server's batcher) are shared
code, not a second implementation that could drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from mmserve.checkpoints import CheckpointError, read_config
from mmserve.errors import UserError

from exporters.onnx.runtime import OnnxClassifier, OnnxSeq2SeqStepper, RuntimeOptions

from .export import engine_filename, read_tensorrt_manifest
from .runtime import TrtSession

__all__ = ["TrtClassifier", "TrtSeq2SeqStepper", "load_tensorrt_model", "resolve_precision"]


def resolve_precision(manifest: dict[str, Any], precision: Optional[str], directory: Path) -> str:
    built = list(manifest.get("precisions", []))
    if precision is None:
        precision = "fp32" if "fp32" in built else (built[0] if built else "fp32")
    if precision not in built:
        raise UserError(f"{directory}: no {precision} engines here (built: {', '.join(built) or 'none'})")
    return precision


class _TrtMixin:
    """Replaces the ONNX runners' session factory with TensorRT engines of one precision."""

    directory: Path
    _sessions: dict[str, Any]

    def _init_trt(self, precision: Optional[str], device: Union[int, str], manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.precision = resolve_precision(manifest, precision, self.directory)
        self.trt_device = device

    def session(self, filename: str):  # overrides _OnnxModel.session
        if filename not in self._sessions:
            path = self.directory / engine_filename(filename, self.precision)
            if not path.is_file():
                raise CheckpointError(path, "missing from the TensorRT export directory")
            self._sessions[filename] = TrtSession(path, self.trt_device)
        return self._sessions[filename]

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT ({self.precision})"]


class TrtClassifier(_TrtMixin, OnnxClassifier):
    def __init__(self, export_dir: Path | str, precision: Optional[str] = None, device: Union[int, str] = "cuda"):
        manifest = read_tensorrt_manifest(export_dir)  # sha256 of every engine verified
        super().__init__(export_dir, RuntimeOptions(), verify=False)
        self._init_trt(precision, device, manifest)


class TrtSeq2SeqStepper(_TrtMixin, OnnxSeq2SeqStepper):
    def __init__(self, export_dir: Path | str, precision: Optional[str] = None, device: Union[int, str] = "cuda"):
        manifest = read_tensorrt_manifest(export_dir)
        super().__init__(export_dir, RuntimeOptions(), verify=False)
        self._init_trt(precision, device, manifest)


def load_tensorrt_model(export_dir: Path | str, precision: Optional[str] = None, device: Union[int, str] = "cuda"):
    """The runner matching the export's task."""
    task = read_config(export_dir).task
    if task == "image-classification":
        return TrtClassifier(export_dir, precision, device)
    if task == "translation":
        return TrtSeq2SeqStepper(export_dir, precision, device)
    raise CheckpointError(Path(export_dir) / "config.json", f"task {task!r} has no TensorRT runner")
