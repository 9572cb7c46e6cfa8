"""The synthetic digit sets: what training adds to scikit-learn's digits, and what it is measured on.

Every synthetic image is turned into an ink grid by the *serving* preprocessing (`image_to_ink`), so
training sees exactly what an upload becomes. Training and evaluation sources never overlap:

| set | made by | used for |
|---|---|---|
| training pen digits | stroke model ``pen``, seeds derived from the training seed | training |
| training typed digits | Liberation fonts + Pillow's font, on random pages | training |
| held-out pen digits | stroke model ``brush`` (a different model), seed `HELDOUT_PEN_SEED` | evaluation |
| held-out fonts | the 22 DejaVu fonts, random size and position, seed `HELDOUT_FONT_SEED` | evaluation |
| held-out photos | stroke model ``brush`` as phone photos (`as_photo`), seed `HELDOUT_PHOTO_SEED` | evaluation |
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np
from PIL import Image

from mmserve.tasks.image_classification import ImagePreprocessing, image_to_ink

from .digit_fonts import font_files, render_digit
from .digit_pages import as_photo, on_page
from .digit_strokes import draw_digit

__all__ = [
    "DigitImages",
    "HELDOUT_FONT_SEED",
    "HELDOUT_PEN_SEED",
    "HELDOUT_PHOTO_SEED",
    "HELDOUT_SOURCES",
    "heldout_images",
    "training_grids",
    "images_to_ink",
    "synthetic_recipe",
]

HELDOUT_PEN_SEED = 7_000_001
HELDOUT_FONT_SEED = 7_000_002
HELDOUT_PHOTO_SEED = 7_000_003
HELDOUT_SOURCES = ("heldout-fonts", "heldout-pen", "heldout-photo")


def _pen_seed(seed: int) -> int:
    return seed * 1000 + 1  # never equal to a held-out seed for seeds below 7,000


def _typed_seed(seed: int) -> int:
    return seed * 1000 + 2


class DigitImages(NamedTuple):
    """Images with their labels and where each came from (a font file name or a stroke model)."""

    images: list[Image.Image]
    labels: np.ndarray
    sources: list[str]


def images_to_ink(images: list[Image.Image], pre: ImagePreprocessing) -> np.ndarray:
    """[n, 8, 8] float32 ink grids through the serving preprocessing."""
    return np.stack([image_to_ink(image, pre) for image in images]).astype(np.float32)


def _pen_images(count: int, model: str, seed: int, page: bool, photo: bool = False) -> DigitImages:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        digit = i % 10
        image = draw_digit(digit, model, rng)  # type: ignore[arg-type]
        if photo:
            image = as_photo(image, rng)
        images.append(on_page(image, rng) if page else image)
        labels.append(digit)
    return DigitImages(images, np.asarray(labels, dtype=np.int64), [f"stroke model {model}"] * count)


def _font_images(count: int, fonts: tuple[str, ...], seed: int, page: bool, **render) -> DigitImages:
    rng = np.random.default_rng(seed)
    images, labels, sources = [], [], []
    for i in range(count):
        digit = i % 10
        font = fonts[(i // 10) % len(fonts)]  # every font gets every digit
        image = render_digit(digit, font, rng, **render)
        images.append(on_page(image, rng) if page else image)
        labels.append(digit)
        sources.append(font.rsplit("/", 1)[-1])
    return DigitImages(images, np.asarray(labels, dtype=np.int64), sources)


def heldout_images(source: str, per_digit: Optional[int] = None) -> DigitImages:
    """A held-out evaluation set, always the same images (fixed seeds); `per_digit` takes a prefix.

    heldout-fonts: 5 renderings of each digit in each of the 22 DejaVu fonts (1,100 images), random
    size and position, plain black on white, no tilt or extra weight, as in the issue's measurement.
    heldout-pen: 200 of each digit (2,000) from the ``brush`` stroke model on a white canvas, as the
    page's drawing canvas sends them.
    heldout-photo: 100 of each digit (1,000) from the ``brush`` stroke model (another seed) as phone
    photos (`as_photo`: shadows and JPEG stronger than the training pages).
    """
    if source == "heldout-fonts":
        fonts = font_files("heldout")
        full = 5 * len(fonts)
        n = 10 * min(per_digit or full, full)
        return _font_images(n, fonts, HELDOUT_FONT_SEED, page=False, bold=0.0, max_rotation=0.0)
    if source == "heldout-pen":
        n = 10 * min(per_digit or 200, 200)
        return _pen_images(n, "brush", HELDOUT_PEN_SEED, page=False)
    if source == "heldout-photo":
        n = 10 * min(per_digit or 100, 100)
        return _pen_images(n, "brush", HELDOUT_PHOTO_SEED, page=False, photo=True)
    raise ValueError(f"unknown held-out source {source!r} (one of {', '.join(HELDOUT_SOURCES)})")


def training_grids(
    pen: int, typed: int, seed: int, pre: ImagePreprocessing, progress: Callable[[int], None] = lambda _: None
) -> tuple[np.ndarray, np.ndarray]:
    """`pen` pen-drawn and `typed` font-rendered digits (balanced), on random pages, as ink grids."""
    grids, labels = [], []
    if pen:
        pen_set = _pen_images(pen, "pen", _pen_seed(seed), page=True)
        grids.append(images_to_ink(pen_set.images, pre))
        labels.append(pen_set.labels)
        progress(pen)
    if typed:
        font_set = _font_images(typed, font_files("training"), _typed_seed(seed), page=True)
        grids.append(images_to_ink(font_set.images, pre))
        labels.append(font_set.labels)
        progress(typed)
    if not grids:
        return np.zeros((0, pre.image_size, pre.image_size), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(grids), np.concatenate(labels)


def synthetic_recipe(pen: int, typed: int, seed: int) -> dict:
    """What `training_grids(pen, typed, seed, ...)` generated, for config.json["dataset"]["synthetic"]."""
    fonts = [f.rsplit("/", 1)[-1] for f in font_files("training")] if typed else []
    return {
        "generator": "mmserve.data.digit_sets.training_grids",
        "pen_samples": pen,
        "pen_stroke_model": "pen",
        "pen_seed": _pen_seed(seed),
        "typed_samples": typed,
        "typed_seed": _typed_seed(seed),
        "training_fonts": ", ".join(fonts) if fonts else "-",
        "heldout": {
            "heldout-fonts": f"22 DejaVu fonts, seed {HELDOUT_FONT_SEED}",
            "heldout-pen": f"stroke model brush, seed {HELDOUT_PEN_SEED}",
            "heldout-photo": f"stroke model brush as phone photos, seed {HELDOUT_PHOTO_SEED}",
        },
    }
