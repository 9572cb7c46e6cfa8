"""The `tensorrt` serving backend: a TensorRT export directory behind the server's Backend interface.

Registered as ``"tensorrt": "plugins.tensorrt.serving:load"`` in `server/backends/registry.py`.
Pre/post-processing stays in the server (`mmserve.tasks`); this only turns a batch of tensors into a
batch of tensors through `exporters.tensorrt.runners` (which run the engines with execute_async_v3
on torch CUDA buffers).

Precision: `LoadOptions.extra["tensorrt_precision"]` or the MMSERVE_TENSORRT_PRECISION environment
variable ("fp32" or "fp16"); default fp32 when that engine was built.

Given a model directory (a checkpoint) instead of an export, engines are built once into the export
cache directory (`LoadOptions.onnx_cache_dir`), under a name keyed by the weights' sha256, and reused
while current (same weights, options, TensorRT version and GPU); a file lock stops two server
processes from building the same engines at once. Building takes minutes: prefer building ahead
with `mmserve export MODEL_DIR --format tensorrt --out DIR` and serving DIR.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from server.backends.base import BackendInfo, ClassifierBackend, ClassifierOutput, LoadOptions, TranslatorBackend

from .availability import TensorRTUnavailable, unavailable_reason

__all__ = ["load", "ensure_engines", "TensorRTClassifierBackend", "TensorRTTranslatorBackend"]


def _info(runner: Any, device: str) -> BackendInfo:
    manifest = runner.manifest
    return BackendInfo(
        backend="tensorrt",
        device=device,
        source=Path(runner.directory),
        weights_sha256=manifest.get("source", {}).get("weights_sha256", ""),
        extra={
            "precision": runner.precision,
            "tensorrt_version": manifest.get("tensorrt_version"),
            "built_on_gpu": manifest.get("gpu", {}).get("name"),
            "plugin_aot": manifest.get("plugin", {}).get("aot"),
        },
    )


class TensorRTClassifierBackend(ClassifierBackend):
    def __init__(self, runner: Any, device: str) -> None:
        self.runner = runner
        self.config = runner.config
        self.info = _info(runner, device)

    def run(self, pixel_values: np.ndarray, explain: bool = False) -> ClassifierOutput:
        if explain:
            probs, _logits, weights = self.runner.explain(pixel_values)
            return ClassifierOutput(np.asarray(probs, np.float32), [np.asarray(w, np.float32) for w in weights])
        probs, _logits = self.runner.run(pixel_values)
        return ClassifierOutput(np.asarray(probs, np.float32))

    def close(self) -> None:
        self.runner.close()


class TensorRTTranslatorBackend(TranslatorBackend):
    def __init__(self, runner: Any, device: str) -> None:
        from mmserve.tasks.translation import load_tokenizer

        self.runner = runner
        self.stepper = runner
        self.config = runner.config
        self.device = "cpu"  # the runner takes and returns CPU torch tensors (engines run on the GPU)
        self.tokenizer = load_tokenizer(runner.directory)
        self.info = _info(runner, device)

    def close(self) -> None:
        self.runner.close()


def ensure_engines(model_dir: Path, cache_dir: Optional[Path]) -> Path:
    """The TensorRT export of `model_dir` in `cache_dir`, building it first when absent or stale."""
    import fcntl

    from exporters.tensorrt.export import TensorRTExportOptions, export_tensorrt, is_current
    from mmserve.checkpoints import read_config, verify_manifest
    from mmserve.errors import UserError

    if cache_dir is None:
        raise UserError(f"{model_dir}: a checkpoint needs an export cache directory for --backend tensorrt "
                        "(or build engines with `mmserve export MODEL_DIR --format tensorrt --out DIR`)")
    config = read_config(model_dir)
    weights_sha = verify_manifest(model_dir)["files"].get("model.safetensors", "")
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{config.name}-{weights_sha[:16]}-tensorrt"
    options = TensorRTExportOptions()
    with open(cache_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same engines: wait for it
        current, _why = is_current(target, model_dir, options)
        if not current:
            export_tensorrt(model_dir, target, options)
    return target


def _device(options: LoadOptions) -> Union[int, str]:
    return options.device if str(options.device).startswith("cuda") else "cuda"


def load(path: Path, task: str, options: LoadOptions) -> Union[TensorRTClassifierBackend, TensorRTTranslatorBackend]:
    """Load a TensorRT export directory (made by `mmserve export --format tensorrt`)."""
    reason = unavailable_reason()
    if reason is not None:
        raise TensorRTUnavailable(f"backend 'tensorrt' cannot load {path}: {reason}")
    from exporters.tensorrt.runners import TrtClassifier, TrtSeq2SeqStepper

    if (Path(path) / "model.safetensors").is_file():  # a checkpoint, not an export: build (or reuse) engines
        path = ensure_engines(Path(path), options.onnx_cache_dir)
    precision: Optional[str] = options.extra.get("tensorrt_precision") or os.environ.get("MMSERVE_TENSORRT_PRECISION")
    device = _device(options)
    if task == "image-classification":
        return TensorRTClassifierBackend(TrtClassifier(path, precision, device), str(device))
    return TensorRTTranslatorBackend(TrtSeq2SeqStepper(path, precision, device), str(device))
