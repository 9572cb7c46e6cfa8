"""Put a dark-on-white digit on a "page": paper tone, uneven light, noise, blur, or light-on-dark.

Uploads are not clean canvases: a phone photo has grey paper, a light gradient and sensor noise; a
screenshot of a dark-mode app is light ink on black. Training sees these so the preprocessing's
contrast normalisation and polarity detection are exercised on the same kinds of input as in serving.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["on_page", "as_photo"]


def on_page(image: Image.Image, rng: np.random.Generator, clean_prob: float = 0.5) -> Image.Image:
    """`image` (L, dark ink on white) as a random page; `clean_prob` of them stay black on white."""
    if rng.random() < clean_prob:
        return image
    ink = 1.0 - np.asarray(image, dtype=np.float32) / 255.0  # 1 = ink
    h, w = ink.shape
    paper = rng.uniform(0.55, 1.0)
    pen = rng.uniform(0.0, min(0.45, paper - 0.3))
    ys, xs = np.mgrid[0:h, 0:w]
    gx, gy = rng.uniform(-1, 1, 2) * rng.uniform(0, 0.25)
    light = 1.0 + gx * (xs / max(w, 1) - 0.5) + gy * (ys / max(h, 1) - 0.5)
    gray = (paper * (1 - ink) + pen * ink) * light
    gray = gray + rng.normal(0, rng.uniform(0, 0.04), gray.shape)
    if rng.random() < 0.25:  # dark mode / chalk on a board
        gray = 1.0 - gray
    out = Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8), mode="L")
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5)) * max(h, w) / 200))
    return out


def as_photo(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A held-out "phone photo" of the page, stronger than any page training sees: grey paper, a
    30-60 % light ramp in a random direction (a shadow), vignetting, sensor noise, JPEG compression.
    """
    ink = 1.0 - np.asarray(image, dtype=np.float32) / 255.0
    h, w = ink.shape
    ys, xs = np.mgrid[0:h, 0:w]
    u, v = xs / max(w - 1, 1) - 0.5, ys / max(h - 1, 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = 1.0 - rng.uniform(0.3, 0.6) * (0.5 + np.cos(angle) * u + np.sin(angle) * v)
    vignette = 1.0 - rng.uniform(0.0, 0.3) * (u**2 + v**2) * 2
    paper, pen = rng.uniform(0.6, 0.95), rng.uniform(0.05, 0.3)
    gray = (paper * (1 - ink) + pen * ink) * ramp * vignette + rng.normal(0, rng.uniform(0.01, 0.04), ink.shape)
    photo = Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=int(rng.integers(40, 90)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("L")
