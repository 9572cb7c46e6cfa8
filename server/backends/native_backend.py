"""The native backend: a translator's model directory run by mmserve's C++ CPU translator
(`mmserve.models.native`), CTranslate2's way of decoding: the encoder, cached decoder steps and the
whole greedy / beam search of a batch in one call. Float32 on the CPU; the C++ kernels are compiled on
first use (`mmserve kernels build`, cached).

The native runtime is a translator runtime: other tasks (the image classifiers) load on onnxruntime,
so `--backend native` serves a mixed model set; /v1/models names the runtime each model really runs on."""

from __future__ import annotations

import logging
from pathlib import Path

from mmserve.errors import UserError

from .base import Backend, LoadOptions
from .torch_backend import TorchTranslator, load_checkpoint

__all__ = ["load", "NativeTranslatorBackend"]

log = logging.getLogger(__name__)


class NativeTranslatorBackend(TorchTranslator):
    """The torch translator's directory, tokenizer and info, with the native translator as stepper."""

    def __init__(self, loaded, device: str) -> None:
        from mmserve.models.native import NativeTranslator, NativeTranslatorError

        super().__init__(loaded, device)
        try:
            self.stepper = NativeTranslator(self.model)
        except NativeTranslatorError as exc:
            raise UserError(f"{loaded.directory}: the native backend cannot run here: {exc}") from exc
        self.info.backend = "native"
        self.info.extra["runtime"] = "mmserve native C++ translator (float32, CPU)"

    def close(self) -> None:
        self.stepper.close()
        super().close()


def load(path: Path, task: str, options: LoadOptions) -> Backend:
    """Load a translator's model directory onto the native translator (other tasks: onnxruntime)."""
    if task != "translation":
        from .onnxruntime_backend import load as load_onnxruntime

        log.info("%s: %s models run on onnxruntime under --backend native", path, task)
        return load_onnxruntime(path, task, options)
    if options.device != "cpu":
        raise UserError(f"the native backend runs on the CPU, not {options.device!r}")
    return NativeTranslatorBackend(load_checkpoint(path, task, options, backend="native"), "cpu")
