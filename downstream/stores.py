"""The feature stores of fine-tuning and evaluation: resolved before a run is built (built-in stores extracted on
first use), and checked to be made the way a model folder's features record says."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from features.builtin import agree_on_stores, default_cache_dir, resolve_stores
from features.store import FeatureStore, extraction_record, open_store, random_access, record_differences
from vlm.data.builtin import builtin_images, is_builtin
from vlm.engine import distributed as D
from vlm.errors import DataError
from vlm.models.folder import FEATURES_NAME, read_features

logger = logging.getLogger(__name__)


def features_info(store: Any) -> dict[str, Any]:
    """How a store's features were made (backend, settings, width, regions, weights): a model folder's record."""
    return extraction_record(getattr(store, "manifest", {}) or {})


def check_features(folder: str | Path, store: Any, *, allow: bool = False, flag: str = "--allow-feature-mismatch"
                   ) -> None:
    """Refuse features made another way than the model in ``folder`` was trained on (one line naming the differing
    settings); ``allow`` turns the refusal into a warning. A folder without a record (older checkpoints) is warned
    about, not refused.

    Raises:
        DataError: the store's extraction differs from the model folder's features record.
    """
    record = read_features(Path(folder))
    where = getattr(store, "directory", store)
    if record is None:
        logger.warning("%s has no %s (an older checkpoint): cannot check that the features in %s are made the way "
                       "it was trained on", folder, FEATURES_NAME, where)
        return
    diffs = record_differences(record, features_info(store))
    if not diffs:
        return
    message = (f"the features in {where} are made another way than {folder} was trained on: {'; '.join(diffs)} "
               f"(model vs store)")
    if not allow:
        raise DataError(f"{message}; extract them with the model's settings ({Path(folder) / FEATURES_NAME}) or "
                        f"pass {flag}")
    logger.warning("%s (%s given)", message, flag)


def open_stores(train_dir: Path | str | None, eval_dir: Path | str | None, *, stream: bool = False
                ) -> tuple[Any, FeatureStore | None]:
    """The stores of two locations, opened once (the same location gives the same store object, or with ``stream``
    a streamed training store and a random-access reader of it). The held-out store is always read by random access:
    a ``pipe:`` one is refused, naming what to give instead."""
    train = open_store(train_dir, stream=stream) if train_dir is not None else None
    if eval_dir is None:
        return train, None
    if eval_dir == train_dir and train is not None:
        return train, random_access(train)
    return train, random_access(eval_dir)


def run_stores(train_spec: str, eval_spec: str, *, features: str, eval_features: str, cache_dir: str, backend: str,
               dist: D.DistInfo = D.DistInfo(), show_progress: bool = True, shared_cache: bool = False,
               stream: bool = False) -> tuple[Any, FeatureStore | None]:
    """The training store and the held-out store (None without held-out data) of a fine-tuning run.

    Under torchrun the built-in stores are extracted by one process per cache (``shared_cache``: global rank 0;
    otherwise each node's local rank 0), and every rank checks that it reads the same store as the others
    (:func:`features.builtin.agree_on_stores`). ``stream``: the training store is a
    :class:`~features.store.StreamedStore` (always for a ``pipe:`` location).
    """
    train_dir, eval_dir = resolve_stores(
        train_builtin=is_builtin(train_spec), eval_builtin=is_builtin(eval_spec), features=features,
        eval_features=eval_features, cache_dir=cache_dir, backend=backend, need_eval=bool(eval_spec),
        what=train_spec, is_main=dist.is_main if shared_cache else dist.is_local_main, barrier=D.barrier,
        progress=show_progress and (dist.is_main if shared_cache else dist.is_local_main),
        images=builtin_images(train_spec if is_builtin(train_spec) else eval_spec, cache_dir or default_cache_dir()))
    train, held = open_stores(train_dir, eval_dir, stream=stream)
    assert train is not None
    agree_on_stores(train, held, agree=D.agree)
    return train, held


def eval_store(spec: str, *, split: str, features: str, cache_dir: str, backend: str,
               show_progress: bool = True) -> FeatureStore:
    """The store of the examples ``vlm evaluate`` scores: ``features`` when given, else the built-in one."""
    _, store_dir = resolve_stores(train_builtin=False, eval_builtin=is_builtin(spec), eval_features=features,
                                  cache_dir=cache_dir, backend=backend, eval_split=split, need_train=False,
                                  what=spec, progress=show_progress,
                                  images=builtin_images(spec, cache_dir or default_cache_dir()))
    return random_access(store_dir, "the examples `vlm evaluate` scores")
