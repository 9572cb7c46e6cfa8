"""The PyTorch backend: a model directory (config.json + model.safetensors) run eagerly with
`torch.inference_mode`. The reference the other backends are compared against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmserve.checkpoints import WEIGHTS_NAME, CheckpointError, load_model_dir
from mmserve.checkpoints.model_dir import LoadedModel

from .base import BackendInfo, ClassifierBackend, ClassifierOutput, LoadOptions, TranslatorBackend

__all__ = ["load", "load_checkpoint", "TorchClassifier", "TorchTranslator"]


def _info(loaded: LoadedModel, device: str) -> BackendInfo:
    return BackendInfo(
        backend="torch",
        device=device,
        source=loaded.directory,
        weights_sha256=loaded.weights_sha256,
        parameters=sum(p.numel() for p in loaded.model.parameters()),
        extra={"torch_version": torch.__version__, "threads": torch.get_num_threads()},
    )


class _TorchModel:
    """What both torch backends hold: the loaded directory, its eval-mode model, device and info."""

    def __init__(self, loaded: LoadedModel, device: str) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.device = torch.device(device)
        self.info = _info(loaded, device)


class TorchClassifier(_TorchModel, ClassifierBackend):

    def input_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Pinned host memory on CUDA (not verified here: this project's machines have no GPU). Reused
        while the batch size stays the same: `run` ends with a device->host copy that synchronises, so
        the previous batch's copy out of it has finished before it is overwritten."""
        if self.device.type != "cuda":
            return super().input_buffer(shape, dtype)
        key = (tuple(shape), np.dtype(dtype).str)
        if getattr(self, "_pinned_key", None) != key:
            self._pinned = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
            self._pinned_key = key
        return self._pinned.numpy()

    def run(self, pixel_values: np.ndarray, explain: bool = False) -> ClassifierOutput:
        x = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32)).to(self.device, non_blocking=True)
        with torch.inference_mode():
            if explain:
                logits, weights = self.model.forward_with_attention(x)
                # forward returns the modulated logits seglu(scores); softmax of them IS multimax(scores).
                probs = torch.softmax(logits.float(), dim=-1)
                return ClassifierOutput(probs.cpu().numpy(), [w.float().cpu().numpy() for w in weights])
            probs, _ = self.model.classify(x)
            return ClassifierOutput(probs.float().cpu().numpy())


class TorchTranslator(_TorchModel, TranslatorBackend):
    def __init__(self, loaded: LoadedModel, device: str) -> None:
        from mmserve.tasks.translation import load_tokenizer

        super().__init__(loaded, device)
        self.tokenizer = load_tokenizer(loaded.directory)
        self.stepper = self.model  # MultiMaxTranslator implements the Seq2SeqStepper protocol itself


def load_checkpoint(path: Path, task: str, options: LoadOptions, backend: str = "torch") -> LoadedModel:
    """The model directory for a backend that runs the torch model's weights (torch, native): refuses
    an ONNX export dir with a message saying what to pass instead, and a model of another task."""
    if not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(path, f"the {backend} backend needs a model directory with {WEIGHTS_NAME} "
                                    "(is this an ONNX export? use --backend onnxruntime)")
    if options.intra_op_threads:
        torch.set_num_threads(options.intra_op_threads)
    loaded = load_model_dir(path, options.device)
    if loaded.config.task != task:
        raise CheckpointError(path, f"is a {loaded.config.task!r} model, expected {task!r}")
    return loaded


def load(path: Path, task: str, options: LoadOptions) -> ClassifierBackend | TranslatorBackend:
    """Load a model directory onto eager torch."""
    loaded = load_checkpoint(path, task, options)
    if task == "image-classification":
        return TorchClassifier(loaded, options.device)
    return TorchTranslator(loaded, options.device)
