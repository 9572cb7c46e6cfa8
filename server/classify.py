"""/classify behind the HTTP layer: uploads -> validated images -> pixel rows -> dynamic batcher ->
backend -> predictions. Preprocessing and post-processing are `mmserve.tasks.image_classification`
with the model's own config, so the server can never disagree with training or parity.

Decoding and preprocessing run before queueing (threads or worker processes, see preprocess.py): a bad
image is refused with its reason without costing a model slot, and the model worker only sees tensors.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional

import numpy as np
import torch

from mmserve.tasks.image_classification import (
    ImageLimits,
    ImagePreprocessing,
    summarize_attention,
    top_k_predictions,
)

from .backends import ClassifierBackend
from .batching import BatchPolicy, DynamicBatcher
from .errors import ApiError
from .metrics import Metrics
from .preprocess import Preprocessor
from .wire import Row

__all__ = ["ServedClassifier", "SPARSITY_THRESHOLD"]

SPARSITY_THRESHOLD = 1e-3


class ServedClassifier:
    """One classifier model: its backend, batcher, preprocessing and limits.

    In an HTTP frontend process (`mmserve serve --frontends N`) `backend` is only the model's
    description (`server.frontend.RemoteModel`) and `batcher` forwards items to the engine process,
    which runs this same class with the real backend and batcher: one code path for both halves."""

    task = "image-classification"

    def __init__(self, backend: ClassifierBackend, policy: BatchPolicy, limits: ImageLimits, metrics: Metrics,
                 preprocess_processes: int = 0, run_in_threads: Optional[Callable[..., Awaitable[Any]]] = None,
                 batcher: Any = None):
        self.backend = backend
        self.name = backend.name
        self.labels: list[str] = list(backend.config.labels or [])
        if not self.labels:
            raise ValueError(f"classifier {self.name!r} has no labels in its config.json")
        self.preprocessing = ImagePreprocessing.model_validate(backend.config.preprocessing)
        arch = backend.config.model_architecture()
        self.grid = arch.img_size // arch.patch_size
        self.input_shape = (arch.in_chans, arch.img_size, arch.img_size)  # one row of pixel values
        self.attention_fn = getattr(arch, "attention_fn", None)  # multimax | softmax: what a comparison shows
        self.image_limits = limits
        self.preprocess = Preprocessor(self.preprocessing, limits, preprocess_processes, run_in_threads)
        self.batcher = batcher if batcher is not None else DynamicBatcher(self.name, self._run_batch, policy, metrics)

    # ------------------------------------------------------------------ worker side (one thread)

    def _run_batch(self, explain: bool, rows: list[np.ndarray]) -> list[Row]:
        stage = getattr(self.backend, "input_buffer", None)  # duck-typed backends may lack it
        batch = stage((len(rows), *rows[0].shape), rows[0].dtype) if stage else np.empty(
            (len(rows), *rows[0].shape), rows[0].dtype)
        np.stack(rows, out=batch)  # the one copy: rows (views of the frontends' frames) -> model input
        out = self.backend.run(batch, explain=explain)
        rankings = top_k_predictions(out.probs, self.labels, k=len(self.labels))
        explanations: list[Optional[dict[str, Any]]] = [None] * len(rows)
        if explain:
            if not out.attentions:
                raise RuntimeError(f"backend {self.backend.info.backend!r} returned no attention weights")
            summary = summarize_attention([torch.from_numpy(np.asarray(w)) for w in out.attentions],
                                          SPARSITY_THRESHOLD)
            rollout = summary.rollout.reshape(len(rows), self.grid, self.grid).tolist()
            explanations = [
                {
                    "grid": [self.grid, self.grid],
                    "attention": rollout[i],
                    "sparsity": float(summary.sparsity[i]),
                    "zero_fraction": float(summary.zero_fraction[i]),
                    "threshold": SPARSITY_THRESHOLD,
                }
                for i in range(len(rows))
            ]
        return [Row(r, e) for r, e in zip(rankings, explanations)]

    # ------------------------------------------------------------------ response

    def check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= len(self.labels):
            raise ApiError(422, "invalid_request", f"top_k must be between 1 and {len(self.labels)} "
                                                   f"(the number of labels), got {top_k}")

    async def classify(self, rows: list[np.ndarray], top_k: int, explain: bool, request_id: str) -> list[dict]:
        results: list[Row] = await self.batcher.submit(rows, key=bool(explain), request_id=request_id)
        predictions = []
        for row in results:
            ranking = row.ranking
            prediction = {"label": ranking["label"], "score": ranking["score"], "top_k": ranking["top_k"][:top_k]}
            if row.explanation is not None:
                prediction["explanation"] = row.explanation
            predictions.append(prediction)
        return predictions

    async def probabilities(self, rows: list[np.ndarray], request_id: str) -> np.ndarray:
        """[N, labels] class probabilities in label order, through the same batcher as `classify`
        (the Open Inference Protocol's tensor answer; server/v2.py)."""
        results: list[Row] = await self.batcher.submit(rows, key=False, request_id=request_id)
        index = {label: i for i, label in enumerate(self.labels)}
        probs = np.zeros((len(results), len(self.labels)), dtype=np.float32)
        for i, row in enumerate(results):
            for entry in row.ranking["top_k"]:
                probs[i, index[entry["label"]]] = entry["score"]
        return probs

    def close(self) -> None:
        self.preprocess.close()

    def model_info(self) -> dict[str, Any]:
        return {"labels": self.labels, "extra": {"patch_grid": [self.grid, self.grid],
                                                  "preprocessing": self.preprocessing.kind,
                                                  "attention_fn": self.attention_fn}}

