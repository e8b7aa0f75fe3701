"""Checking a store against its manifest (sizes, sha256, index) and rebuilding the index from the sidecars."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from features.errors import ShardError, StoreError
from features.io import file_sha256
from features.store.format import INDEX_ENTRIES, INDEX_HASH
from features.store.index import build_index
from features.store.manifest import load_manifest, store_lock

__all__ = ["check_shard_size", "reindex_store", "verify_store"]


def check_shard_size(path: Path, expected: int) -> None:
    """Raise :class:`~features.errors.ShardError` naming ``path`` if it is missing or not ``expected`` bytes long."""
    if not path.is_file():
        raise ShardError(f"shard {path} is missing (listed in the manifest)")
    actual = path.stat().st_size
    if actual != expected:
        state = "truncated" if actual < expected else "larger than recorded"
        raise ShardError(f"shard {path} is {state}: {actual} bytes, the manifest records {expected}; re-extract it "
                         f"(delete it and its .json sidecar, then rerun `vlm extract`) or run `vlm features inspect`")


def verify_store(directory: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """Check every shard of a store: present, recorded size, recorded sha256; and the index.

    Returns:
        ``(name, status, detail)`` per shard and for the index, status ``"ok"``, ``"missing"``, ``"truncated"``,
        ``"size"``, ``"checksum"`` or ``"index"``.
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
        digest = file_sha256(path)
        if digest != info["sha256"]:
            results.append((info["name"], "checksum", f"sha256 {digest[:16]}..., manifest records "
                                                      f"{info['sha256'][:16]}..."))
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


def reindex_store(directory: str | os.PathLike[str]) -> None:
    """Rebuild the random-access index of a complete store from its shard sidecars."""
    manifest = load_manifest(directory)
    records = []
    for info in manifest["shards"]:
        sidecar = Path(directory) / info["name"].replace(".tar", ".json")
        try:
            records.append(json.loads(sidecar.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"sidecar {sidecar} unreadable: {exc}") from exc
    with store_lock(directory):
        build_index(directory, records)
