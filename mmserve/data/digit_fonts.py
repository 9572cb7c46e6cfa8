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

from mmserve.errors import UserError

__all__ = ["FontSet", "FONT_SETS", "font_files", "render_digit", "FontsMissingError", "DEFAULT_FONT"]

FontSet = Literal["training", "heldout"]
DEFAULT_FONT = "pillow-default"
"""Stands for Pillow's bundled scalable font (`ImageFont.load_default(size)`)."""

_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".local/share/fonts"))
_STYLES = ("Regular", "Bold", "Italic", "BoldItalic")
_DEJAVU = (
    "DejaVuMathTeXGyre",
    *(f"DejaVuSans{s}" for s in ("", "-Bold", "-BoldOblique", "-ExtraLight", "-Oblique")),
    *(f"DejaVuSansCondensed{s}" for s in ("", "-Bold", "-BoldOblique", "-Oblique")),
    *(f"DejaVuSansMono{s}" for s in ("", "-Bold", "-BoldOblique", "-Oblique")),
    *(f"DejaVuSerif{s}" for s in ("", "-Bold", "-BoldItalic", "-Italic")),
    *(f"DejaVuSerifCondensed{s}" for s in ("", "-Bold", "-BoldItalic", "-Italic")),
)
FONT_SETS: dict[str, tuple[tuple[str, ...], str]] = {
    # set: (file names, Debian packages that install them)
    "training": (
        tuple(f"Liberation{family}-{style}.ttf" for family in ("Mono", "Sans", "SansNarrow", "Serif") for style in _STYLES),
        "fonts-liberation",
    ),
    "heldout": (tuple(f"{name}.ttf" for name in _DEJAVU), "fonts-dejavu-core fonts-dejavu-extra"),
}


class FontsMissingError(UserError):
    """The fonts a data set is defined by are not installed (the message names the Debian packages)."""


def font_files(which: FontSet, dirs: Optional[tuple[str, ...]] = None) -> tuple[str, ...]:
    """The font set's files, sorted by name (so seeded draws pick the same fonts on every machine).

    `dirs` replaces the search path (default: `MMSERVE_FONT_DIRS`, then the system font directories).
    """
    if dirs is None:
        dirs = tuple(d for d in os.environ.get("MMSERVE_FONT_DIRS", "").split(":") if d) + _FONT_DIRS
    return _font_files(which, dirs)


@lru_cache(maxsize=None)
def _font_files(which: FontSet, dirs: tuple[str, ...]) -> tuple[str, ...]:
    if which not in FONT_SETS:
        raise ValueError(f"unknown font set {which!r} (training or heldout)")
    names, packages = FONT_SETS[which]
    wanted, found = set(names), {}
    for directory in dirs:
        root = Path(directory)
        if root.is_dir():
            for path in sorted(root.rglob("*.ttf")):
                if path.name in wanted:
                    found.setdefault(path.name, str(path))
    missing = sorted(wanted - set(found))
    if missing:
        raise FontsMissingError(
            f"the {which} digit fonts are incomplete: {len(missing)} of {len(names)} missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); install the Debian "
            f"packages {packages}, or point MMSERVE_FONT_DIRS at a directory that has them"
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
