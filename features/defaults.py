"""Default extraction settings: which backend and options a source gets when the user names none.

Chosen by measurement (``bench/feature_quality.py``; tables in ``docs/features.md``, "Choosing the defaults"):

* :data:`DEFAULT_BUILTIN_BACKEND` and :data:`EASY_VQA_GRID` — the built-in easy-VQA pipeline: ``grid`` features of
  the built-in ImageNet-pretrained EfficientNet-Lite0, its last stage (320 channels) with the 64x64 images resized to
  128 px, one box per cell of the 4x4 map, plus each box's colour statistics (``colour_stats``: channel means and
  standard deviations; K=16, D=326). Trained for the same budget, the same VQA model reached a higher test accuracy
  on them than on raw ``patches``, on random-weight grid features, on the 224 px 7x7 grid, and on the same features
  without the colour statistics (colour questions 0.720 vs 0.602); in a 5-fold linear probe of colour and shape the
  last stage beat the earlier ones;
* :data:`GRID_DEFAULTS` — the ``grid`` backend's own defaults, used for users' folders and list files: the same
  network at its training resolution, 224 px, 7x7 boxes (K=49, D=320) — real photos carry detail that 64x64 synthetic
  shapes do not.

Only the command line and :func:`default_extraction` apply these; :func:`features.extract.extract` keeps its explicit
``backend`` argument.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_BACKEND", "DEFAULT_BUILTIN_BACKEND", "EASY_VQA_GRID", "GRID_DEFAULTS", "builtin_extraction",
           "default_extraction"]

#: Options of the ``grid`` backend by default (the built-in EfficientNet-Lite0 weights; no flag needed).
GRID_DEFAULTS: dict[str, Any] = {"backbone": "efficientnet_lite0", "layer": -1, "image_size": 224, "grid": 7,
                                 "pool_size": 1}

#: Backend of the built-in easy-VQA pipeline (``vlm pretrain``/``finetune`` data): the measured winner.
DEFAULT_BUILTIN_BACKEND = "grid"

#: Options of :data:`DEFAULT_BUILTIN_BACKEND` for easy-VQA's 64x64 images (measured best, and 3-4x cheaper than 224 px).
EASY_VQA_GRID: dict[str, Any] = {"backbone": "efficientnet_lite0", "layer": -1, "image_size": 128, "grid": 4,
                                 "pool_size": 1, "colour_stats": True, "colour_scale": 20.0}

#: Backend for users' own image folders and list files.
DEFAULT_BACKEND = "grid"


#: Extraction of the generated worlds' images (``sort-of-clevr`` 75 px, ``scenes`` 128 px): chosen by the
#: region-source comparison (docs/results.md).
WORLD_EXTRACTION: dict[str, tuple[str, dict[str, Any]]] = {
    "sort-of-clevr": ("grid", {"backbone": "efficientnet_lite0", "layer": -1, "image_size": 128, "grid": 4,
                               "pool_size": 1, "colour_stats": True, "colour_scale": 20.0}),
    "scenes": ("grid", {"backbone": "efficientnet_lite0", "layer": -1, "image_size": 128, "grid": 4,
                        "pool_size": 1, "colour_stats": True, "colour_scale": 20.0}),
}


def builtin_extraction(world: str = "easy-vqa") -> tuple[str, dict[str, Any]]:
    """``(backend, options)`` of a built-in world's pipeline (a fresh dict, safe to modify): easy-VQA's measured
    default, or :data:`WORLD_EXTRACTION` of a generated world."""
    if world in WORLD_EXTRACTION:
        backend, options = WORLD_EXTRACTION[world]
        return backend, dict(options)
    return DEFAULT_BUILTIN_BACKEND, dict(EASY_VQA_GRID)


def default_extraction(source: str) -> tuple[str, dict[str, Any]]:
    """``(backend, options)`` to extract ``source`` with when nothing is specified.

    Args:
        source: A source string (``easy-vqa:train``, a folder, a list file).

    Returns:
        The backend name and a fresh dict of its options (safe to modify): :func:`builtin_extraction` for easy-VQA,
        ``grid`` with :data:`GRID_DEFAULTS` otherwise.
    """
    if source.startswith("easy-vqa"):
        return builtin_extraction()
    return DEFAULT_BACKEND, dict(GRID_DEFAULTS)
