"""Checking a store against its manifest (sizes, sha256, sidecars, index); rebuilding the index from the sidecars and
adding per-sample checksums to a format-1 store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import ShardError
from features.io import atomic_write_json, file_sha256
from features.store.format import FORMAT_VERSION, INDEX_ENTRIES, INDEX_HASH, MANIFEST, sample_checksum
from features.store.index import build_index
from features.store.manifest import load_manifest, store_lock
from features.store.writer import load_sidecar

__all__ = ["check_shard_size", "reindex_store", "verify_store"]


def check_shard_size(path: Path, expected: int, *, recorded_by: str = "the manifest") -> None:
    """Raise :class:`~features.errors.ShardError` naming ``path`` if it is missing or not ``expected`` bytes long."""
    if not path.is_file():
        raise ShardError(f"shard {path} is missing (listed in {recorded_by})")
    actual = path.stat().st_size
    if actual != expected:
        state = "truncated" if actual < expected else "larger than recorded"
        raise ShardError(f"shard {path} is {state}: {actual} bytes, {recorded_by} records {expected}; re-extract it "
                         f"(delete it and its .json sidecar, then rerun `vlm extract`) or run `vlm features inspect`")


def verify_store(directory: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """Check every shard of a store: present, recorded size and sha256, its sidecar; and the index.

    A shard whose sha256 differs is read sample by sample to name the damaged samples (format 2).

    Returns:
        ``(name, status, detail)`` per shard and for the index, status ``"ok"``, ``"missing"``, ``"truncated"``,
        ``"size"``, ``"checksum"``, ``"sidecar"`` or ``"index"``.
    """
    directory = Path(directory)
    manifest = load_manifest(directory, require_complete=False)
    results: list[tuple[str, str, str]] = []
    for info in manifest.get("shards", []):
        path = directory / info["name"]
        if not path.is_file():
            results.append((info["name"], "missing", "file not found"))
            continue
        size = path.stat().st_size
        if size != info["bytes"]:
            status = "truncated" if size < info["bytes"] else "size"
            results.append((info["name"], status, f"{size} bytes, manifest records {info['bytes']}"))
            continue
        try:
            record = load_sidecar(path)
        except ShardError as exc:
            results.append((info["name"], "sidecar", str(exc).removeprefix(f"shard {path}: ")))
            continue
        if len(record["ids"]) != info["num_samples"] or record.get("sha256") != info["sha256"]:
            results.append((info["name"], "sidecar", f"sidecar {path.with_suffix('.json').name} disagrees with the "
                                                     "manifest (samples or sha256)"))
            continue
        digest = file_sha256(path)
        if digest != info["sha256"]:
            detail = f"sha256 {digest[:16]}..., manifest records {info['sha256'][:16]}..."
            damaged = _damaged_samples(path, record)
            if damaged:
                shown = ", ".join(repr(i) for i in damaged[:5]) + (" ..." if len(damaged) > 5 else "")
                detail += f"; damaged samples: {shown} ({len(damaged)} of {len(record['ids'])})"
            results.append((info["name"], "checksum", detail))
        else:
            results.append((info["name"], "ok", f"{info['num_samples']} samples"))
    if manifest.get("complete"):
        try:
            hashes = np.load(directory / INDEX_HASH, mmap_mode="r")
            entries = np.load(directory / INDEX_ENTRIES, mmap_mode="r")
            if len(hashes) != manifest["num_samples"] or len(entries) != len(hashes):
                results.append(("index", "index", f"{len(hashes)} entries for {manifest['num_samples']} samples"))
        except (OSError, ValueError) as exc:
            results.append(("index", "index", f"unreadable: {exc}"))
    return results


def _damaged_samples(path: Path, record: dict[str, Any]) -> list[str]:
    """Ids of the samples of a shard whose bytes fail their recorded checksum (none known for a format-1 shard)."""
    if "xxh3_64" not in record:
        return []
    with open(path, "rb") as handle:
        return [image_id for image_id, offset, size, checksum in
                zip(record["ids"], record["offsets"], record["sizes"], record["xxh3_64"])
                if sample_checksum(os.pread(handle.fileno(), size, offset)) != checksum]


def reindex_store(directory: str | os.PathLike[str]) -> int:
    """Rebuild the random-access index of a complete store from its shard sidecars.

    A format-1 store is upgraded on the way: each shard without per-sample checksums is first checked against its
    recorded sha256, then the checksum of each of its samples is added to its sidecar, and the manifest's version is
    raised once every shard has them.

    Returns:
        The number of shards that gained checksums.

    Raises:
        ShardError: If a sidecar is missing or damaged, or a shard to upgrade does not match its recorded sha256
            (checksums are only added to intact shards).
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    records, upgraded = [], 0
    for info in manifest["shards"]:
        path = directory / info["name"]
        record = load_sidecar(path)
        if "xxh3_64" not in record:
            check_shard_size(path, info["bytes"])
            if file_sha256(path) != info["sha256"]:
                raise ShardError(f"shard {path} does not match the sha256 its manifest records, so checksums cannot "
                                 "be added to it: re-extract it (delete it and its .json sidecar, rerun `vlm extract`)")
            with open(path, "rb") as handle:
                record["xxh3_64"] = [sample_checksum(os.pread(handle.fileno(), size, offset))
                                   for offset, size in zip(record["offsets"], record["sizes"])]
            atomic_write_json(path.with_suffix(".json"), record, compact=True)
            upgraded += 1
        records.append(record)
    with store_lock(directory):
        build_index(directory, records)
        if manifest["version"] < FORMAT_VERSION:
            manifest["version"] = FORMAT_VERSION
            atomic_write_json(directory / MANIFEST, manifest)
    return upgraded
