"""The one interface every serving backend implements (the Triton "model"): load from a directory,
warm up, and a batched `run`. Pre/post-processing is not here: it lives in `mmserve.tasks` and runs in
the server, so a new backend (TensorRT, ...) only has to turn a batch of tensors into a batch of tensors.

Thread-safety contract: the server calls `run` from ONE worker thread per model, so a backend need not
be re-entrant. A translator's stepper is the exception when the continuous batcher runs several decode
lanes (server/continuous.py): each lane's thread calls `encode` / `cross_kv` / `decode_step` /
`reorder_kv` on its own batch at the same time as the others, so a stepper must then keep no state
between calls. onnxruntime's (one InferenceSession run from several threads) and torch's are; lanes are
automatic only on onnxruntime, other backends get one lane unless `--decode-lanes` asks for more.
Anything else that calls a backend concurrently (a benchmark's offline loop) must serialise itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["Backend", "ClassifierBackend", "ClassifierOutput", "TranslatorBackend", "LoadOptions", "BackendInfo"]


@dataclass(frozen=True)
class LoadOptions:
    """What a backend loader gets besides the directory: device, threads, export cache."""

    device: str = "cpu"
    intra_op_threads: int = 0
    onnx_cache_dir: Optional[Path] = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackendInfo:
    """What /v1/models reports about a loaded backend."""

    backend: str
    device: str
    source: Path
    weights_sha256: str
    parameters: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """A loaded model on a runtime. `config` is the model directory's `ModelDirConfig` (name, task,
    labels, preprocessing, generation) so the server never needs to know which runtime it talks to."""

    task: str
    config: Any
    info: BackendInfo

    @property
    def name(self) -> str:
        return self.config.name

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run a tiny input through every graph so the first request does not pay for lazy init."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (sessions, CUDA contexts)."""


@dataclass
class ClassifierOutput:
    """probs [B, K]; attentions: per block [B, H, N, N] when explain was asked, else None."""

    probs: np.ndarray
    attentions: Optional[list[np.ndarray]] = None


class ClassifierBackend(Backend):
    task = "image-classification"

    @abstractmethod
    def run(self, pixel_values: np.ndarray, explain: bool = False) -> ClassifierOutput:
        """pixel_values [B, C, H, W] float32 -> class probabilities (+ attention weights if explain)."""

    def input_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Where the batcher stacks a batch's rows before `run`. A GPU backend returns page-locked
        (pinned) host memory here, so the batch reaches the device in ONE asynchronous copy instead of
        a stack, a pin and a copy."""
        return np.empty(shape, dtype)

    def warmup(self) -> None:
        arch = self.config.model_architecture()
        x = np.zeros((1, arch.in_chans, arch.img_size, arch.img_size), dtype=np.float32)
        self.run(x, explain=False)
        self.run(x, explain=True)


class TranslatorBackend(Backend):
    """A seq2seq model exposed through the step API (`stepper`, a `mmserve.models.decoding.Seq2SeqStepper`)
    plus its tokenizer. The server's continuous batcher drives the stepper one decoder step at a time;
    `run` is the plain batched path (offline throughput, the ceiling the benchmark compares against)."""

    task = "translation"
    stepper: Any
    tokenizer: Any

    def run(self, texts: Sequence[str], beam_size: Optional[int] = None,
            max_length: Optional[int] = None) -> list[tuple[str, float]]:
        """Offline batched translation with `mmserve.models.decoding.translate` (model defaults)."""
        from mmserve.models.decoding import translate

        return translate(self.stepper, self.tokenizer, list(texts), beam_size=beam_size, max_length=max_length)

    def warmup(self) -> None:
        """A one-token source through encode, greedy and beam steps (any vocabulary has EOS)."""
        import torch

        from mmserve.models.decoding import beam_search, greedy_search

        g = self.tokenizer.generation
        device = getattr(self, "device", "cpu")
        ids = torch.full((2, 1), g.eos_id, dtype=torch.long, device=device)
        mask = torch.zeros((2, 1), dtype=torch.bool, device=device)
        greedy_search(self.stepper, ids, mask, g.bos_id, g.eos_id, g.pad_id, max_length=3)
        beam_search(self.stepper, ids, mask, g.bos_id, g.eos_id, g.pad_id, max_length=3, beam_size=2)
