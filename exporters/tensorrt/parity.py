"""`tensorrt` / `tensorrt-fp16` backends for `mmserve parity` (registered in exporters.parity_backends).

Engines come from $MMSERVE_PARITY_TENSORRT_DIR when it names a TensorRT export directory of the same
model (built with `mmserve export --format tensorrt`), otherwise they are built into a temp dir for
this run (only the precision asked for). Where TensorRT or a CUDA GPU is missing the factory raises
`BackendUnavailable`, which parity prints as SKIPPED with the reason, never as passed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from exporters.parity_backends import BackendUnavailable, ParityBackend, ParityContext
from plugins.tensorrt.availability import unavailable_reason

__all__ = ["load", "load_fp16", "DIR_ENV"]

DIR_ENV = "MMSERVE_PARITY_TENSORRT_DIR"
_TEMP_DIRS: list[tempfile.TemporaryDirectory] = []  # engines built for this process, removed at exit


def _export_dir(ctx: ParityContext, precision: str) -> Path:
    from .export import TensorRTExportOptions, export_tensorrt, read_tensorrt_manifest

    given = os.environ.get(DIR_ENV)
    if given:
        manifest = read_tensorrt_manifest(given)
        if precision not in manifest.get("precisions", []):
            raise BackendUnavailable(f"${DIR_ENV}={given} has no {precision} engines")
        return Path(given)
    tmp = tempfile.TemporaryDirectory(prefix=f"mmserve-parity-trt-{precision}-")
    _TEMP_DIRS.append(tmp)
    target = Path(tmp.name) / "tensorrt"
    ctx.progress(f"building {precision} TensorRT engines for {ctx.model_dir} in a temp dir (set ${DIR_ENV} to reuse some)")
    export_tensorrt(ctx.model_dir, target, TensorRTExportOptions(precisions=(precision,)), progress=ctx.progress)
    return target


def _factory(ctx: ParityContext, precision: str) -> ParityBackend:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    from .runners import TrtClassifier, TrtSeq2SeqStepper

    directory = _export_dir(ctx, precision)
    name = "tensorrt" if precision == "fp32" else f"tensorrt-{precision}"
    dtype = {"fp32": "float32", "fp16": "float16"}[precision]
    if ctx.config.task == "image-classification":
        runner: Any = TrtClassifier(directory, precision)
        description = _describe(runner)

        def classify(pixel_values: Any) -> tuple[np.ndarray, np.ndarray]:
            probs, logits = runner.run(pixel_values)
            return np.asarray(probs, np.float32), np.asarray(logits, np.float32)

        return ParityBackend(name, dtype, description, classify=classify)
    runner = TrtSeq2SeqStepper(directory, precision)
    return ParityBackend(name, dtype, _describe(runner), stepper=runner)


def _describe(runner: Any) -> str:
    manifest = runner.manifest
    gpu = manifest.get("gpu", {}).get("name") or "GPU"
    mode = "AOT kernel" if manifest.get("plugin", {}).get("aot") else "Python plugin"
    return f"TensorRT {manifest.get('tensorrt_version')} {runner.precision} on {gpu}, MultiMax plugin ({mode})"


def load(ctx: ParityContext) -> ParityBackend:
    """fp32 engines (tolerance row float32)."""
    return _factory(ctx, "fp32")


def load_fp16(ctx: ParityContext) -> ParityBackend:
    """fp16 engines (tolerance row float16)."""
    return _factory(ctx, "fp16")
