"""Region features for vision-and-language models: extraction backends and the webdataset feature store.

The package turns images into the image tokens of the encoders — ``(boxes [K, 4], features [K, D], labels?)`` per
image — and stores them as webdataset shards with a manifest (see ``docs/features.md``):

* :func:`features.extract.extract` / ``vlm extract``: batched, resumable, splittable extraction with the ``patches``,
  ``grid``, ``proposals`` (segmentation, no weights), ``detector`` or ``detectron2`` backend (:mod:`features.backends`);
* :class:`features.store.FeatureStore` (random access by image id) and :func:`features.store.stream` (webdataset
  pipeline): the readers used by pretraining and fine-tuning;
* :func:`features.tsv_import.import_tsv` / ``vlm features import-tsv``: bottom-up-attention TSV files to shards;
* :func:`features.builtin_store` / :func:`features.resolve_stores` (:mod:`features.builtin`): the built-in easy-VQA
  stores, extracted on first use into a cache folder the caller gives, and the one rule for which store a run reads;
* :func:`features.builtin_extraction` (the easy-VQA pipeline's ``(backend, options)``),
  :data:`features.DEFAULT_BUILTIN_BACKEND`, :data:`features.GRID_DEFAULTS`, :func:`features.default_extraction`: the
  measured default settings (:mod:`features.defaults`).

It imports nothing from ``vlm``. Heavy modules load on first use, so ``import features`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_BACKEND", "DEFAULT_BUILTIN_BACKEND", "EASY_VQA_GRID", "GRID_DEFAULTS", "FeatureStore",
           "FeaturesError", "builtin_extraction", "builtin_store", "create_extractor", "default_cache_dir",
           "default_extraction", "extract", "import_tsv", "list_backends", "resolve_stores", "stream"]

_EXPORTS = {
    "FeatureStore": "features.store",
    "stream": "features.store",
    "extract": "features.extract",
    "create_extractor": "features.backends",
    "list_backends": "features.backends",
    "import_tsv": "features.tsv_import",
    "FeaturesError": "features.errors",
    "DEFAULT_BACKEND": "features.defaults",
    "DEFAULT_BUILTIN_BACKEND": "features.defaults",
    "GRID_DEFAULTS": "features.defaults",
    "EASY_VQA_GRID": "features.defaults",
    "builtin_extraction": "features.defaults",
    "builtin_store": "features.builtin",
    "default_cache_dir": "features.builtin",
    "resolve_stores": "features.builtin",
    "default_extraction": "features.defaults",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'features' has no attribute {name!r}")
