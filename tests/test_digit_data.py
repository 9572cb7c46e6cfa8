"""Synthetic digit data: fonts split into training and held-out sets, the two stroke models, pages."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmserve.data.digit_fonts import FONT_SETS, FontsMissingError, font_files, render_digit
from mmserve.data.digit_pages import on_page
from mmserve.data.digit_sets import heldout_images, images_to_ink, synthetic_recipe, training_grids
from mmserve.data.digit_strokes import ALLOGRAPHS, draw_digit
from mmserve.errors import UserError
from mmserve.tasks.image_classification import ImagePreprocessing, image_to_ink

PRE = ImagePreprocessing(mean=[0.3], std=[0.4], stroke_range=(3.5, 6.0))


def test_training_and_heldout_fonts_are_disjoint_and_complete() -> None:
    training, heldout = font_files("training"), font_files("heldout")
    assert len(heldout) == 22 and all("/DejaVu" in f for f in heldout)
    assert len(training) == 17 and not any("DejaVu" in f for f in training)
    names = {f.rsplit("/", 1)[-1] for f in training}
    assert names.isdisjoint({f.rsplit("/", 1)[-1] for f in heldout})
    assert list(heldout) == sorted(heldout, key=lambda f: f.rsplit("/", 1)[-1])  # stable order for seeds


def test_missing_fonts_name_the_debian_packages(tmp_path) -> None:
    with pytest.raises(FontsMissingError, match="fonts-dejavu-core fonts-dejavu-extra") as err:
        font_files("heldout", (str(tmp_path),))
    assert isinstance(err.value, UserError) and "22 of 22 missing" in str(err.value)
    assert len(FONT_SETS["training"][0]) == 16


@pytest.mark.parametrize("model", ["pen", "brush"])
def test_every_allograph_draws_a_whole_digit(model: str) -> None:
    """Each template drawn by each stroke model is ink on white, inside the image, readable as a grid."""
    rng = np.random.default_rng(0)
    for digit, allographs in ALLOGRAPHS.items():
        for _ in range(3 * len(allographs)):
            image = draw_digit(digit, model, rng)
            gray = np.asarray(image)
            assert image.mode == "L" and gray.max() == 255 and gray.min() < 60
            border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
            assert (border > 128).mean() > 0.9, (digit, model)  # mostly paper at the edges
            assert image_to_ink(image, PRE).max() == pytest.approx(16.0)


def test_stroke_models_differ() -> None:
    pen = draw_digit(3, "pen", np.random.default_rng(5))
    brush = draw_digit(3, "brush", np.random.default_rng(5))
    assert pen.size != brush.size or not np.array_equal(np.asarray(pen), np.asarray(brush))
    assert len(np.unique(np.asarray(brush))) > 2  # anti-aliased, unlike the pen's hard edges
    with pytest.raises(ValueError, match="unknown stroke model"):
        draw_digit(3, "crayon", np.random.default_rng(0))  # type: ignore[arg-type]


def test_pages_read_like_the_clean_digit() -> None:
    """Paper tone, light gradient, noise, blur and light-on-dark all give (nearly) the clean digit's grid."""
    rng = np.random.default_rng(1)
    diffs = []
    for i in range(40):
        clean = render_digit(i % 10, font_files("training")[i % 16], rng, bold=0.03, max_rotation=0)
        page = on_page(clean, rng, clean_prob=0.0)
        diffs.append(np.abs(image_to_ink(page, PRE) - image_to_ink(clean, PRE)).mean())
    assert np.median(diffs) < 1.0 and max(diffs) < 3.0, diffs


def test_heldout_sets_are_fixed_and_prefixes_agree() -> None:
    small = heldout_images("heldout-pen", 2)
    again = heldout_images("heldout-pen", 3)
    assert list(small.labels) == list(range(10)) * 2 and len(again.labels) == 30
    for a, b in zip(small.images, again.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    fonts = heldout_images("heldout-fonts", 22)
    assert len(set(fonts.sources)) == 22 and np.bincount(fonts.labels).tolist() == [22] * 10
    photos = heldout_images("heldout-photo", 1)
    assert len(photos.images) == 10 and all(image.mode == "L" for image in photos.images)
    with pytest.raises(ValueError, match="unknown held-out source"):
        heldout_images("mnist")


def test_training_grids_are_seeded_balanced_and_disjoint_from_heldout() -> None:
    a, labels = training_grids(20, 20, 3, PRE)
    b, _ = training_grids(20, 20, 3, PRE)
    c, _ = training_grids(20, 20, 4, PRE)
    assert a.shape == (40, 8, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels).tolist() == [4] * 10
    heldout = images_to_ink(heldout_images("heldout-pen", 2).images, PRE)
    assert not any(np.array_equal(g, h) for g in a for h in heldout)
    recipe = synthetic_recipe(20, 20, 3)
    assert recipe["pen_seed"] != recipe["typed_seed"] and "DejaVu" not in recipe["training_fonts"]


def test_render_digit_is_dark_on_white() -> None:
    image = render_digit(7, font_files("heldout")[0], np.random.default_rng(0), bold=0.0, max_rotation=0)
    assert isinstance(image, Image.Image) and image.mode == "L"
    gray = np.asarray(image)
    assert gray[0, 0] == 255 and gray.min() < 50
