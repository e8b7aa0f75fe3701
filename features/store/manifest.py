"""The store's ``manifest.json``: the plan of a run, reading it back, and rebuilding it from the finished shards.

The manifest is the store's table of contents: extractor settings and weights, feature dim and K, the image source,
per-shard counts, byte sizes and sha256, failed images, and ``complete``. It is rewritten (atomically, under
:func:`store_lock`) whenever a process of an extraction finishes its part; the last one sees every shard finished,
builds the random-access index and marks the store complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from features.errors import StoreError
from features.io import atomic_write_json, make_dir
from features.store.format import FORMAT, FORMAT_VERSION, LOCK, MANIFEST
from features.store.index import build_index
from features.store.writer import read_sidecar

__all__ = ["extraction_record", "finalize_store", "load_manifest", "make_plan", "parse_manifest",
           "record_differences", "store_fingerprint", "store_lock"]


@contextlib.contextmanager
def store_lock(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on a store directory (processes of one extraction share it)."""
    with open(make_dir(directory) / LOCK, "a+") as handle:
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
        text = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path} is unreadable: {exc}") from None
    return parse_manifest(text, path, directory, require_complete=require_complete)


def parse_manifest(text: bytes | str, where: str | os.PathLike[str], directory: str | os.PathLike[str], *,
                   require_complete: bool = True) -> dict[str, Any]:
    """Check the bytes of a ``manifest.json`` read from ``where`` (a file or a URL) of the store ``directory``.

    Raises:
        StoreError: If it is not a store manifest, a field is missing or of the wrong type, or (``require_complete``)
            the extraction is unfinished.
    """
    try:
        manifest = json.loads(text)
    except ValueError as exc:  # JSON or UTF-8 decoding
        raise StoreError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise StoreError(f"{where}: not a vlm feature-store manifest (format {found!r}, expected {FORMAT!r})")
    _check_fields(manifest, where)
    if require_complete and not manifest.get("complete"):
        done = len(manifest.get("shards", []))
        raise StoreError(
            f"feature store {directory} is incomplete ({done} of {manifest.get('num_shards')} shards finished); "
            "rerun the same `vlm extract` command (it resumes) for every part"
        )
    return manifest


def _check_fields(manifest: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a manifest from a newer vlm, or one whose fields the readers rely on are missing or of the wrong type."""
    version = manifest.get("version")
    if type(version) is not int or version < 1:
        raise StoreError(f"{path}: field 'version' is {version!r}; expected a format version (1..{FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise StoreError(f"{path}: the store has format version {version}, written by a newer vlm; this one reads "
                         f"versions 1..{FORMAT_VERSION} (upgrade vlm)")
    for key, kind in (("feature_dim", int), ("num_shards", int), ("num_samples", int), ("num_failed", int),
                      ("shards", list), ("failed", list)):
        if key in ("num_samples", "num_failed", "shards", "failed") and key not in manifest:
            continue  # a plan that no process has finished yet (see finalize_store)
        if type(manifest.get(key)) is not kind:
            raise StoreError(f"{path}: field {key!r} is {manifest.get(key)!r}; expected {kind.__name__} (a damaged or "
                             "hand-edited manifest: rerun the command that made the store)")
    for position, shard in enumerate(manifest.get("shards", [])):
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str)
                and re.fullmatch(r"shard-\d{6}\.tar", shard["name"])
                and all(type(shard.get(k)) is int for k in ("num_samples", "bytes"))
                and isinstance(shard.get("sha256"), str)):
            raise StoreError(f"{path}: shards[{position}] is {str(shard)[:120]}; expected {{'name': "
                             "'shard-NNNNNN.tar', 'num_samples': int, 'bytes': int, 'sha256': str}")


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


def store_fingerprint(manifest: Mapping[str, Any]) -> str:
    """A short digest of what a store holds (every shard's name, size and sha256, the sample count): two stores with
    the same fingerprint hold the same bytes. Ranks on several nodes compare it before they train."""
    shards = [(s.get("name"), s.get("bytes"), s.get("sha256")) for s in manifest.get("shards", [])]
    data = json.dumps([manifest.get("num_samples"), shards], separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def extraction_record(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """How a store's features were made, from its manifest: the record every model folder keeps (``features.json``)
    so that features made another way are never scored without a word (:func:`record_differences`)."""
    weights = manifest.get("weights") or {}
    record = {k: manifest[k] for k in ("backend", "settings", "feature_dim", "num_regions", "random_weights")
              if k in manifest}
    sums = {name: w.get("sha256") for name, w in weights.items() if isinstance(w, dict) and w.get("sha256")}
    if sums:
        record["weights_sha256"] = sums
    dataset = (manifest.get("source") or {}).get("dataset")
    if dataset:
        record["dataset"] = dataset
    return record


def record_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """The settings in which two extraction records differ, as ``"key: expected vs actual"`` (empty: the same way).

    Compared: the backend, every extractor setting either record has, the feature width, random vs pretrained weights,
    and the weights' sha256 where both recorded it. The number of regions is not compared (a detector's varies).
    """
    out = []

    def differ(key: str, a: Any, b: Any) -> None:
        if a != b:
            out.append(f"{key}: {a!r} vs {b!r}")

    for key in ("backend", "feature_dim", "random_weights"):
        if key in expected or key in actual:
            differ(key, expected.get(key), actual.get(key))
    s1, s2 = expected.get("settings") or {}, actual.get("settings") or {}
    for key in sorted(set(s1) | set(s2)):
        differ(f"settings.{key}", s1.get(key), s2.get(key))
    if expected.get("dataset") and actual.get("dataset"):  # a generated world: same generator, settings and seed
        differ("dataset", expected["dataset"], actual["dataset"])
    w1, w2 = expected.get("weights_sha256") or {}, actual.get("weights_sha256") or {}
    for key in sorted(set(w1) & set(w2)):
        differ(f"weights.{key}.sha256", w1[key][:12], w2[key][:12])
    return out


class StoreShape:
    """``feature_dim`` and ``num_regions`` read from ``self.manifest``: the readers' shared properties."""

    manifest: dict[str, Any]

    @property
    def feature_dim(self) -> int:
        """Feature size D."""
        return int(self.manifest["feature_dim"])

    @property
    def num_regions(self) -> int | None:
        """Regions per image K, or ``None`` when it varies (imported TSVs with adaptive box counts)."""
        k = self.manifest.get("num_regions")
        return None if k is None else int(k)
