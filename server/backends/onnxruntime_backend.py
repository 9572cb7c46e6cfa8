"""The onnxruntime backend: an ONNX export directory (`mmserve export --format onnx`) run with
`exporters.onnx.runtime` (OnnxClassifier / OnnxSeq2SeqStepper), the same runners parity uses.

Given a model directory (a checkpoint) instead, it exports it once into the cache directory, under a
name keyed by the weights' sha256, and serves that; an up-to-date export is reused (the exporter's
`skip_if_current` check), and a file lock stops two server processes from exporting the same model at
the same time.
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from mmserve.checkpoints import WEIGHTS_NAME, CheckpointError, verify_manifest
from mmserve.errors import UserError

from .base import BackendInfo, ClassifierBackend, ClassifierOutput, LoadOptions, TranslatorBackend

__all__ = ["load", "ensure_export", "OnnxClassifierBackend", "OnnxTranslatorBackend"]

log = logging.getLogger("mmserve.server.backends.onnxruntime")


def ensure_export(model_dir: Path, cache_dir: Optional[Path]) -> Path:
    """The ONNX export of `model_dir` in `cache_dir`, exporting it first when absent or stale."""
    from exporters.onnx import export_onnx

    from mmserve.checkpoints import read_config

    if cache_dir is None:
        raise UserError(f"{model_dir}: a checkpoint needs an export cache directory for --backend onnxruntime")
    config = read_config(model_dir)
    weights_sha = verify_manifest(model_dir)["files"].get(WEIGHTS_NAME)
    if not weights_sha:
        raise CheckpointError(model_dir / "manifest.json", f"does not list {WEIGHTS_NAME}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{config.name}-{weights_sha[:16]}"
    with open(cache_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process exporting the same weights: wait for it
        result = export_onnx(model_dir, target, skip_if_current=True)
    log.info("%s: %s (%s)", model_dir, "reusing cached ONNX export" if result.skipped else "exported to ONNX",
             target)
    return target


def _runtime_options(options: LoadOptions):
    from exporters.onnx import RuntimeOptions

    providers = "auto" if options.device.startswith("cuda") else None
    return RuntimeOptions(providers=providers, intra_op_threads=options.intra_op_threads)


def _parameters(path: Path) -> Optional[int]:
    """Weights in the graphs (initializers, without loading tensor data twice)."""
    try:
        import onnx

        total = 0
        for graph in sorted(path.glob("*.onnx")):
            if graph.name == "explain.onnx":  # same weights as model.onnx
                continue
            model = onnx.load(str(graph), load_external_data=False)
            total += sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        return total
    except Exception:  # a count for /v1/models is not worth failing a load over
        return None


def _info(runner, device: str) -> BackendInfo:
    import onnxruntime

    source = runner.manifest.get("source", {})
    return BackendInfo(
        backend="onnxruntime",
        device=device,
        source=runner.directory,
        weights_sha256=source.get("weights_sha256", ""),
        parameters=_parameters(runner.directory),
        extra={"onnxruntime_version": onnxruntime.__version__, "providers": runner.providers,
               "opset": runner.manifest.get("opset"), "exported_from": source.get("model_dir")},
    )


class OnnxClassifierBackend(ClassifierBackend):
    def __init__(self, runner, device: str) -> None:
        self.runner = runner
        self.config = runner.config
        self.device = device
        self.info = _info(runner, device)

    def run(self, pixel_values: np.ndarray, explain: bool = False) -> ClassifierOutput:
        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if explain:
            probs, _, weights = self.runner.explain(x)
            return ClassifierOutput(np.asarray(probs), [np.asarray(w) for w in weights])
        probs, _ = self.runner.run(x)
        return ClassifierOutput(np.asarray(probs))

    def close(self) -> None:
        self.runner.close()


class OnnxTranslatorBackend(TranslatorBackend):
    def __init__(self, runner, device: str) -> None:
        from mmserve.tasks.translation import load_tokenizer

        self.runner = runner
        self.stepper = runner
        self.config = runner.config
        self.device = "cpu"  # the runner takes and returns CPU torch tensors whatever provider it uses
        self.info = _info(runner, device)
        self.tokenizer = load_tokenizer(runner.directory)

    def close(self) -> None:
        self.runner.close()


def load(path: Path, task: str, options: LoadOptions):
    """Load an ONNX export dir (or export a checkpoint dir into the cache first)."""
    from exporters.onnx import OnnxClassifier, OnnxSeq2SeqStepper

    if (path / WEIGHTS_NAME).is_file():
        path = ensure_export(path, options.onnx_cache_dir)
    runtime = _runtime_options(options)
    if task == "image-classification":
        return OnnxClassifierBackend(OnnxClassifier(path, runtime), options.device)
    return OnnxTranslatorBackend(OnnxSeq2SeqStepper(path, runtime), options.device)
