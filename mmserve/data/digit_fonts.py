"""Typed digits: a digit rendered in a TrueType font at a random size, weight, slant and position.

Two disjoint font sets, so that "typed digits" can be measured on fonts the model never saw:

- training: the Liberation fonts (Debian `fonts-liberation`: Sans, Sans Narrow, Serif and Mono, each
  regular/bold/italic/bold italic, metrically Arial/Times/Courier clones) and Pillow's bundled font;
- held out: the 22 DejaVu fonts (Debian `fonts-dejavu-core` + `fonts-dejavu-extra`), the fonts every
  machine of this project has (the issue's 73 % figure was measured on them).

Fonts are looked up in the usual system directories (plus `MMSERVE_FONT_DIRS`, colon-separated); a
missing set is an error that names the Debian packages, never a silently smaller data set.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["FontSet", "font_files", "render_digit", "FontsMissingError", "DEFAULT_FONT"]

FontSet = Literal["training", "heldout"]
DEFAULT_FONT = "pillow-default"
"""Stands for Pillow's bundled scalable font (`ImageFont.load_default(size)`)."""

_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".local/share/fonts"))
_PATTERNS: dict[str, tuple[str, int, str]] = {
    # set: (glob, expected count, Debian packages)
    "training": ("Liberation*.ttf", 16, "fonts-liberation"),
    "heldout": ("DejaVu*.ttf", 22, "fonts-dejavu-core fonts-dejavu-extra"),
}


class FontsMissingError(RuntimeError):
    """The fonts a data set is defined by are not installed."""


@lru_cache(maxsize=None)
def font_files(which: FontSet) -> tuple[str, ...]:
    """The font set's files, sorted by name (so seeded draws pick the same fonts on every machine)."""
    pattern, expected, packages = _PATTERNS[which]
    dirs = [d for d in os.environ.get("MMSERVE_FONT_DIRS", "").split(":") if d] + list(_FONT_DIRS)
    found: dict[str, str] = {}
    for directory in dirs:
        root = Path(directory)
        if root.is_dir():
            for path in sorted(root.rglob(pattern)):
                found.setdefault(path.name, str(path))
    if len(found) < expected:
        raise FontsMissingError(
            f"the {which} digit fonts need {expected} files matching {pattern}, found {len(found)} "
            f"(install the Debian packages {packages}, or point MMSERVE_FONT_DIRS at them)"
        )
    files = tuple(found[name] for name in sorted(found))
    return files + ((DEFAULT_FONT,) if which == "training" else ())


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    if path == DEFAULT_FONT:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


def render_digit(
    digit: int,
    font: str,
    rng: np.random.Generator,
    bold: Optional[float] = None,
    max_rotation: float = 8.0,
) -> Image.Image:
    """`digit` in `font` as dark ink on white: random size, position, optional extra weight and tilt."""
    size = int(rng.integers(16, 160))
    face = _font(font, size)
    stroke = int(round(size * (bold if bold is not None else rng.choice([0, 0, 0, 0.02, 0.04]))))
    left, top, right, bottom = face.getbbox(str(digit), stroke_width=stroke)
    w, h = right - left, bottom - top
    canvas_w = int(w + rng.uniform(0.2, 2.0) * h) + 2
    canvas_h = int(h * rng.uniform(1.2, 2.5)) + 2
    image = Image.new("L", (canvas_w, canvas_h), 255)
    x = rng.uniform(0, canvas_w - w) - left
    y = rng.uniform(0, canvas_h - h) - top
    ImageDraw.Draw(image).text((x, y), str(digit), font=face, fill=0, stroke_width=stroke, stroke_fill=0)
    if max_rotation > 0:
        angle = float(rng.uniform(-max_rotation, max_rotation))
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=255)
    return image
