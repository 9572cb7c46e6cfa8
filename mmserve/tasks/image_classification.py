"""Image classification: upload bytes -> pixel values, probabilities -> predictions, attention -> rollout.

Shared by training, parity and serving so the three can never disagree. Two preprocessing kinds:

``ink-grid`` (the bundled digits models). scikit-learn's digits are UCI optdigits: a binary 32x32
bitmap of the digit, then the count of ink pixels in each non-overlapping 4x4 block, i.e. an 8x8 grid of
ink amounts 0..16. Measured on the data (see tests): in every one of the 1,797 grids the ink touches
both the top and the bottom row, and the ink's bounding box is centred vertically at exactly 4.0 blocks
and horizontally at 4.09 +- 0.30, so the NIST normalisation scaled the digit until its *longest* side
(the height, for digits) filled the whole 32-pixel canvas and centred its bounding box. An upload
goes through the same steps, so it lands on the same ink grid as the training data:

    grayscale (EXIF-rotated, transparency over white, 16-bit aware)
    -> ink = inverted intensity (dark ink on a light background; ``polarity="auto"`` also accepts
       light-on-dark by looking at the border)
    -> optionally (``flatten_background``) subtract the slowly varying background (a shadow or a
       vignette across a photo): a quadratic surface fitted to the non-ink pixels
    -> contrast normalisation: background level and ink level from an Otsu split, mapped to 0 and 1
    -> crop to the ink's bounding box
    -> scale the longest side to ``box_size`` (32) keeping the aspect ratio
    -> optionally bring the stroke width into ``stroke_range`` (dilate a thin pen, erode a bold font)
    -> centre in the ``canvas_size`` (32) square (bounding-box centre by default, like the data)
    -> mean ink per 4x4 block x 16 -> 8x8 grid in 0..16 -> optionally rescale so the peak is 16
       (98% of training grids peak at exactly 16)
    -> ``ink_to_pixel_values``: /16, then (x - mean) / std with the training split's statistics.

A blank image (no contrast, or no ink) gives the all-zero ink grid: a defined input, never an error.

``resize-crop`` (imported ImageNet-style checkpoints): RGB, resize the short side, centre crop,
/255, per-channel mean/std (DeiT's evaluation transform).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmserve.errors import UserError

__all__ = [
    "ImagePreprocessing",
    "ImageLimits",
    "InvalidImageError",
    "decode_image",
    "image_to_grayscale",
    "image_to_ink",
    "grid_stroke_width",
    "images_to_pixel_values",
    "ink_to_pixel_values",
    "top_k_predictions",
    "attention_rollout",
    "attention_sparsity",
    "AttentionSummary",
    "summarize_attention",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImagePreprocessing(BaseModel):
    """How an image becomes the model's `pixel_values`; stored as config.json["preprocessing"]."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ink-grid", "resize-crop"] = "ink-grid"
    image_size: int = Field(8, ge=1, description="side of the model input (the ink grid for ink-grid)")
    channels: int = Field(1, ge=1)
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    # ink-grid
    ink_max: float = Field(16.0, gt=0, description="ink amount of a full block (4x4 binary pixels)")
    canvas_size: int = Field(32, ge=1, description="side of the binary-bitmap canvas before blocking")
    box_size: int = Field(32, ge=1, description="the ink's longest side is scaled to this many pixels")
    centering: Literal["box", "mass"] = "box"
    polarity: Literal["dark-on-light", "light-on-dark", "auto"] = "auto"
    min_contrast: float = Field(0.04, ge=0, le=1, description="below this (0..1 range) the image is blank")
    ink_threshold: float = Field(0.35, gt=0, lt=1, description="normalised ink above this is 'ink'")
    noise_floor: float = Field(0.1, ge=0, lt=1, description="normalised ink below this is set to 0")
    stroke_range: Optional[tuple[float, float]] = Field(
        None, description="(min, max) stroke width in canvas pixels; thinner ink is dilated, bolder eroded"
    )
    peak_normalize: bool = True
    flatten_background: bool = Field(
        False, description="subtract a smooth background (uneven light, shadows in photos) before normalising"
    )

    # resize-crop
    resize_size: Optional[int] = Field(None, ge=1, description="short side before the centre crop")
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"

    @model_validator(mode="after")
    def _check(self) -> "ImagePreprocessing":
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.kind == "ink-grid":
            if self.channels != 1:
                raise ValueError("ink-grid preprocessing produces one channel")
            if self.canvas_size % self.image_size:
                raise ValueError(
                    f"canvas_size {self.canvas_size} is not a multiple of image_size {self.image_size}"
                )
            if self.box_size > self.canvas_size:
                raise ValueError("box_size cannot exceed canvas_size")
        return self

    @property
    def block_size(self) -> int:
        """Side of the canvas block that becomes one ink-grid cell (4 for optdigits)."""
        return self.canvas_size // self.image_size


class InvalidImageError(UserError):
    """An upload that is not an acceptable image; the message says precisely why."""


class ImageLimits(BaseModel):
    """What an upload may be: checked before any pixel is decoded."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_pixels: int = Field(25_000_000, ge=1, description="width x height from the header")
    allowed_formats: list[str] = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP", "BMP"])


# --------------------------------------------------------------------------------------------- decoding


def decode_image(data: bytes, limits: Optional[ImageLimits] = None) -> Image.Image:
    """Validate and fully decode an uploaded image; EXIF orientation is applied.

    The header is parsed first and the declared size checked against `limits.max_pixels` *before* any
    pixel data is decoded, so a decompression bomb costs nothing. `img.load()` then decodes
    everything, which is where truncated or corrupt files fail.
    """
    limits = limits or ImageLimits()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImageError(f"expected image bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise InvalidImageError("empty upload: no image data")
    if size > limits.max_bytes:
        raise InvalidImageError(f"image is {size} bytes, more than the limit of {limits.max_bytes} bytes")
    allowed = [f.upper() for f in limits.allowed_formats]
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone may have set; we never accept truncation
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode uploads")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(bytes(data)))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImageError(f"too many pixels (decompression bomb refused): {exc}") from exc
        except UnidentifiedImageError as exc:
            raise InvalidImageError(
                "not an image: the data is not in any recognised image format "
                f"(allowed: {', '.join(allowed)})"
            ) from exc
        except Exception as exc:  # PIL raises many types for a garbled header
            raise InvalidImageError(f"corrupt image header: {type(exc).__name__}: {exc}") from exc
    fmt = (image.format or "unknown").upper()
    if fmt not in allowed:
        raise InvalidImageError(f"unsupported image format {fmt} (allowed: {', '.join(allowed)})")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image declares an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise InvalidImageError(
            f"too many pixels: the header declares {width}x{height} = {width * height} pixels, "
            f"more than the limit of {limits.max_pixels} (possible decompression bomb; nothing was decoded)"
        )
    try:
        image.load()
    except Exception as exc:  # OSError("image file is truncated"), SyntaxError, struct.error, zlib errors
        raise InvalidImageError(f"truncated or corrupt {fmt} data: {type(exc).__name__}: {exc}") from exc
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:
        raise InvalidImageError(f"corrupt EXIF orientation in {fmt} image: {exc}") from exc
    return image


# ------------------------------------------------------------------------------------------ ink grid


WORKING_MAX_SIDE = 1024
"""Larger images are box-reduced to at most this side before float conversion: the digit ends up 32
pixels tall anyway, and a 25-megapixel upload as float64 would otherwise take 200 MB per copy."""


def _reduce(image: Image.Image) -> Image.Image:
    factor = math.ceil(max(image.size) / WORKING_MAX_SIDE)
    return image.reduce(factor) if factor > 1 else image


def image_to_grayscale(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] (1 = white) as float64, whatever the mode; transparency counts as white.

    16-bit and 32-bit modes are scaled by their nominal range instead of PIL's clipping `convert("L")`.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        peak = float(values.max(initial=0))
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":
            top = 65535.0 if peak <= 65535 else peak
        else:
            top = 1.0 if peak <= 1.0 else peak
        reduced = _reduce(Image.fromarray(np.clip(values / top, 0.0, 1.0).astype(np.float32), mode="F"))
        return np.asarray(reduced, dtype=np.float64)
    try:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            gray = Image.alpha_composite(white, rgba).convert("L")
        elif mode in ("1", "L"):
            gray = image.convert("L")
        else:
            gray = image.convert("RGB").convert("L")
    except (ValueError, OSError) as exc:
        raise InvalidImageError(f"cannot convert an image in colour mode {mode} to grayscale: {exc}") from exc
    return np.asarray(_reduce(gray), dtype=np.float64) / 255.0


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the split that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = hist.astype(np.float64)
    w0 = np.cumsum(weight)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weight * centres)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _ink_is_dark(gray: np.ndarray, polarity: str) -> bool:
    if polarity != "auto":
        return polarity == "dark-on-light"
    h, w = gray.shape
    edge = max(1, min(h, w) // 16)
    border = np.concatenate(
        [gray[:edge].ravel(), gray[-edge:].ravel(), gray[:, :edge].ravel(), gray[:, -edge:].ravel()]
    )
    # The background is the majority of the border: light border -> dark ink.
    return float(np.median(border)) >= (float(gray.min()) + float(gray.max())) / 2


_FLAT_ENOUGH = 0.1
"""A fitted background that varies less than this (0..1 ink units) across the image is left alone."""
_BACKGROUND_SIDE = 64
"""The background is fitted on a copy at most this many pixels wide: light changes slowly."""


def _background(ink: np.ndarray, rounds: int = 2) -> Optional[np.ndarray]:
    """The smooth part of an ink map: a quadratic surface fitted to the pixels that are not ink.

    A shadow or a light ramp across a photo, or a vignette, would otherwise pass Otsu's global
    threshold as ink and blow up the crop (measured: a 40 % light ramp across a pen digit changes its
    grid by 0.7 of 16 per cell at the median, 4.5 at the 90th percentile). A quadratic in x and y
    follows ramps and vignettes and cannot follow a stroke; the fit uses only pixels on the
    background side of an Otsu split, refined once after the first fit has levelled the image. On a
    clean scan or canvas the fit is a constant, which the contrast normalisation removes anyway, so
    None is returned and nothing is subtracted.
    """
    h, w = ink.shape
    scale = min(1.0, _BACKGROUND_SIDE / max(h, w))
    small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(
        Image.fromarray(ink.astype(np.float32), mode="F").resize(small_size, Image.Resampling.BOX), np.float64
    )
    a = _quadratic_terms(*small.shape)
    values = small.ravel()
    level, coef = values, np.zeros(6)
    for _ in range(rounds):
        mask = level < _otsu_threshold(np.clip(level, 0.0, 1.0))
        if mask.sum() < 12:
            break
        # Least squares by the 6x6 normal equations, in plain element-wise numpy: a multi-threaded
        # BLAS call here spins its threads on a busy machine and cost 8x the CPU of the whole upload.
        terms = a[mask]
        normal = (terms[:, :, None] * terms[:, None, :]).sum(axis=0)
        try:
            coef = np.linalg.solve(normal, (terms * values[mask, None]).sum(axis=0))
        except np.linalg.LinAlgError:
            break
        level = values - (a * coef).sum(axis=1)
    fitted = (a * coef).sum(axis=1)
    if float(fitted.max() - fitted.min()) < _FLAT_ENOUGH:
        return None  # evenly lit: leave the image exactly as it is
    y = np.linspace(-1, 1, h)[:, None]  # the same surface at full resolution, by broadcasting
    x = np.linspace(-1, 1, w)[None, :]
    return coef[0] + coef[1] * x + coef[2] * y + coef[3] * x * x + coef[4] * x * y + coef[5] * y * y


@lru_cache(maxsize=64)
def _quadratic_terms(rows: int, cols: int) -> np.ndarray:
    """[rows * cols, 6]: 1, x, y, x^2, xy, y^2 on a grid spanning [-1, 1] in both directions."""
    y, x = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    terms = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    terms.setflags(write=False)
    return terms


def normalized_ink(gray: np.ndarray, pre: ImagePreprocessing) -> Optional[np.ndarray]:
    """Ink amount in [0, 1] per pixel (background 0, full ink 1), or None for a blank image."""
    if gray.size == 0 or float(gray.max() - gray.min()) < pre.min_contrast:
        return None
    ink = 1.0 - gray if _ink_is_dark(gray, pre.polarity) else gray.copy()
    shading = _background(ink) if pre.flatten_background else None
    if shading is not None:
        ink = np.clip(ink - shading, 0.0, 1.0)
    threshold = _otsu_threshold(ink)
    background = ink[ink < threshold]
    strokes = ink[ink >= threshold]
    low = float(np.median(background)) if background.size else float(ink.min())
    high = float(np.percentile(strokes, 95)) if strokes.size else float(ink.max())
    if high - low < pre.min_contrast:
        return None
    ink = np.clip((ink - low) / (high - low), 0.0, 1.0)
    ink[ink < pre.noise_floor] = 0.0
    return ink


def _bounding_box(ink: np.ndarray, threshold: float) -> Optional[tuple[int, int, int, int]]:
    rows = np.flatnonzero((ink > threshold).any(axis=1))
    cols = np.flatnonzero((ink > threshold).any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _resize(ink: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-preserving resize of a float ink map (box filter to shrink, bilinear to enlarge)."""
    shrinking = height <= ink.shape[0] and width <= ink.shape[1]
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    out = Image.fromarray(ink.astype(np.float32), mode="F").resize((width, height), resample=resample)
    return np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0)


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask: 2 * area / perimeter (exact for long strips)."""
    area = float(mask.sum())
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1).astype(np.int8)
    perimeter = float(np.abs(np.diff(padded, axis=0)).sum() + np.abs(np.diff(padded, axis=1)).sum())
    return 2.0 * area / max(perimeter, 1.0)


def grid_stroke_width(grid: np.ndarray, pre: ImagePreprocessing) -> float:
    """Stroke width of an ink grid in canvas pixels: upsample to the canvas, threshold at half ink, 2A/P.

    Measured the same way on training grids and on uploads, so the two are comparable (the training
    split's widths are what `stroke_range` is set from).
    """
    up = _resize(np.asarray(grid, dtype=np.float64) / pre.ink_max, pre.canvas_size, pre.canvas_size)
    return _stroke_width(up > 0.5)


def _place(patch: np.ndarray, canvas_size: int, centering: str) -> np.ndarray:
    h, w = patch.shape
    if centering == "mass" and patch.sum() > 0:
        ys = (np.arange(h) + 0.5) @ patch.sum(axis=1) / patch.sum()
        xs = (np.arange(w) + 0.5) @ patch.sum(axis=0) / patch.sum()
        top, left = int(round(canvas_size / 2 - ys)), int(round(canvas_size / 2 - xs))
    else:
        top, left = (canvas_size - h) // 2, (canvas_size - w) // 2
    top = min(max(top, 0), canvas_size - h)
    left = min(max(left, 0), canvas_size - w)
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.float64)
    canvas[top : top + h, left : left + w] = patch
    return canvas


def _to_grid(crop: np.ndarray, pre: ImagePreprocessing) -> np.ndarray:
    """Cropped ink -> longest side box_size -> centred on the canvas -> block means in 0..ink_max."""
    longest = max(crop.shape)
    height = max(1, round(crop.shape[0] * pre.box_size / longest))
    width = max(1, round(crop.shape[1] * pre.box_size / longest))
    canvas = _place(_resize(crop, height, width), pre.canvas_size, pre.centering)
    b = pre.block_size
    blocks = canvas.reshape(pre.image_size, b, pre.image_size, b).mean(axis=(1, 3)) * pre.ink_max
    peak = blocks.max()
    if pre.peak_normalize and peak > 0:
        blocks = blocks * (pre.ink_max / peak)
    return np.clip(blocks, 0.0, pre.ink_max)


def _restroke(crop: np.ndarray, pre: ImagePreprocessing, grid: np.ndarray) -> Optional[np.ndarray]:
    """Dilate (thin pen) or erode (bold font) the ink when its stroke width is outside `stroke_range`.

    Works at a resolution `_WORK` times the canvas so a fraction of a canvas pixel is a whole pixel.
    Returns the re-cropped ink, or None when nothing needs changing (or erosion would erase the ink).
    """
    from PIL import ImageFilter

    low, high = pre.stroke_range or (0.0, math.inf)
    width = grid_stroke_width(grid, pre)
    if width == 0 or low <= width <= high:
        return None
    scale = _WORK * pre.box_size / max(crop.shape)
    work = _resize(crop, max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    target = low if width < low else high
    radius = int(round(abs(target - width) * _WORK / 2))
    if radius < 1:
        return None
    kind = ImageFilter.MaxFilter if width < low else ImageFilter.MinFilter
    out = Image.fromarray(work.astype(np.float32), mode="F").filter(kind(2 * radius + 1))
    out = np.asarray(out, dtype=np.float64)
    box = _bounding_box(out, pre.ink_threshold)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    return out[r0:r1, c0:c1]


_WORK = 4


def image_to_ink(image: Image.Image, pre: ImagePreprocessing) -> np.ndarray:
    """One image -> its [image_size, image_size] ink grid in 0..ink_max (float32), like the training data."""
    if pre.kind != "ink-grid":
        raise ValueError(f"image_to_ink needs ink-grid preprocessing, not {pre.kind!r}")
    blank = np.zeros((pre.image_size, pre.image_size), dtype=np.float32)
    ink = normalized_ink(image_to_grayscale(image), pre)
    if ink is None:
        return blank
    box = _bounding_box(ink, pre.ink_threshold)
    if box is None:
        return blank
    r0, r1, c0, c1 = box
    crop = ink[r0:r1, c0:c1]
    grid = _to_grid(crop, pre)
    if pre.stroke_range is not None:
        restroked = _restroke(crop, pre, grid)
        if restroked is not None:
            grid = _to_grid(restroked, pre)
    return grid.astype(np.float32)


def ink_to_pixel_values(ink: np.ndarray | torch.Tensor, pre: ImagePreprocessing) -> torch.Tensor:
    """Ink grids [B, S, S] (or one [S, S]) in 0..ink_max -> model input [B, 1, S, S], normalised.

    The single definition of the model's input scaling: training, parity and serving all call it.
    """
    if pre.kind != "ink-grid":
        raise ValueError(f"ink_to_pixel_values needs ink-grid preprocessing, not {pre.kind!r}")
    x = torch.as_tensor(np.asarray(ink) if not isinstance(ink, torch.Tensor) else ink, dtype=torch.float32)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[-2:] != (pre.image_size, pre.image_size):
        raise ValueError(f"expected ink grids [B, {pre.image_size}, {pre.image_size}], got {tuple(x.shape)}")
    x = x / pre.ink_max
    return ((x - pre.mean[0]) / pre.std[0]).unsqueeze(1).contiguous()


def _resize_crop(image: Image.Image, pre: ImagePreprocessing) -> torch.Tensor:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("RGB" if pre.channels == 3 else "L")
    resample = Image.Resampling.BICUBIC if pre.interpolation == "bicubic" else Image.Resampling.BILINEAR
    short = pre.resize_size or math.floor(pre.image_size / 0.875)
    w, h = image.size
    scale = short / min(w, h)
    image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), resample=resample)
    w, h = image.size
    left, top = (w - pre.image_size) // 2, (h - pre.image_size) // 2
    image = image.crop((left, top, left + pre.image_size, top + pre.image_size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 255.0
    x = x.unsqueeze(-1) if x.dim() == 2 else x
    x = x.permute(2, 0, 1)
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    return (x - mean) / std


def images_to_pixel_values(images: Sequence[Image.Image], pre: ImagePreprocessing) -> torch.Tensor:
    """Decoded images -> model input [B, C, H, W] following the model's preprocessing config."""
    if len(images) == 0:
        raise ValueError("images_to_pixel_values needs at least one image")
    if pre.kind == "ink-grid":
        return ink_to_pixel_values(np.stack([image_to_ink(img, pre) for img in images]), pre)
    return torch.stack([_resize_crop(img, pre) for img in images])


# ---------------------------------------------------------------------------------- postprocessing


def top_k_predictions(probs: torch.Tensor | np.ndarray, labels: Sequence[str], k: int = 5) -> list[dict]:
    """[B, K] probabilities -> per row {label, score, top_k: [{label, score}, ...]} (k clipped to K)."""
    p = torch.as_tensor(np.asarray(probs) if not isinstance(probs, torch.Tensor) else probs).float()
    if p.dim() != 2:
        raise ValueError(f"expected probabilities [batch, classes], got shape {tuple(p.shape)}")
    if p.shape[1] != len(labels):
        raise ValueError(f"{p.shape[1]} class scores but {len(labels)} labels")
    k = max(1, min(int(k), p.shape[1]))
    scores, indices = torch.topk(p, k, dim=1)
    out = []
    for row_scores, row_idx in zip(scores.tolist(), indices.tolist()):
        top = [{"label": labels[i], "score": float(s)} for s, i in zip(row_scores, row_idx)]
        out.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
    return out


def attention_rollout(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) -> one weight per patch token, [B, N], rows sum to 1.

    Per block: average the heads, add the identity (the residual path) and renormalise the rows;
    multiply through the blocks (later blocks on the left). The model has no class token: it pools by
    the mean over tokens, so the reported weight of a patch is the mean over query rows of the
    rolled-out matrix, i.e. how much the pooled feature draws from each input patch.
    """
    if len(weights) == 0:
        raise ValueError("attention_rollout needs the attention weights of at least one block")
    rollout = None
    for w in weights:
        if w.dim() != 4 or w.shape[-1] != w.shape[-2]:
            raise ValueError(f"expected attention weights [B, H, N, N], got {tuple(w.shape)}")
        a = w.detach().to(torch.float64).mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout.mean(dim=1).to(torch.float32)


def attention_sparsity(weights: Sequence[torch.Tensor], threshold: float = 1e-3) -> torch.Tensor:
    """Per image, the fraction of attention weights below `threshold`, over all blocks, heads, rows, keys.

    With threshold=0 it is the fraction of *exact* zeros (MultiMax can underflow weights to 0; SoftMax
    practically never does). Every block counts in proportion to its number of weights.
    """
    below = sum(
        ((w.detach() < threshold) if threshold > 0 else (w.detach() == 0)).flatten(1).sum(1) for w in weights
    )
    total = sum(w[0].numel() for w in weights)
    return below.to(torch.float32) / total


@dataclass
class AttentionSummary:
    """What the explain endpoint reports: rollout per patch plus two sparsity figures per image."""

    rollout: torch.Tensor  # [B, N], rows sum to 1
    sparsity: torch.Tensor  # [B], fraction of weights < threshold
    zero_fraction: torch.Tensor  # [B], fraction of weights exactly 0
    threshold: float


def summarize_attention(weights: Sequence[torch.Tensor], threshold: float = 1e-3) -> AttentionSummary:
    """Rollout and sparsity in one call."""
    return AttentionSummary(
        rollout=attention_rollout(weights),
        sparsity=attention_sparsity(weights, threshold),
        zero_fraction=attention_sparsity(weights, 0.0),
        threshold=threshold,
    )
