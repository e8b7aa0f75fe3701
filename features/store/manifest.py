"""The store's ``manifest.json``: the plan of a run, reading it back, and rebuilding it from the finished shards.

The manifest is the store's table of contents: extractor settings and weights, feature dim and K, the image source,
per-shard counts, byte sizes and sha256, failed images, and ``complete``. It is rewritten (atomically, under
:func:`store_lock`) whenever a process of an extraction finishes its part; the last one sees every shard finished,
builds the random-access index and marks the store complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from features.errors import StoreError
from features.io import atomic_write_json
from features.store.format import FORMAT, FORMAT_VERSION, LOCK, MANIFEST
from features.store.index import build_index
from features.store.writer import read_sidecar

__all__ = ["finalize_store", "load_manifest", "make_plan", "store_lock"]


@contextlib.contextmanager
def store_lock(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on a store directory (processes of one extraction share it)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    with open(Path(directory) / LOCK, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def make_plan(*, backend: str, settings: dict[str, Any], weights: dict[str, Any], random_weights: bool,
              feature_dim: int, num_regions: int | None, source: dict[str, Any], shard_size: int, num_images: int,
              boxes_format: str, label_names: list[str] | None = None, max_regions: int | None = None,
              num_shards: int | None = None) -> dict[str, Any]:
    """The fixed description of a run: every manifest field except the ones :func:`finalize_store` fills in.

    Args:
        backend: Backend name (``patches``, ``grid``..., ``butd-tsv``).
        settings: The settings that determine the features.
        weights: Where each weights file came from (source, path, sha256).
        random_weights: Whether any weights are random.
        feature_dim: D.
        num_regions: K, or ``None`` when it varies.
        source: Description of the images (kind, spec, counts).
        shard_size: Images per shard.
        num_images: Images planned (sets ``num_shards`` unless given).
        boxes_format: How boxes are stored, in words.
        label_names: Class names of ``objects_id``, if any.
        max_regions: The largest K (only for stores whose K varies).
        num_shards: Shards of the run, when not ``ceil(num_images / shard_size)``.
    """
    plan: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backend": backend,
        "settings": settings,
        "weights": weights,
        "random_weights": random_weights,
        "feature_dim": feature_dim,
        "num_regions": num_regions,
    }
    if max_regions is not None:
        plan["max_regions"] = max_regions
    plan.update({
        "feats_dtype": "float16",
        "boxes_format": boxes_format,
        "label_names": label_names,
        "source": source,
        "shard_size": shard_size,
        "num_shards": math.ceil(num_images / shard_size) if num_shards is None else num_shards,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return plan


def load_manifest(directory: str | os.PathLike[str], *, require_complete: bool = True) -> dict[str, Any]:
    """Read ``manifest.json`` of a store.

    Raises:
        StoreError: If it is missing or unreadable, or (``require_complete``) the extraction is unfinished.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise StoreError(f"{directory} is not a feature store: {path} not found (create one with `vlm extract` or "
                         "`vlm features import-tsv`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise StoreError(f"{path}: not a vlm feature-store manifest (format {found!r}, expected {FORMAT!r})")
    if require_complete and not manifest.get("complete"):
        done = len(manifest.get("shards", []))
        raise StoreError(
            f"feature store {directory} is incomplete ({done} of {manifest.get('num_shards')} shards finished); "
            "rerun the same `vlm extract` command (it resumes) for every part"
        )
    return manifest


def finalize_store(directory: str | os.PathLike[str], plan: dict[str, Any]) -> dict[str, Any]:
    """Rebuild ``manifest.json`` from the plan and the finished shards; index the store once all are finished.

    Call it while holding :func:`store_lock`. Safe to call from every process of a split extraction: the last one to
    finish sees all shards and marks the store complete.

    Args:
        directory: The store directory.
        plan: The run's fixed description (:func:`make_plan`).

    Returns:
        The manifest written.
    """
    directory = Path(directory)
    records = [read_sidecar(directory, i) for i in range(plan["num_shards"])]
    finished = [r for r in records if r is not None]
    complete = len(finished) == plan["num_shards"]
    failed = [f for r in finished for f in r["failed"]]
    manifest = {
        **plan,
        "complete": complete,
        "num_samples": sum(r["num_samples"] for r in finished),
        "num_failed": len(failed),
        "shards": [{k: r[k] for k in ("name", "num_samples", "bytes", "sha256")} | {"num_failed": len(r["failed"])}
                   for r in finished],
        "failed": failed,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if complete:
        build_index(directory, finished)
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest
