"""The built-in data, by name: which world each ``--data`` name belongs to and what it reads.

Three worlds are built in: easy-VQA (the ``easy-vqa`` package's images and questions) and the generated
``sort-of-clevr`` and ``scenes`` (:mod:`vlm.data.scenes`, generated on first use into ``<cache>/data``). Each world
has questions (``--task vqa``), captions (pretraining) and true/false statements (``--task classify``):

=================  ======================  ==========================
world              questions               captions / statements
=================  ======================  ==========================
easy-VQA           ``easy-vqa``            ``easy-vqa-captions`` / ``easy-vqa-statements``
Sort-of-CLEVR      ``sort-of-clevr``       ``sort-of-clevr-captions`` / ``sort-of-clevr-statements``
scenes             ``scenes``              ``scenes-captions`` / ``scenes-statements``
=================  ======================  ==========================

A spec is built in when every part (parts joined by ``+``) is a built-in name of one world: its images are the
world's, so its features are the world's built-in extraction (:func:`builtin_images` tells the feature side where the
images are and what names their store).
"""

from __future__ import annotations

import os
from typing import Any

from vlm.errors import DataError

#: Built-in name → (world, kind).
BUILTIN_DATA: dict[str, tuple[str, str]] = {
    f"{world}{suffix}": (world, kind)
    for world in ("easy-vqa", "sort-of-clevr", "scenes")
    for suffix, kind in (("", "questions"), ("-captions", "captions"), ("-statements", "statements"))
}

#: The built-in data of each fine-tuning task, per world.
TASK_KINDS = {"vqa": "questions", "classify": "statements"}

GENERATED_WORLDS = ("sort-of-clevr", "scenes")


def builtin_world(spec: str) -> str | None:
    """The world of a spec made of built-in names only (None when any part is not built in).

    Raises:
        DataError: built-in names of different worlds in one spec (their images cannot share a store).
    """
    if not spec:
        return None
    parts = spec.split("+")
    if not all(p in BUILTIN_DATA for p in parts):
        return None
    worlds = {BUILTIN_DATA[p][0] for p in parts}
    if len(worlds) > 1:
        raise DataError(f"{spec}: built-in data of different worlds ({', '.join(sorted(worlds))}) cannot be mixed in "
                        "one run: their images are different sets with overlapping ids")
    return worlds.pop()


def is_builtin(spec: str) -> bool:
    """Whether every part of a data spec is built-in data of one world (so its features are that world's built-in
    extraction); the one test of it."""
    return builtin_world(spec) is not None


def task_data(task: str, world: str = "easy-vqa") -> str:
    """The built-in data of ``task`` (``vqa``, ``classify``) in ``world``."""
    return world + ("" if TASK_KINDS[task] == "questions" else "-statements")


def builtin_images(spec: str, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """What the feature side needs to extract a built-in world's images: ``{"world", "name", "sources": {split:
    source}, "dataset": {...}}`` (None for a spec that is not built in). ``name`` names the world's stores (easy-VQA:
    ``easy-vqa``; a generated world: its folder's name, with generator version, settings hash and seed);
    ``dataset`` goes into the stores' manifests and the model folders' feature records. A generated world is
    generated here on first use."""
    world = builtin_world(spec)
    if world is None:
        return None
    if world == "easy-vqa":
        return {"world": world, "name": "easy-vqa", "sources": {s: f"easy-vqa:{s}" for s in ("train", "test")},
                "dataset": None}
    from vlm.data.scenes import dataset_root
    from vlm.data.scenes.clevr import images_dir
    from vlm.data.scenes.generate import read_generator

    root = dataset_root(world, cache_dir)
    record = read_generator(root)
    return {"world": world, "name": root.name, "sources": {s: str(images_dir(root, s)) for s in ("train", "test")},
            "dataset": {"name": world, "generator_version": record["generator_version"],
                        "config_hash": record["config_hash"], "seed": record["config"]["seed"]}}

