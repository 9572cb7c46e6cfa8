"""scikit-learn's handwritten digits (UCI optdigits test set): 1,797 ink grids of 8x8, values 0..16.

The data ships inside scikit-learn (no network). The train/test split is a stratified split fixed by
(seed, test_fraction); both go into config.json["dataset"] so anyone (parity checks, the accuracy
test) can regenerate exactly the held-out images the reported accuracy was measured on.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np
import torch

__all__ = [
    "DATASET_NAME",
    "DigitsSplit",
    "load_digits_split",
    "dataset_config",
    "split_from_config",
    "heldout_pixel_values",
]

DATASET_NAME = "sklearn-digits"
DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 0.2


class DigitsSplit(NamedTuple):
    """One side of the split: ink grids [n, 8, 8] float32 in 0..16 and labels [n] int64."""

    ink: np.ndarray
    labels: np.ndarray


def load_digits_split(
    seed: int = DEFAULT_SEED, test_fraction: float = DEFAULT_TEST_FRACTION
) -> tuple[DigitsSplit, DigitsSplit]:
    """The fixed stratified (train, test) split of the 1,797 digits for this seed and fraction."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = digits.images.astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels, shuffle=True
    )
    return DigitsSplit(x_train, y_train), DigitsSplit(x_test, y_test)


def dataset_config(seed: int, test_fraction: float, train_size: int, test_size: int) -> dict[str, Any]:
    """The config.json["dataset"] entry: enough to regenerate the split."""
    import sklearn

    return {
        "name": DATASET_NAME,
        "source": "sklearn.datasets.load_digits (UCI optdigits, bundled with scikit-learn)",
        "split": "stratified, sklearn.model_selection.train_test_split(shuffle=True, stratify=labels)",
        "seed": seed,
        "test_fraction": test_fraction,
        "train_size": train_size,
        "test_size": test_size,
        "sklearn_version": sklearn.__version__,
    }


def split_from_config(dataset: dict[str, Any]) -> tuple[DigitsSplit, DigitsSplit]:
    """Regenerate the split recorded in a model's config.json["dataset"]."""
    if dataset.get("name") != DATASET_NAME:
        raise ValueError(f"model was not trained on {DATASET_NAME} (dataset: {dataset.get('name')!r})")
    train, test = load_digits_split(int(dataset["seed"]), float(dataset["test_fraction"]))
    expected = dataset.get("test_size")
    if expected is not None and len(test.labels) != int(expected):
        raise ValueError(f"regenerated test split has {len(test.labels)} images, config says {expected}")
    return train, test


def heldout_pixel_values(config: Any, n: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` test-split images (all when None) as model input, with their labels.

    `config` is a ModelDirConfig (or anything with .dataset and .preprocessing dicts). Never touches
    the training split, so parity checks run on images the model did not see.
    """
    from mmserve.tasks.image_classification import ImagePreprocessing, ink_to_pixel_values

    _, test = split_from_config(config.dataset)
    pre = ImagePreprocessing.model_validate(config.preprocessing)
    count = len(test.labels) if n is None else max(0, min(int(n), len(test.labels)))
    pixel_values = ink_to_pixel_values(test.ink[:count], pre)
    return pixel_values, torch.from_numpy(test.labels[:count].copy())
