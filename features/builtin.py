"""The built-in feature stores (easy-VQA and the generated worlds), in one place: where they live, how they are made, which store a run reads.

The built-in data (easy-VQA's questions, captions and statements) has no feature store of its own: its images are
extracted on first use with the measured default (:func:`features.builtin_extraction`) into a cache folder, one store
per split and setting, and reused afterwards. Every command that trains or evaluates resolves its stores through
:func:`resolve_stores` (or :func:`builtin_store` for one split), so they agree on the folder and on when a store must
be given.

The cache folder is an argument: :func:`default_cache_dir` is its one default, and only the command line passes it the
environment (``VLM_CACHE``). The distributed pieces are arguments too (``is_main``, ``barrier``): only the main rank
extracts, the others wait. Nothing here imports ``vlm``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from features.errors import FeaturesError
from features.store.remote import is_url
from features.store.streamed import is_pipe

__all__ = ["agree_on_stores", "builtin_store", "builtin_store_path", "default_cache_dir", "resolve_stores"]

logger = logging.getLogger(__name__)


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The cache folder of built-in features: ``environ["VLM_CACHE"]`` when given and set (the command line passes
    ``os.environ``), else ``~/.cache/vlm``."""
    if environ is not None and environ.get("VLM_CACHE"):
        return Path(environ["VLM_CACHE"])
    return Path(os.path.expanduser("~")) / ".cache" / "vlm"


#: The easy-VQA images (the default of every function here).
EASY_VQA_IMAGES: Mapping[str, Any] = {"world": "easy-vqa", "name": "easy-vqa",
                                      "sources": {"train": "easy-vqa:train", "test": "easy-vqa:test"}, "dataset": None}


def _settings(backend: str, world: str = "easy-vqa") -> tuple[str, dict[str, Any]]:
    """Backend and options of a built-in world's features (``auto``: the measured default of that world)."""
    from features.defaults import builtin_extraction

    if backend == "auto":
        return builtin_extraction(world)
    return backend, {}  # that backend with its own defaults


def builtin_store_path(split: str, cache_dir: str | os.PathLike[str], backend: str = "auto",
                       images: Mapping[str, Any] = EASY_VQA_IMAGES) -> Path:
    """The folder of the built-in store of ``split`` for ``backend`` (named after the images — for a generated world
    its folder's name, with generator version, settings hash and seed — the backend and its options)."""
    name, options = _settings(backend, images["world"])
    tag = "-".join([name] + [f"{k}{v}" for k, v in sorted(options.items()) if k != "weights"])
    return Path(cache_dir) / "features" / f"{images['name']}-{split}-{tag}"


def _complete(store: Path) -> bool:
    try:
        return bool(json.loads((store / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def builtin_store(split: str, cache_dir: str | os.PathLike[str] | None = None, backend: str = "auto", *,
                  is_main: bool = True, barrier: Callable[[], None] = lambda: None, progress: bool = True,
                  images: Mapping[str, Any] = EASY_VQA_IMAGES) -> Path:
    """The built-in feature store of ``split`` of a world's images, extracted on first use (by one process) and reused
    afterwards.

    Extraction runs under a forked torch RNG, so whether the cache existed never changes the caller's random draws
    (a run's model initialisation does not depend on it).

    Under torchrun every process calls ``barrier`` once, whether its cache holds the store or not (a rank that
    skipped it while another node's ranks entered it would hang the job); the process that extracts does so before
    it, the others find the store complete after it.

    Args:
        split: ``train`` or ``test``.
        cache_dir: the cache folder (None: :func:`default_cache_dir` without the environment).
        backend: ``auto`` (the measured default) or a backend name with its own defaults.
        is_main: this process extracts when the store is missing (the caller picks one per cache: global rank 0 for
            a cache every node shares, local rank 0 for a cache per node); the others wait at ``barrier``.
        barrier: a collective every process calls (``torch.distributed`` barrier; a no-op in a single process).
        progress: draw the extraction's progress bar.
        images: the world's images (``vlm.data.builtin.builtin_images``): ``world``, ``name`` (of its stores),
            ``sources`` (split → source), ``dataset`` (recorded in the manifest; None for easy-VQA).

    Raises:
        FeaturesError: after the barrier, the store is still missing for a process that did not extract (its cache is
            not the folder the extracting process wrote: a per-node cache declared shared).
    """
    out = builtin_store_path(split, cache_dir if cache_dir else default_cache_dir(), backend, images)
    if is_main and not _complete(out):
        from features.extract import extract

        name, options = _settings(backend, images["world"])
        logger.warning("extracting built-in features: %s %s with %s %s into %s (first use only)",
                       images["world"], split, name, options, out)
        with torch.random.fork_rng(devices=[]):
            extract(images["sources"][split], out, name, options, part=(0, 1), device="cpu", progress=progress,
                    dataset=images.get("dataset"))
    barrier()
    if not _complete(out):
        raise FeaturesError(f"built-in features {out} are missing after the extracting process finished: this "
                            "process's cache folder is not the one it wrote to; on several nodes, set "
                            "data.shared_cache=false unless data.cache_dir is one folder every node sees")
    return out


def resolve_stores(*, train_builtin: bool, eval_builtin: bool, features: str = "", eval_features: str = "",
                   cache_dir: str | os.PathLike[str] | None = None, backend: str = "auto", train_split: str = "train",
                   eval_split: str = "test", need_train: bool = True, need_eval: bool = True, what: str = "the data",
                   is_main: bool = True, barrier: Callable[[], None] = lambda: None, progress: bool = True,
                   images: Mapping[str, Any] | None = None) -> tuple[Path | str | None, Path | str | None]:
    """The feature stores of a run: ``(train store, held-out store)``; the one rule of every command.

    A store given by ``http(s)://`` URL (read over HTTP) or ``pipe:`` command (streamed) is returned as that string;
    a folder as a ``Path``.

    * training: ``features`` when given; else the built-in store of ``train_split`` when the training data is built
      in; else an error (a store is needed);
    * held-out: ``eval_features`` when given; else the built-in store of ``eval_split`` when the held-out data is built
      in and no training store was given; else the training store (the same folder holds both splits' images).

    Args:
        train_builtin, eval_builtin: whether the training / held-out data are built-in data (the caller decides, with
            ``vlm.data.builtin.is_builtin``).
        images: the built-in world's images (``vlm.data.builtin.builtin_images``; None: easy-VQA's).
        need_train, need_eval: whether the run has training / held-out data at all (a store is None when not needed).
        what: the data spec, named in the error.
        progress: draw the progress bar of a first-use extraction.

    Raises:
        FeaturesError: a store is needed and none was given for data that is not built in.
    """
    train = eval_ = None
    if need_train or (need_eval and not eval_features and not (eval_builtin and not features)):
        if features:
            train = features if is_url(features) or is_pipe(features) else Path(features)
        elif train_builtin:
            train = builtin_store(train_split, cache_dir, backend, is_main=is_main, barrier=barrier,
                                  progress=progress, images=images or EASY_VQA_IMAGES)
        else:
            raise FeaturesError(f"a feature store folder is needed for {what} (--features, data.features; "
                                "vlm extract makes one)")
    if need_eval:
        if eval_features:
            eval_ = eval_features if is_url(eval_features) or is_pipe(eval_features) else Path(eval_features)
        elif eval_builtin and not features:
            eval_ = builtin_store(eval_split, cache_dir, backend, is_main=is_main, barrier=barrier,
                                  progress=progress, images=images or EASY_VQA_IMAGES)
        else:
            eval_ = train
    return (train if need_train else None), eval_


def agree_on_stores(train: Any, held: Any = None, *,
                    agree: Callable[[str, Any, str], None] = lambda what, value, advice: None) -> None:
    """Refuse to train unless every process reads the same stores: ``agree`` (``vlm.engine.distributed.agree``
    under torchrun) compares their fingerprints (:func:`~features.store.store_fingerprint`) across ranks.

    Nodes with a feature cache of their own extract the built-in features each; nodes of different CPUs can write
    different float16 features, and a job that trained on both would mix them.
    """
    from features.store import store_fingerprint

    mine = [store_fingerprint(train.manifest)] + ([store_fingerprint(held.manifest)] if held is not None else [])
    agree("the feature stores (fingerprints of the training and held-out stores)", mine,
          "every rank must read the same features: copy one node's store to the others, or set "
          "data.shared_cache=true with one data.cache_dir that every node sees")
