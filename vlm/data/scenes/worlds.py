"""The generated worlds: their settings, the checks on them, and how a scene is sampled.

A :class:`WorldConfig` fixes everything a generated data set depends on (image size, palette, shapes, sizes, object
counts, split sizes, questions per image, seed); :func:`config_hash` of it and :data:`GENERATOR_VERSION` name the
data set's folder, so a changed generator or setting never reads old images or features. Two worlds are built in
(:data:`WORLDS`):

* ``sort-of-clevr`` (Santoro et al. 2017): 75x75 px, six objects, one of each of six colours, a square (side 10) or a
  circle (radius 5) each, at non-overlapping positions;
* ``scenes``: 128x128 px, 2-7 objects, eight colours, four shapes, two sizes, never overlapping (boxes at least
  ``gap`` pixels apart), colours free to repeat.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm.data.scenes.render import SHAPES
from vlm.errors import DataError

#: Bumped whenever a change to the generator could change one image, question, caption or statement.
GENERATOR_VERSION = 1

#: Colour names and their RGB values.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 230), "yellow": (240, 215, 20),
    "orange": (250, 140, 20), "gray": (128, 128, 128), "purple": (145, 55, 190), "cyan": (25, 195, 210),
    "brown": (135, 80, 35), "pink": (245, 120, 190),
}

#: Sort-of-CLEVR's colours as its reimplementation draws them (OpenCV BGR tuples turned into RGB).
SORT_OF_CLEVR_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "orange": (255, 156, 0), "gray": (128, 128, 128),
    "yellow": (255, 255, 0),
}


@dataclass(frozen=True)
class WorldConfig:
    """Everything a generated data set depends on.

    Attributes:
        name: the world (``sort-of-clevr`` or ``scenes``): which question families it asks.
        image_size: side of the square images, in pixels.
        min_objects, max_objects: objects per image (uniform between them).
        colours: colour names (keys of :data:`PALETTE`, or of :data:`SORT_OF_CLEVR_PALETTE` for ``sort-of-clevr``).
        shapes: shape names (:data:`vlm.data.scenes.render.SHAPES`).
        sizes: size name → half-extent in pixels (square side = 2 x half-extent, circle radius = half-extent).
        distinct_colours: every object has a colour of its own (Sort-of-CLEVR: as many objects as colours).
        gap: boxes of two objects are at least this many pixels apart (along x or along y).
        train_images, test_images: images per split.
        background: the flat background colour (RGB).
        margin: spatial relations and closest/furthest are asked only when they hold by this many pixels.
        seed: the seed of everything random.
    """

    name: str
    image_size: int
    min_objects: int
    max_objects: int
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    sizes: dict[str, int] = field(default_factory=dict)
    distinct_colours: bool = False
    gap: int = 1
    train_images: int = 1000
    test_images: int = 100
    background: tuple[int, int, int] = (255, 255, 255)
    margin: int = 0
    seed: int = 0

    def palette(self) -> dict[str, tuple[int, int, int]]:
        return SORT_OF_CLEVR_PALETTE if self.name == "sort-of-clevr" else PALETTE

    def splits(self) -> dict[str, int]:
        return {"train": self.train_images, "test": self.test_images}

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["colours"], d["shapes"], d["background"] = list(self.colours), list(self.shapes), list(self.background)
        return d


#: The built-in worlds' settings.
WORLDS: dict[str, WorldConfig] = {
    "sort-of-clevr": WorldConfig(
        name="sort-of-clevr", image_size=75, min_objects=6, max_objects=6,
        colours=tuple(SORT_OF_CLEVR_PALETTE), shapes=("square", "circle"), sizes={"": 5}, distinct_colours=True,
        gap=1, train_images=9800, test_images=1000),
    "scenes": WorldConfig(
        name="scenes", image_size=128, min_objects=2, max_objects=7,
        colours=("red", "green", "blue", "yellow", "orange", "gray", "purple", "cyan"),
        shapes=("square", "circle", "triangle", "cross"), sizes={"small": 6, "large": 11}, gap=3,
        train_images=8000, test_images=1000, margin=6),
}


def check_config(cfg: WorldConfig) -> None:
    """Refuse settings the generator cannot honour, in one line naming the setting, before any work.

    Raises:
        DataError: an unknown world, colour or shape; a count out of range; more objects than fit.
    """
    where = f"generator {cfg.name!r}"
    if cfg.name not in WORLDS:
        raise DataError(f"unknown generated world {cfg.name!r}: expected one of {', '.join(WORLDS)}")
    palette = cfg.palette()
    unknown = [c for c in cfg.colours if c not in palette]
    if unknown:
        raise DataError(f"{where}: unknown colour(s) {', '.join(map(repr, unknown))}: expected names from "
                        f"{', '.join(palette)}")
    if len(set(cfg.colours)) != len(cfg.colours) or len(cfg.colours) < 2:
        raise DataError(f"{where}: colours must be two or more distinct names, got {list(cfg.colours)}")
    bad = [s for s in cfg.shapes if s not in SHAPES]
    if bad or len(set(cfg.shapes)) != len(cfg.shapes) or len(cfg.shapes) < 2:
        raise DataError(f"{where}: shapes must be two or more distinct names of {', '.join(SHAPES)}, got "
                        f"{list(cfg.shapes)}")
    if not cfg.sizes or any(not isinstance(h, int) or h < 2 for h in cfg.sizes.values()):
        raise DataError(f"{where}: sizes must map names to half-extents of 2 pixels or more, got {cfg.sizes}")
    if not 1 <= cfg.min_objects <= cfg.max_objects:
        raise DataError(f"{where}: objects per image must satisfy 1 <= min_objects <= max_objects, got "
                        f"{cfg.min_objects}..{cfg.max_objects}")
    if cfg.distinct_colours and cfg.max_objects > len(cfg.colours):
        raise DataError(f"{where}: {cfg.max_objects} objects with a colour each need as many colours, got "
                        f"{len(cfg.colours)}")
    if cfg.image_size < 16 or cfg.gap < 0 or cfg.margin < 0:
        raise DataError(f"{where}: image_size must be >= 16 and gap, margin >= 0, got {cfg.image_size}, {cfg.gap}, "
                        f"{cfg.margin}")
    cell = 2 * max(cfg.sizes.values()) + cfg.gap
    if cfg.max_objects * cell * cell > 0.45 * cfg.image_size ** 2 or cell > cfg.image_size:
        raise DataError(f"{where}: {cfg.max_objects} objects of up to {cell - cfg.gap} px do not fit in "
                        f"{cfg.image_size}x{cfg.image_size} px with a {cfg.gap} px gap (at most "
                        f"{int(0.45 * cfg.image_size ** 2 // (cell * cell))}); lower max_objects or the sizes")
    for split, n in cfg.splits().items():
        if not isinstance(n, int) or n < 1:
            raise DataError(f"{where}: {split}_images must be a positive integer, got {n!r}")


def config_hash(cfg: WorldConfig) -> str:
    """A short hash of the settings and the generator version: part of the data set's folder name."""
    blob = json.dumps({"version": GENERATOR_VERSION, **cfg.as_dict()}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def folder_name(cfg: WorldConfig) -> str:
    """``<name>-g<version>-<hash>-s<seed>``: the data set's folder under ``<cache>/data``."""
    return f"{cfg.name}-g{GENERATOR_VERSION}-{config_hash(cfg)}-s{cfg.seed}"


@dataclass
class SceneObject:
    """One object: its attributes, its centre (a pixel corner) and half-extent, its box in pixels
    ``[x1, y1, x2, y2)``."""

    colour: str
    shape: str
    size: str
    cx: int
    cy: int
    h: int

    @property
    def box(self) -> list[int]:
        return [self.cx - self.h, self.cy - self.h, self.cx + self.h, self.cy + self.h]

    def as_json(self) -> dict[str, Any]:
        return {"color": self.colour, "shape": self.shape, "size": self.size, "pixel_coords": [self.cx, self.cy, 0],
                "bbox": self.box}


def sample_scene(cfg: WorldConfig, rng: np.random.Generator) -> list[SceneObject]:
    """A random scene: object count, attributes and non-overlapping positions.

    Positions are drawn uniformly over the lattice points that keep the object inside the image; a draw whose box
    comes closer than ``gap`` pixels to an earlier object's box is redrawn (the whole scene after 200 failures).

    Raises:
        DataError: no scene could be placed in 100 tries (settings at the edge of what fits).
    """
    for _ in range(100):
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        colours = (list(rng.permutation(np.array(cfg.colours)))[:n] if cfg.distinct_colours
                   else [cfg.colours[i] for i in rng.integers(len(cfg.colours), size=n)])
        if cfg.name == "sort-of-clevr":  # in colour order, as the reimplementation draws them
            colours = list(cfg.colours[:n])
        objects: list[SceneObject] = []
        size_names = list(cfg.sizes)
        for colour in colours:
            shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
            size = size_names[int(rng.integers(len(size_names)))]
            h = cfg.sizes[size]
            for _attempt in range(200):
                cx, cy = (int(v) for v in rng.integers(h, cfg.image_size - h + 1, size=2))
                if all(max(abs(cx - o.cx) - h - o.h, abs(cy - o.cy) - h - o.h) >= cfg.gap for o in objects):
                    objects.append(SceneObject(str(colour), shape, size, cx, cy, h))
                    break
            else:
                break
        if len(objects) == n:
            return objects
    raise DataError(f"generator {cfg.name!r}: could not place {cfg.max_objects} objects without overlap in 100 "
                    "tries; lower max_objects or the sizes")
