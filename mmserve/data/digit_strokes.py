"""Pen-drawn digits from stroke templates: what a person draws on a canvas, made up from a seed.

Each digit has a few allographs (ways people write it: a 1 with or without a flag and base, a 7 with
or without a crossbar, an open or a closed 4, a straight or curved 9 tail, ...) given as strokes in a
unit box (x right, y down, height 1). Two *different* stroke models turn a template into an image, so
a model trained on one can be measured on digits drawn by the other:

``pen`` (training): one global random affine map (rotation, shear, aspect), a smooth random
displacement field over the whole digit, every stroke drawn as a polyline of constant width.

``brush`` (held out): every stroke displaced on its own (a hand that lifts the pen does not land where
it left off), a random walk across the path (a shaky hand), pressure that tapers at the ends drawn as
overlapping discs, anti-aliased by drawing at twice the size. Its own affine ranges and seeds.

Both return grayscale images with dark ink on white of a random size with the digit at a random size
and position; `digit_pages` then adds paper, lighting and inversion.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["ALLOGRAPHS", "StrokeModel", "draw_digit"]

StrokeModel = Literal["pen", "brush"]
Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 20) -> Stroke:
    """Points on an ellipse from `start` to `end` degrees (y down: 90 is the bottom, -90 the top)."""
    angles = np.radians(np.linspace(start, end, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Each digit: a list of allographs; an allograph is a list of strokes; a stroke a list of points.
ALLOGRAPHS: dict[int, list[list[Stroke]]] = {
    0: [
        [_arc(0.3, 0.5, 0.3, 0.5, -90, 270, 28)],
        [_arc(0.3, 0.5, 0.26, 0.5, -100, 262, 28)],
        [_arc(0.3, 0.5, 0.3, 0.5, -90, 270, 28), [(0.5, 0.15), (0.1, 0.85)]],  # slashed zero
    ],
    1: [
        [[(0.3, 0.0), (0.3, 1.0)]],
        [[(0.08, 0.22), (0.3, 0.0), (0.3, 1.0)]],
        [[(0.08, 0.22), (0.3, 0.0), (0.3, 1.0)], [(0.08, 1.0), (0.52, 1.0)]],
        [[(0.45, 0.0), (0.15, 1.0)]],  # slanted bar
    ],
    2: [
        [_arc(0.3, 0.28, 0.28, 0.28, -165, 35, 16) + [(0.0, 1.0), (0.6, 1.0)]],
        [_arc(0.3, 0.3, 0.28, 0.3, -160, 10, 14) + [(0.3, 0.7), (0.0, 1.0), (0.62, 0.98)]],
        [_arc(0.3, 0.27, 0.27, 0.27, -170, 40, 16) + [(0.05, 0.95), (0.12, 0.85), (0.25, 0.95), (0.6, 1.0)]],
    ],
    3: [
        [_arc(0.3, 0.26, 0.27, 0.26, -160, 90, 16), _arc(0.3, 0.75, 0.3, 0.25, -90, 160, 16)],
        [[(0.0, 0.0), (0.55, 0.0), (0.25, 0.42)] + _arc(0.28, 0.7, 0.3, 0.3, -90, 155, 16)],
        [_arc(0.3, 0.26, 0.26, 0.26, -170, 90, 16) + _arc(0.3, 0.75, 0.3, 0.25, -90, 160, 16)[1:]],
    ],
    4: [
        [[(0.42, 0.0), (0.0, 0.68), (0.62, 0.68)], [(0.46, 0.32), (0.46, 1.0)]],
        [[(0.46, 1.0), (0.46, 0.0), (0.0, 0.68), (0.62, 0.68)]],
        [[(0.1, 0.0), (0.03, 0.6), (0.6, 0.6)], [(0.48, 0.1), (0.48, 1.0)]],  # open top
    ],
    5: [
        [[(0.55, 0.0), (0.08, 0.0), (0.05, 0.45)] + _arc(0.28, 0.68, 0.3, 0.32, -125, 150, 16)],
        [[(0.08, 0.0), (0.05, 0.45)] + _arc(0.28, 0.68, 0.3, 0.32, -125, 150, 16), [(0.08, 0.0), (0.58, 0.0)]],
    ],
    6: [
        [[(0.5, 0.0), (0.2, 0.22), (0.04, 0.55)] + _arc(0.3, 0.72, 0.27, 0.27, 180, 540, 24)],
        [[(0.45, 0.0), (0.12, 0.35)] + _arc(0.3, 0.7, 0.28, 0.3, 200, 560, 24)],
    ],
    7: [
        [[(0.0, 0.0), (0.6, 0.0), (0.2, 1.0)]],
        [[(0.0, 0.0), (0.6, 0.0), (0.2, 1.0)], [(0.15, 0.5), (0.52, 0.5)]],
        [[(0.0, 0.12), (0.05, 0.0), (0.6, 0.0), (0.35, 0.5), (0.3, 1.0)]],
    ],
    8: [
        [_arc(0.3, 0.25, 0.22, 0.25, 90, 450, 20), _arc(0.3, 0.74, 0.28, 0.26, -90, 270, 20)],
        [  # one stroke: down-left S, then back up
            _arc(0.3, 0.25, 0.24, 0.25, 0, -270, 16)
            + _arc(0.3, 0.74, 0.28, 0.26, -90, 270, 24)
            + _arc(0.3, 0.25, 0.24, 0.25, 90, 0, 8)
        ],
    ],
    9: [
        [_arc(0.3, 0.27, 0.27, 0.27, 0, 360, 22), [(0.57, 0.27), (0.56, 1.0)]],
        [_arc(0.3, 0.27, 0.27, 0.27, 0, 360, 22) + [(0.55, 0.6), (0.45, 0.85), (0.2, 1.0)]],
        [_arc(0.28, 0.28, 0.26, 0.28, 10, 370, 22), [(0.56, 0.25), (0.42, 1.0)]],
    ],
}


def _affine(points: np.ndarray, rng: np.random.Generator, rotation: float, shear: float, aspect: tuple) -> np.ndarray:
    angle = math.radians(rng.uniform(-rotation, rotation))
    s = rng.uniform(-shear, shear)
    stretch = rng.uniform(*aspect)
    m = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    m = m @ np.array([[stretch, s], [0.0, 1.0]])
    return points @ m.T


def _field(points: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random displacement: two low-frequency sine waves per axis."""
    out = points.copy()
    for axis in (0, 1):
        for _ in range(2):
            freq = rng.uniform(0.5, 2.0) * 2 * math.pi
            phase = rng.uniform(0, 2 * math.pi)
            along = points[:, 1 - axis] if rng.random() < 0.5 else points[:, axis]
            out[:, axis] += amplitude * rng.uniform(-1, 1) * np.sin(freq * along + phase)
    return out


def _resample(stroke: np.ndarray, step: float) -> np.ndarray:
    """Points every `step` along the polyline (for the brush's per-point effects)."""
    seg = np.linalg.norm(np.diff(stroke, axis=0), axis=1)
    length = np.concatenate([[0.0], np.cumsum(seg)])
    if length[-1] == 0:
        return stroke[:1]
    at = np.linspace(0.0, length[-1], max(2, int(length[-1] / step) + 1))
    return np.stack([np.interp(at, length, stroke[:, 0]), np.interp(at, length, stroke[:, 1])], axis=1)


def _frame(rng: np.random.Generator, strokes: list[np.ndarray]) -> tuple[int, float, np.ndarray]:
    """Canvas size, pixels per unit and offset that put the digit at a random size and position."""
    canvas = int(rng.integers(64, 400))
    allpts = np.concatenate(strokes)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    extent = max(float((hi - lo).max()), 1e-3)
    scale = canvas * rng.uniform(0.3, 0.85) / extent
    size = (hi - lo) * scale
    room = np.maximum(canvas - size, 0)
    offset = rng.uniform(0, 1, 2) * room - lo * scale
    return canvas, scale, offset


def _pen(strokes: list[Stroke], rng: np.random.Generator) -> Image.Image:
    pts = [np.asarray(s, dtype=np.float64) for s in strokes]
    counts = [len(p) for p in pts]
    allpts = _affine(np.concatenate(pts), rng, rotation=14, shear=0.35, aspect=(0.7, 1.3))
    allpts = _field(allpts, rng, amplitude=0.04)
    pts = np.split(allpts, np.cumsum(counts)[:-1])
    canvas, scale, offset = _frame(rng, pts)
    image = Image.new("L", (canvas, canvas), 255)
    draw = ImageDraw.Draw(image)
    width = max(1, int(round(scale * rng.uniform(0.05, 0.16))))
    for p in pts:
        xy = [tuple(v) for v in (p * scale + offset)]
        draw.line(xy, fill=0, width=width, joint="curve")
        for x, y in (xy[0], xy[-1]):
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=0)
    return image


def _brush(strokes: list[Stroke], rng: np.random.Generator) -> Image.Image:
    pts = [np.asarray(s, dtype=np.float64) for s in strokes]
    counts = [len(p) for p in pts]
    allpts = _affine(np.concatenate(pts), rng, rotation=10, shear=0.25, aspect=(0.75, 1.25))
    pts = np.split(allpts, np.cumsum(counts)[:-1])
    moved = []
    for p in pts:  # each stroke lands a little off: its own shift and small rotation about its centre
        centre = p.mean(axis=0)
        angle = math.radians(rng.normal(0, 4))
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        p = (p - centre) @ rot.T + centre + rng.normal(0, 0.025, 2)
        p = _resample(p, 0.01)
        if len(p) > 2:  # shaky hand: a smoothed random walk across the path
            walk = np.cumsum(rng.normal(0, 0.004, p.shape), axis=0)
            kernel = np.ones(7) / 7
            walk = np.stack([np.convolve(walk[:, k], kernel, mode="same") for k in (0, 1)], axis=1)
            p = p + walk - walk.mean(axis=0)
        moved.append(p)
    canvas, scale, offset = _frame(rng, moved)
    big = Image.new("L", (2 * canvas, 2 * canvas), 255)
    draw = ImageDraw.Draw(big)
    base = 2 * scale * rng.uniform(0.025, 0.08)  # radius, in doubled pixels
    for p in moved:
        n = len(p)
        t = np.linspace(0, 1, n)
        pressure = 0.6 + 0.4 * np.sin(np.pi * np.clip(t * 1.2 - 0.1, 0, 1)) ** 0.5
        for (x, y), k in zip(p * 2 * scale + 2 * offset, pressure):
            r = max(1.0, base * k)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=0)
    return big.resize((canvas, canvas), Image.Resampling.BOX)


def draw_digit(digit: int, model: StrokeModel, rng: np.random.Generator) -> Image.Image:
    """One pen-drawn `digit` (a random allograph) by the given stroke model: dark ink on white."""
    choices = ALLOGRAPHS[digit]
    strokes = choices[int(rng.integers(len(choices)))]
    if model == "pen":
        return _pen(strokes, rng)
    if model == "brush":
        return _brush(strokes, rng)
    raise ValueError(f"unknown stroke model {model!r} (pen or brush)")
