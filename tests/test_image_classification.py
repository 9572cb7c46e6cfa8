"""Digits data, upload preprocessing, decoding limits, post-processing, training, and the bundled models."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from mmserve.checkpoints import load_model_dir, read_config
from mmserve.data.digits import heldout_pixel_values, load_digits_split, split_from_config
from mmserve.tasks.image_classification import (
    ImageLimits,
    ImagePreprocessing,
    InvalidImageError,
    attention_rollout,
    attention_sparsity,
    decode_image,
    image_to_ink,
    images_to_pixel_values,
    ink_to_pixel_values,
    summarize_attention,
    top_k_predictions,
)
from mmserve.training.classifier import ClassifierTrainConfig, render_ink, train_classifier

REPO = Path(__file__).resolve().parents[1]
BUNDLED = {"multimax": REPO / "models" / "digits-vit", "softmax": REPO / "models" / "digits-vit-softmax"}
PRE = ImagePreprocessing(mean=[0.3], std=[0.4], stroke_range=(3.5, 6.0))


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- data


def test_split_is_fixed_stratified_and_disjoint() -> None:
    train, test = load_digits_split(0, 0.2)
    assert train.ink.shape == (1437, 8, 8) and test.ink.shape == (360, 8, 8)
    assert train.ink.dtype == np.float32 and test.labels.dtype == np.int64
    assert np.bincount(test.labels).min() >= 35 and np.bincount(test.labels).max() <= 37  # stratified
    again_train, again_test = load_digits_split(0, 0.2)
    assert np.array_equal(test.ink, again_test.ink) and np.array_equal(train.labels, again_train.labels)
    other_train, other_test = load_digits_split(1, 0.2)
    assert not np.array_equal(test.ink, other_test.ink)
    # Disjoint as multisets of the 1,797 original images.
    from sklearn.datasets import load_digits

    assert len(train.labels) + len(test.labels) == len(load_digits().target)


def test_optdigits_fill_the_canvas_height() -> None:
    """Why box_size=32: in every grid the ink touches the top and bottom rows (longest side = canvas)."""
    train, test = load_digits_split(0, 0.2)
    ink = np.concatenate([train.ink, test.ink])
    assert (ink[:, 0].sum(1) > 0).all() and (ink[:, -1].sum(1) > 0).all()
    assert (ink.max(axis=(1, 2)) >= 14).all()


def test_heldout_pixel_values_uses_test_split() -> None:
    class Cfg:
        dataset = {"name": "sklearn-digits", "seed": 0, "test_fraction": 0.2, "test_size": 360}
        preprocessing = PRE.model_dump()

    x, y = heldout_pixel_values(Cfg(), 10)
    _, test = load_digits_split(0, 0.2)
    assert x.shape == (10, 1, 8, 8) and torch.equal(y, torch.from_numpy(test.labels[:10]))
    assert torch.allclose(x, ink_to_pixel_values(test.ink[:10], PRE))
    assert heldout_pixel_values(Cfg(), None)[0].shape[0] == 360
    with pytest.raises(ValueError, match="not trained on sklearn-digits"):
        split_from_config({"name": "imagenet"})


# ------------------------------------------------------------------------------------ preprocessing


def test_ink_to_pixel_values() -> None:
    ink = np.full((2, 8, 8), 16.0, dtype=np.float32)
    x = ink_to_pixel_values(ink, PRE)
    assert x.shape == (2, 1, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (1.0 - 0.3) / 0.4))
    assert ink_to_pixel_values(np.zeros((8, 8)), PRE).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"expected ink grids \[B, 8, 8\]"):
        ink_to_pixel_values(np.zeros((2, 7, 8)), PRE)


def test_preprocessing_config_validation() -> None:
    with pytest.raises(ValueError, match="one per channel"):
        ImagePreprocessing(mean=[0.1, 0.2])
    with pytest.raises(ValueError, match="not a multiple"):
        ImagePreprocessing(canvas_size=30)
    again = ImagePreprocessing.model_validate(PRE.model_dump())
    assert again == PRE


def draw_digit(kind: str, size: int, width_frac: float = 0.08, mode: str = "L") -> Image.Image:
    """A synthetic 'drawn' digit: dark ink on white, ~70% of the image tall."""
    img = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(img)
    w = max(1, int(width_frac * size))
    top, bottom = int(0.15 * size), int(0.85 * size)
    if kind == "1":
        d.line([(size // 2, top), (size // 2, bottom)], fill=0, width=w)
    elif kind == "0":
        d.ellipse([int(0.3 * size), top, int(0.7 * size), bottom], outline=0, width=w)
    elif kind == "7":
        d.line([(int(0.3 * size), top), (int(0.7 * size), top), (int(0.4 * size), bottom)], fill=0, width=w)
    if mode == "L":
        return img
    if mode == "RGBA":  # ink opaque, background transparent
        rgba = Image.new("RGBA", img.size, (0, 0, 0, 0))
        rgba.putalpha(Image.eval(img, lambda v: 255 - v))
        return rgba
    if mode == "I;16":
        return Image.fromarray((np.asarray(img, dtype=np.uint16) * 257).astype(np.uint16))
    if mode == "P-transparent":
        p = img.convert("P")
        p.info["transparency"] = p.getpixel((0, 0))
        return p
    if mode == "LA":
        return img.convert("LA")
    return img.convert(mode)


@pytest.mark.parametrize("size", [16, 64, 300, 1000])
def test_drawn_digits_give_plausible_grids(size: int) -> None:
    one = image_to_ink(draw_digit("1", size), PRE)
    assert one.shape == (8, 8) and one.dtype == np.float32
    assert (one[:, 0] == 0).all() and (one[:, -1] == 0).all()  # a thin upright bar: empty outer columns
    assert (one[:, 3:5].sum(1) > 8).all()  # ink in every row of the middle columns
    assert one.max() == pytest.approx(16.0)
    zero = image_to_ink(draw_digit("0", size), PRE)
    assert zero[3:5, 3:5].mean() < 2.0 and zero[0].sum() > 10 and zero[-1].sum() > 10  # a hollow ring
    seven = image_to_ink(draw_digit("7", size), PRE)
    assert seven[0].sum() > seven[-1].sum()  # heavy top bar


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "P-transparent", "I;16", "1", "CMYK"])
def test_modes_agree_with_grayscale(mode: str) -> None:
    reference = image_to_ink(draw_digit("0", 128), PRE)
    grid = image_to_ink(draw_digit("0", 128, mode=mode), PRE)
    assert np.abs(grid - reference).max() < 2.5, mode


def test_light_on_dark_is_auto_detected() -> None:
    dark_on_light = draw_digit("7", 96)
    light_on_dark = Image.eval(dark_on_light, lambda v: 255 - v)
    assert np.allclose(image_to_ink(dark_on_light, PRE), image_to_ink(light_on_dark, PRE))
    fixed = PRE.model_copy(update={"polarity": "dark-on-light"})
    assert not np.allclose(image_to_ink(light_on_dark, fixed), image_to_ink(dark_on_light, fixed))


def test_contrast_is_normalised() -> None:
    """A faint pencil digit on grey paper gives the same grid as black on white."""
    strong = draw_digit("0", 128)
    faint = Image.eval(strong, lambda v: 150 + int(v * 50 / 255))  # ink 150, paper 200
    assert np.abs(image_to_ink(faint, PRE) - image_to_ink(strong, PRE)).max() < 1.0


def _in_shadow(image: Image.Image, strength: float) -> Image.Image:
    """The image on grey paper under a light ramp that darkens it by `strength` from left to right."""
    ink = 1.0 - np.asarray(image, dtype=np.float64) / 255.0
    ramp = 1.0 - strength * np.linspace(0, 1, ink.shape[1])[None, :]
    gray = (0.9 * (1 - ink) + 0.15 * ink) * ramp
    return Image.fromarray((gray * 255).astype(np.uint8))


def test_flatten_background_removes_a_shadow() -> None:
    """A 50 % light ramp across a photo: without flattening the dark side passes as ink and the crop
    takes in half the page; with it the grid is close to the clean digit's."""
    flat = PRE.model_copy(update={"flatten_background": True})
    errors = {False: [], True: []}
    for kind in ("0", "1", "7"):
        clean = image_to_ink(draw_digit(kind, 200, width_frac=0.05), PRE)
        shadowed = _in_shadow(draw_digit(kind, 200, width_frac=0.05), 0.5)
        errors[False].append(np.abs(image_to_ink(shadowed, PRE) - clean).mean())
        errors[True].append(np.abs(image_to_ink(shadowed, flat) - clean).mean())
    # measured: off 5.1 / 0.49 / 4.9, on 0.37 / 0.05 / 0.20 (mean error per cell, of 16)
    assert all(on < 0.5 and on < off / 2 for on, off in zip(errors[True], errors[False])), errors


def test_flatten_background_leaves_even_light_alone() -> None:
    flat = PRE.model_copy(update={"flatten_background": True})
    for kind in ("0", "1", "7"):
        image = draw_digit(kind, 120)
        assert np.array_equal(image_to_ink(image, flat), image_to_ink(image, PRE))
        grey_paper = Image.eval(image, lambda v: 60 + int(v * 0.6))
        assert np.array_equal(image_to_ink(grey_paper, flat), image_to_ink(grey_paper, PRE))


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (64, 64), 255),
        Image.new("L", (64, 64), 0),
        Image.new("RGB", (10, 30), (120, 120, 120)),
        Image.new("RGBA", (40, 40), (0, 0, 0, 0)),
        Image.new("L", (1, 1), 0),
    ],
    ids=["white", "black", "grey", "transparent", "1px"],
)
def test_blank_images_give_zero_grid(image: Image.Image) -> None:
    assert np.array_equal(image_to_ink(image, PRE), np.zeros((8, 8), np.float32))
    x = images_to_pixel_values([image], PRE)
    assert x.shape == (1, 1, 8, 8) and torch.isfinite(x).all()
    assert torch.allclose(x, torch.full_like(x, -0.3 / 0.4))


def test_exif_rotation_is_applied() -> None:
    horizontal = Image.new("L", (120, 60), 255)
    ImageDraw.Draw(horizontal).line([(10, 30), (110, 30)], fill=0, width=8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = png_bytes(horizontal.convert("RGB"), "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(data)
    assert decoded.size == (60, 120)
    grid = image_to_ink(decoded, PRE)
    assert (grid[:, 3:5].sum(1) > 8).all() and grid[:, 0].sum() == 0  # now an upright bar


def test_resize_crop_preprocessing() -> None:
    pre = ImagePreprocessing(
        kind="resize-crop", image_size=16, channels=3, mean=[0.5] * 3, std=[0.25] * 3, resize_size=18
    )
    x = images_to_pixel_values(
        [Image.new("RGB", (40, 20), (255, 0, 0)), draw_digit("0", 30, mode="RGBA")], pre
    )
    assert x.shape == (2, 3, 16, 16)
    assert torch.allclose(x[0, 0], torch.full((16, 16), 2.0), atol=1e-5)
    assert torch.allclose(x[0, 1], torch.full((16, 16), -2.0), atol=1e-5)


# ------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_decode_allowed_formats(fmt: str) -> None:
    image = decode_image(png_bytes(draw_digit("1", 64).convert("RGB"), fmt))
    assert image.size == (64, 64)
    assert image_to_ink(image, PRE)[:, 3:5].sum() > 50


def test_decode_garbage() -> None:
    with pytest.raises(InvalidImageError, match="not an image"):
        decode_image(b"this is certainly not an image" * 10)
    with pytest.raises(InvalidImageError, match="empty upload"):
        decode_image(b"")


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_decode_unsupported_format(fmt: str) -> None:
    with pytest.raises(InvalidImageError, match=f"unsupported image format {fmt}"):
        decode_image(png_bytes(draw_digit("1", 32), fmt))


def test_decode_truncated_png() -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8))
    data = png_bytes(noisy)
    with pytest.raises(InvalidImageError, match="truncated or corrupt PNG"):
        decode_image(data[: len(data) // 2])


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixel data is a few bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decode_bombs_refused_from_header() -> None:
    with pytest.raises(InvalidImageError, match="too many pixels"):
        decode_image(_png_with_declared_size(100_000, 100_000))  # beyond PIL's own bomb limit
    with pytest.raises(InvalidImageError, match=r"header declares 6000x6000 = 36000000 pixels"):
        decode_image(_png_with_declared_size(6000, 6000))  # under PIL's limit, over ours
    with pytest.raises(InvalidImageError, match="too many pixels"):
        decode_image(png_bytes(draw_digit("1", 64)), ImageLimits(max_pixels=1000))


def test_decode_size_limit() -> None:
    with pytest.raises(InvalidImageError, match="more than the limit of 100 bytes"):
        decode_image(png_bytes(draw_digit("1", 64)), ImageLimits(max_bytes=100))


# ----------------------------------------------------------------------------------- postprocessing


def test_top_k_predictions() -> None:
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    out = top_k_predictions(probs, ["a", "b", "c"], k=2)
    assert out[0]["label"] == "b" and out[0]["score"] == pytest.approx(0.7)
    assert [p["label"] for p in out[0]["top_k"]] == ["b", "c"]
    assert [p["label"] for p in out[1]["top_k"]] == ["a", "c"]
    assert len(top_k_predictions(probs, ["a", "b", "c"], k=99)[0]["top_k"]) == 3
    with pytest.raises(ValueError, match="3 class scores but 2 labels"):
        top_k_predictions(probs, ["a", "b"], 1)


def test_rollout_hand_computed() -> None:
    torch.manual_seed(0)
    weights = [torch.softmax(torch.randn(2, 3, 5, 5), -1) for _ in range(3)]
    rollout = attention_rollout(weights)
    assert rollout.shape == (2, 5)
    assert torch.allclose(rollout.sum(-1), torch.ones(2), atol=1e-6)
    expected = torch.eye(5).expand(2, 5, 5).double()
    for w in weights:
        a = 0.5 * w.double().mean(1) + 0.5 * torch.eye(5)
        expected = a @ expected
    assert torch.allclose(rollout.double(), expected.mean(1), atol=1e-6)
    uniform = attention_rollout([torch.eye(4).expand(1, 2, 4, 4)])
    assert torch.allclose(uniform, torch.full((1, 4), 0.25))


def test_sparsity_definition() -> None:
    w = torch.tensor([[[[0.5, 0.5, 0.0, 0.0], [0.9995, 0.0005, 0.0, 0.0]]]])  # [1, 1, 2, 4]
    assert attention_sparsity([w], 1e-3).item() == pytest.approx(5 / 8)
    assert attention_sparsity([w], 0.0).item() == pytest.approx(4 / 8)
    summary = summarize_attention([w.expand(1, 1, 2, 4)[:, :, :, :2].contiguous().expand(1, 1, 2, 2)])
    assert summary.zero_fraction.item() == 0.0


# ------------------------------------------------------------------------------------------ training


def test_training_is_reproducible(tmp_path: Path) -> None:
    cfg = ClassifierTrainConfig(
        epochs=2,
        embed_dim=16,
        depth=1,
        num_heads=2,
        max_train_samples=96,
        batch_size=32,
        roundtrip_variants=1,
        warmup_epochs=1,
        threads=1,
        pen_samples=20,
        typed_samples=20,
        heldout_per_digit=0,
    )
    a = train_classifier(cfg, tmp_path / "a", show_progress=False, log=lambda _: None)
    b = train_classifier(cfg, tmp_path / "b", show_progress=False, log=lambda _: None)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    assert a.test_correct == b.test_correct
    config = read_config(tmp_path / "a")
    assert config.labels == [str(i) for i in range(10)]
    assert config.dataset["seed"] == 0 and config.dataset["test_fraction"] == 0.2
    assert config.metrics["test_total"] == 360 and config.metrics["params"] == a.params
    assert config.metrics["synthetic_train_samples"] == 40
    assert config.dataset["synthetic"]["pen_samples"] == 20 and "Liberation" in config.dataset["synthetic"]["training_fonts"]
    assert list(config.metrics["sources"]) == ["sklearn-test"]
    assert config.metrics["sources"]["sklearn-test"]["correct"] == a.test_correct
    ImagePreprocessing.model_validate(config.preprocessing)


def test_train_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmserve.cli import app

    out = tmp_path / "tiny"
    args = [
        "train",
        "classifier",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--embed-dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--no-augment",
        "--threads",
        "1",
        "--attention-fn",
        "softmax",
        "--heldout-per-digit",
        "2",
    ]
    monkeypatch.setattr("sys.argv", ["mmserve", *args])  # what the console script would see
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    loaded = load_model_dir(out)
    assert loaded.architecture.attention_fn == "softmax"
    card = (out / "README.md").read_text()
    assert "train classifier --out" in card and "SoftMax" in card
    sources = loaded.config.metrics["sources"]
    assert set(sources) == {"sklearn-test", "heldout-fonts", "heldout-pen", "heldout-photo"}
    assert sources["heldout-fonts"]["total"] == 20 and sources["heldout-pen"]["total"] == 20
    assert len(sources["heldout-pen"]["per_digit"]) == 10 and "22 DejaVu fonts (held out)" in card
    bad = CliRunner().invoke(app, ["train", "classifier", "--out", str(out), "--heads", "5"])
    assert bad.exit_code != 0


# ------------------------------------------------------------------------------------ bundled models


@pytest.fixture(scope="module", params=["multimax", "softmax"])
def bundled(request):
    return load_model_dir(BUNDLED[request.param])


def test_bundled_reaches_reported_accuracy(bundled) -> None:
    """The model loads, its manifest verifies, and the held-out accuracy is exactly the reported one."""
    x, y = heldout_pixel_values(bundled.config, None)
    with torch.no_grad():
        probs, logits = bundled.model.classify(x)
    correct = int((probs.argmax(1) == y).sum())
    metrics = bundled.config.metrics
    assert correct == metrics["test_correct"] and len(y) == metrics["test_total"]
    assert correct / len(y) == metrics["test_accuracy"]
    assert metrics["test_accuracy"] >= 0.985  # the floor for the scikit-learn figure, both twins
    assert torch.allclose(probs, torch.softmax(logits, -1), atol=1e-6)
    size = (bundled.directory / "model.safetensors").stat().st_size
    assert size < 3 * 1024 * 1024


def test_bundled_classifies_upscaled_rendered_test_digits(bundled) -> None:
    """Test-split grids drawn as 256x256 dark-on-light PNGs go through the full upload path."""
    _, test = split_from_config(bundled.config.dataset)
    pre = ImagePreprocessing.model_validate(bundled.config.preprocessing)
    images = [decode_image(png_bytes(render_ink(g, 256, Image.Resampling.BILINEAR))) for g in test.ink]
    with torch.no_grad():
        probs, _ = bundled.model.classify(images_to_pixel_values(images, pre))
    accuracy = float((probs.argmax(1).numpy() == test.labels).mean())
    print(f"\n{bundled.config.name}: upscaled rendered test digits {accuracy:.4f}")
    assert accuracy >= 0.95, accuracy  # measured 0.9917 on both bundled models


# Prefix sizes and floors of the cheap held-out recheck. Each prefix is a fixed sample of the full set;
# its floor sits 3 binomial standard errors of the prefix below the goal (fonts 95 %: n = 220,
# one rendering of each digit in each of the 22 fonts, sigma 1.5 points -> 0.90; pen 97 %: n = 300,
# sigma 1.0 point -> 0.94) or, for the photos, which have no goal, below the lower of the two models'
# full figures (96.6 %: n = 200, sigma 1.3 points -> 0.92). The full figures are recomputed exactly
# by `python benchmarks/eval_digits.py --check`.
HELDOUT_RECHECK = {"heldout-fonts": (22, 0.90), "heldout-pen": (30, 0.94), "heldout-photo": (20, 0.92)}


def test_bundled_reads_heldout_fonts_and_pen_digits(bundled) -> None:
    """Typed digits in fonts training never saw and pen digits from a stroke model it never saw."""
    from mmserve.training.digits_eval import evaluate_sources

    pre = ImagePreprocessing.model_validate(bundled.config.preprocessing)
    recorded = bundled.config.metrics["sources"]
    for source, (per_digit, floor) in HELDOUT_RECHECK.items():
        fig = evaluate_sources(bundled.model, pre, bundled.config.dataset, [source], per_digit)[source]
        print(f"\n{bundled.config.name} {source}: {fig['correct']}/{fig['total']} (full set {recorded[source]['accuracy']:.4f})")
        assert fig["total"] == 10 * per_digit
        assert fig["accuracy"] >= floor, (source, fig)
        assert recorded[source]["total"] > fig["total"]  # the card's figure is over the whole set


def test_box_size_20_would_break_the_round_trip() -> None:
    """The design choice documented in the module: fitting the ink to a 20-pixel box (MNIST style)
    instead of the whole 32-pixel canvas (what the optdigits grids show) ruins upload accuracy."""
    loaded = load_model_dir(BUNDLED["multimax"])
    _, test = split_from_config(loaded.config.dataset)
    pre = ImagePreprocessing.model_validate(loaded.config.preprocessing)
    mnist_style = ImagePreprocessing.model_validate({**pre.model_dump(), "box_size": 20})
    images = [render_ink(g, 64, Image.Resampling.BILINEAR) for g in test.ink[:120]]
    figures = {}
    for name, p in (("box 32", pre), ("box 20", mnist_style)):
        with torch.no_grad():
            probs, _ = loaded.model.classify(images_to_pixel_values(images, p))
        figures[name] = float((probs.argmax(1).numpy() == test.labels[:120]).mean())
    print(f"\nround-trip accuracy on 120 test digits: {figures}")
    assert figures["box 32"] >= 0.95 and figures["box 20"] < 0.6


def test_bundled_multimax_attention_explain() -> None:
    loaded = load_model_dir(BUNDLED["multimax"])
    x, _ = heldout_pixel_values(loaded.config, 8)
    with torch.no_grad():
        _, weights = loaded.model.forward_with_attention(x)
    summary = summarize_attention(weights)
    assert summary.rollout.shape == (8, 16)
    assert torch.allclose(summary.rollout.sum(-1), torch.ones(8), atol=1e-5)
    assert ((summary.sparsity >= 0) & (summary.sparsity <= 1)).all()


def test_bundled_reads_printed_digits(bundled) -> None:
    """Digits printed with Pillow's bundled font at three sizes and three stroke weights, placed off
    centre. Pillow's font is one of the training fonts (issue 12), so this checks the upload path on
    typed digits, not generalisation: the held-out fonts are measured by the test above. Measured
    0.77 (MultiMax) / 0.79 (SoftMax): this font's 5 is read as 6 at every weight, and with an outline
    of 6-10 % of the font size (heavier than training's 0-4 %) the closed 6 and 9 become 0."""
    pre = ImagePreprocessing.model_validate(bundled.config.preprocessing)
    images, labels = [], []
    for size in (48, 96, 200):
        font = ImageFont.load_default(size=size)
        for stroke in (0.03, 0.06, 0.1):
            for digit in range(10):
                img = Image.new("L", (2 * size, 2 * size), 255)
                ImageDraw.Draw(img).text(
                    (size // 2, size // 4),
                    str(digit),
                    fill=0,
                    font=font,
                    stroke_width=int(stroke * size),
                    stroke_fill=0,
                )
                images.append(img)
                labels.append(digit)
    with torch.no_grad():
        probs, _ = bundled.model.classify(images_to_pixel_values(images, pre))
    accuracy = float((probs.argmax(1).numpy() == np.array(labels)).mean())
    print(f"\n{bundled.config.name}: printed digits {accuracy:.4f}")
    assert accuracy >= 0.5, accuracy


def test_large_image_is_reduced_first() -> None:
    """A 3000x3000 upload is box-reduced before float conversion and gives the same grid as 300x300."""
    from mmserve.tasks.image_classification import image_to_grayscale

    big, small = draw_digit("0", 3000), draw_digit("0", 300)
    assert max(image_to_grayscale(big).shape) <= 1024
    assert np.abs(image_to_ink(big, PRE) - image_to_ink(small, PRE)).max() < 2.0
