"""Writes the sample digits in this folder (run with the project's venv: it needs Pillow and numpy).

Why they are files in the repository: the README's curl examples need images, and a fresh machine's
system `python` has no Pillow to draw one. Each sample is a different kind of input a person gives
the classifier; none of them is an image from the training data:

- seven-typed.png     a typed 7 in Pillow's built-in font
- three-drawn.png     a 3 drawn as pen strokes, the way the playground's canvas draws
- four-photo.jpg      a pencil 4 photographed on grey paper: uneven light, noise, a slight tilt, JPEG
- two-chalk.png       a light 2 on a dark board (the preprocessing reads light-on-dark too)

    .venv/bin/python samples/make_samples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent


def typed_seven() -> Image.Image:
    image = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(image).text((32, 32), "7", fill=0, font=ImageFont.load_default(48), anchor="mm")
    return image


def strokes(draw: ImageDraw.ImageDraw, lines: list[list[tuple[float, float]]], width: int, fill: int) -> None:
    for line in lines:
        draw.line(line, fill=fill, width=width, joint="curve")
        for x, y in (line[0], line[-1]):
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=fill)


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 24) -> list[tuple[float, float]]:
    angles = np.radians(np.linspace(start, end, n))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]


def drawn_three() -> Image.Image:
    image = Image.new("L", (140, 140), 255)
    upper = arc(68, 44, 30, 24, 200, 450)
    lower = arc(68, 94, 34, 28, 270, 520)
    strokes(ImageDraw.Draw(image), [upper + lower], width=11, fill=20)
    return image


def photo_four(rng: np.random.Generator) -> Image.Image:
    size = 160
    ink = Image.new("L", (size, size), 0)
    strokes(ImageDraw.Draw(ink), [[(92, 28), (48, 98), (112, 98)], [(92, 28), (92, 136)]], width=9, fill=255)
    ink = ink.rotate(-6, resample=Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1.2))
    yy, xx = np.mgrid[0:size, 0:size] / size
    paper = 205 - 45 * xx - 25 * yy + rng.normal(0, 6, (size, size))  # light falls off to one corner
    pencil = paper - np.asarray(ink, dtype=np.float64) / 255 * 120
    rgb = np.stack([pencil * 1.00, pencil * 0.97, pencil * 0.90], axis=-1)  # warm cast of indoor light
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def chalk_two() -> Image.Image:
    image = Image.new("L", (96, 96), 40)
    top = arc(48, 34, 22, 18, 190, 370)
    strokes(ImageDraw.Draw(image), [top + [(28, 76), (72, 76)]], width=8, fill=230)
    return image


def main() -> None:
    rng = np.random.default_rng(0)
    typed_seven().save(HERE / "seven-typed.png", optimize=True)
    drawn_three().save(HERE / "three-drawn.png", optimize=True)
    photo_four(rng).save(HERE / "four-photo.jpg", quality=85)
    chalk_two().save(HERE / "two-chalk.png", optimize=True)


if __name__ == "__main__":
    main()
