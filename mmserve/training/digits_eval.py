"""Per-digit accuracy of a digits classifier on the scikit-learn test split and the held-out sources.

One function computes the figures that training writes into config.json and the model card, that
`benchmarks/eval_digits.py` recomputes, and that the tests recheck on a prefix of each set, so the
three can never disagree about what a figure means.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from mmserve.data.digit_sets import HELDOUT_SOURCES, heldout_images, images_to_ink
from mmserve.data.digits import split_from_config
from mmserve.tasks.image_classification import ImagePreprocessing, ink_to_pixel_values

__all__ = ["SOURCES", "SOURCE_TITLES", "evaluate_sources", "predict_ink"]

SOURCES = ("sklearn-test", *HELDOUT_SOURCES)
SOURCE_TITLES = {
    "sklearn-test": "scikit-learn digits, test split",
    "heldout-fonts": "typed, 22 DejaVu fonts (held out)",
    "heldout-pen": "pen-drawn, stroke model `brush` (held out)",
    "heldout-photo": "pen-drawn `brush`, as phone photos (held out)",
}


@torch.no_grad()
def predict_ink(model: torch.nn.Module, ink: np.ndarray, pre: ImagePreprocessing, batch: int = 512) -> np.ndarray:
    """Predicted class of each ink grid (eval mode, batched)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(ink), batch):
        probs, _ = model.classify(ink_to_pixel_values(ink[start : start + batch], pre))
        out.append(probs.argmax(1).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def _figures(pred: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    per_digit = [
        round(float((pred[labels == d] == d).mean()), 4) if (labels == d).any() else None for d in range(10)
    ]
    correct = int((pred == labels).sum())
    return {"correct": correct, "total": len(labels), "accuracy": correct / max(1, len(labels)), "per_digit": per_digit}


def evaluate_sources(
    model: torch.nn.Module,
    pre: ImagePreprocessing,
    dataset: dict[str, Any],
    sources: Sequence[str] = SOURCES,
    per_digit: Optional[int] = None,
) -> dict[str, dict[str, Any]]:
    """{source: {correct, total, accuracy, per_digit: [10 accuracies]}}.

    `per_digit` limits the held-out sets to their first images (a fixed prefix of the same set, for
    cheap rechecks); the scikit-learn test split is always used whole.
    """
    results = {}
    for source in sources:
        if source == "sklearn-test":
            _, test = split_from_config(dataset)
            ink, labels = test.ink, test.labels
        else:
            images = heldout_images(source, per_digit)
            ink, labels = images_to_ink(images.images, pre), images.labels
        results[source] = _figures(predict_ink(model, ink, pre), labels)
    return results
