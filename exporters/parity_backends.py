"""Backends that `mmserve parity` can compare: a registry of name -> factory.

A factory gets a `ParityContext` (the model directory, a lazily made ONNX export, thread settings)
and returns a `ParityBackend`: for classifiers a `classify(pixel_values) -> (probs, logits)`
callable, for translators a `Seq2SeqStepper`. A backend that cannot run here raises
`BackendUnavailable(reason)`; parity then reports it as SKIPPED with the reason, never as passed.

Registering a new runtime is one line, in any of three ways (the same as the server's backends):

1. `register_parity_backend("tensorrt", factory)` from any imported module;
2. an entry point in the group ``mmserve.parity_backends`` ("name = module:function");
3. a lazy "module:function" string in `_BUILTIN` below. `onnx-reference` runs the custom-node graphs
   on ONNX's reference evaluator (function bodies), `openvino` the portable graphs on OpenVINO's CPU
   plugin (SKIPPED without the `openvino` package). `tensorrt` / `tensorrt-fp16` point at
   `exporters.tensorrt.parity`, whose factories raise BackendUnavailable where the `tensorrt` package
   or a CUDA GPU is missing; a module that does not import at all is reported the same way.
"""

from __future__ import annotations

import importlib
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from mmserve.checkpoints import ModelDirConfig

__all__ = [
    "BackendUnavailable",
    "ParityContext",
    "ParityBackend",
    "ParityFactory",
    "register_parity_backend",
    "available_parity_backends",
    "load_parity_backend",
]


class BackendUnavailable(Exception):
    """The backend cannot run on this machine (package missing, no GPU, not implemented yet)."""


@dataclass
class ParityContext:
    """What a backend factory may use. `onnx_dir()` exports the model on first use when no export
    directory was given, so backends that do not need ONNX never pay for an export."""

    model_dir: Path
    config: ModelDirConfig
    onnx_dir_given: Optional[Path] = None
    threads: int = 0
    providers: Any = None
    progress: Callable[[str], None] = lambda _msg: None
    _tmp: Optional[tempfile.TemporaryDirectory] = field(default=None, repr=False)
    _exported: Optional[Path] = field(default=None, repr=False)

    def onnx_dir(self) -> Path:
        if self.onnx_dir_given is not None:
            return self.onnx_dir_given
        if self._exported is None:
            from exporters.onnx.export import export_onnx

            self._tmp = tempfile.TemporaryDirectory(prefix="mmserve-parity-")
            target = Path(self._tmp.name) / "onnx"
            self.progress(f"exporting {self.model_dir} to ONNX in a temp dir (pass --onnx DIR to reuse one)")
            export_onnx(self.model_dir, target, progress=self.progress)
            self._exported = target
        return self._exported

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._exported = None


@dataclass
class ParityBackend:
    """One runtime's view of the model. `dtype` picks the tolerance row (see exporters.parity)."""

    name: str
    dtype: str = "float32"
    description: str = ""
    classify: Optional[Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]] = None
    stepper: Any = None


ParityFactory = Callable[[ParityContext], ParityBackend]

_BUILTIN: dict[str, str] = {
    "torch": "exporters.parity_backends:torch_backend",
    "onnxruntime": "exporters.parity_backends:onnxruntime_backend",
    "onnx-reference": "exporters.parity_backends:onnx_reference_backend",
    "openvino": "exporters.parity_backends:openvino_backend",
    "tensorrt": "exporters.tensorrt.parity:load",
    "tensorrt-fp16": "exporters.tensorrt.parity:load_fp16",
}
_registry: dict[str, Union[ParityFactory, str]] = dict(_BUILTIN)
_entry_points_loaded = False


def register_parity_backend(name: str, factory: Union[ParityFactory, str], *, replace: bool = False) -> None:
    """Make `--backends NAME` available to `mmserve parity`."""
    if name in _registry and not replace and _registry[name] != _BUILTIN.get(name):
        raise ValueError(f"parity backend {name!r} is already registered (pass replace=True to override)")
    _registry[name] = factory


def _load_entry_points() -> None:
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group="mmserve.parity_backends"):
            _registry.setdefault(ep.name, ep.value)


def available_parity_backends() -> list[str]:
    _load_entry_points()
    return sorted(_registry)


def load_parity_backend(name: str, ctx: ParityContext) -> ParityBackend:
    """Resolve and call the factory; BackendUnavailable when it cannot run here, KeyError if unknown."""
    _load_entry_points()
    if name not in _registry:
        raise KeyError(name)
    factory = _registry[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise BackendUnavailable(f"{factory} cannot be loaded ({exc})") from exc
    return factory(ctx)


# ------------------------------------------------------------------------------- built-in backends


def torch_backend(ctx: ParityContext) -> ParityBackend:
    """The model directory run eagerly in float32 (the reference)."""
    from mmserve.checkpoints import load_model_dir

    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    loaded = load_model_dir(ctx.model_dir)
    model = loaded.model
    description = f"torch {torch.__version__} eager, {torch.get_num_threads()} threads"
    if loaded.config.task == "image-classification":

        @torch.no_grad()
        def classify(pixel_values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            probs, logits = model.classify(pixel_values)
            return probs.numpy(), logits.numpy()

        return ParityBackend("torch", "float32", description, classify=classify)
    return ParityBackend("torch", "float32", description, stepper=model)


def onnxruntime_backend(ctx: ParityContext) -> ParityBackend:
    """The ONNX export on onnxruntime (function bodies inlined)."""
    import onnxruntime as ort

    from exporters.onnx.runtime import OnnxClassifier, OnnxSeq2SeqStepper, RuntimeOptions, apply_thread_policy

    options = RuntimeOptions(providers=ctx.providers, intra_op_threads=ctx.threads)
    apply_thread_policy("onnxruntime", ctx.threads)  # the decoding glue's torch threads (process-wide)
    directory = ctx.onnx_dir()
    if ctx.config.task == "image-classification":
        runner = OnnxClassifier(directory, options)
        description = f"onnxruntime {ort.__version__} {','.join(runner.providers)}"
        return ParityBackend("onnxruntime", "float32", description, classify=lambda x: runner.run(x))
    stepper = OnnxSeq2SeqStepper(directory, options)
    description = f"onnxruntime {ort.__version__} {','.join(stepper.providers)}"
    return ParityBackend("onnxruntime", "float32", description, stepper=stepper)


def _runner_on_sessions(ctx: ParityContext, open_session: Callable[[Path], Any]):
    """mmserve's ONNX runner (classifier or seq2seq stepper) with its sessions opened by
    `open_session(path of the graph file)` instead of onnxruntime: the feeds, output names and
    decoding loop stay those the server uses, only the runtime under them changes."""
    from exporters.onnx.runtime import OnnxClassifier, OnnxSeq2SeqStepper

    base = OnnxClassifier if ctx.config.task == "image-classification" else OnnxSeq2SeqStepper

    class Runner(base):  # type: ignore[valid-type, misc]
        def session(self, filename: str):
            if filename not in self._sessions:
                self._sessions[filename] = open_session(self.directory / filename)
            return self._sessions[filename]

    return Runner(ctx.onnx_dir())


def _backend_from_runner(name: str, description: str, runner: Any, config: ModelDirConfig) -> ParityBackend:
    if config.task == "image-classification":
        return ParityBackend(name, "float32", description, classify=lambda x: runner.run(x))
    return ParityBackend(name, "float32", description, stepper=runner)


def onnx_reference_backend(ctx: ParityContext) -> ParityBackend:
    """The custom-node graphs on ONNX's reference evaluator, through their function bodies (slow:
    numpy, one op at a time; an independent check of the bodies onnxruntime inlines)."""
    import onnx

    from exporters.onnx.reference import ReferenceSession

    runner = _runner_on_sessions(ctx, ReferenceSession)
    return _backend_from_runner("onnx-reference", f"onnx {onnx.__version__} ReferenceEvaluator (function bodies)",
                                runner, ctx.config)


def openvino_backend(ctx: ParityContext) -> ParityBackend:
    """The portable graphs (portable/*.onnx) on OpenVINO's CPU plugin in float32."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"openvino is not installed ({exc}); pip install openvino") from exc
    from exporters.onnx.openvino_session import OpenVINOSession
    from exporters.onnx.portable import portable_filename

    runner = _runner_on_sessions(
        ctx, lambda path: OpenVINOSession(path.parent / portable_filename(path.name), threads=ctx.threads))
    if not runner.manifest.get("options", {}).get("portable", False):
        raise BackendUnavailable(f"{runner.directory} has no portable graphs (exported with --no-portable, or by an mmserve without them)")
    return _backend_from_runner("openvino", f"openvino {openvino.__version__} CPU f32 (portable graphs)",
                                runner, ctx.config)
