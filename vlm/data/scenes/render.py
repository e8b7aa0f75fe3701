"""Shapes drawn as analytic masks: every pixel's coverage is counted exactly on a fixed sub-pixel lattice, so an image
depends on nothing but the scene (no drawing library whose rasterisation changes between versions).

A pixel ``(px, py)`` covers the square ``[px, px+1) x [py, py+1)``; an object is centred on the lattice point
``(cx, cy)`` (a pixel corner) with half-extent ``h``. Coverage is the share of :data:`SUBSAMPLES` ² points of the pixel
that fall inside the shape, and the pixel is blended in integer arithmetic:
``(background * (n - k) + colour * k + n // 2) // n`` — the same bytes on every machine.

Shapes (``dx, dy`` from the centre, ``y`` pointing down):

* ``square``: ``|dx| <= h`` and ``|dy| <= h`` (edges on pixel boundaries: exactly ``2h`` pixels wide, no blending);
* ``circle``: ``dx² + dy² <= h²``;
* ``triangle``: apex up, base down: ``dy <= h`` and ``|dx| <= (dy + h) / 2``;
* ``cross``: a plus sign of two bars ``2h`` long and ``2h/3`` thick.
"""

from __future__ import annotations

import numpy as np

#: Sub-pixel samples per side.
SUBSAMPLES = 4

SHAPES = ("square", "circle", "triangle", "cross")


def inside(shape: str, dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    """Whether the points ``(dx, dy)`` (relative to the centre) are inside ``shape`` of half-extent ``h``."""
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "triangle":
        return (dy <= h) & (2 * np.abs(dx) <= dy + h)
    if shape == "cross":
        bar = h / 3.0
        return ((np.abs(dx) <= h) & (np.abs(dy) <= bar)) | ((np.abs(dy) <= h) & (np.abs(dx) <= bar))
    raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")


def draw(image: np.ndarray, shape: str, cx: int, cy: int, h: int, colour: tuple[int, int, int]) -> None:
    """Blend one shape into ``image`` (``uint8 [H, W, 3]``, modified in place)."""
    height, width = image.shape[:2]
    x0, x1 = max(cx - h - 1, 0), min(cx + h + 1, width)
    y0, y1 = max(cy - h - 1, 0), min(cy + h + 1, height)
    s = SUBSAMPLES
    offsets = (np.arange(s) + 0.5) / s
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1) - cx  # [(x1-x0)*s]
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1) - cy
    hit = inside(shape, xs[None, :], ys[:, None], float(h))  # [(y1-y0)*s, (x1-x0)*s]
    k = hit.reshape(y1 - y0, s, x1 - x0, s).sum(axis=(1, 3)).astype(np.int32)  # covered samples per pixel
    n = s * s
    patch = image[y0:y1, x0:x1].astype(np.int32)
    col = np.asarray(colour, dtype=np.int32)
    image[y0:y1, x0:x1] = ((patch * (n - k[..., None]) + col * k[..., None] + n // 2) // n).astype(np.uint8)


def render(size: int, background: tuple[int, int, int],
           objects: list[tuple[str, int, int, int, tuple[int, int, int]]]) -> np.ndarray:
    """An image of ``objects`` (``(shape, cx, cy, h, rgb)``, drawn in order) on a flat ``background``."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[...] = np.asarray(background, dtype=np.uint8)
    for shape, cx, cy, h, rgb in objects:
        draw(image, shape, cx, cy, h, rgb)
    return image
