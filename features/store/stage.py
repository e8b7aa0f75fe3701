"""Staging a store from a web server to a local folder, verified: :func:`stage_store`, ``vlm features stage``.

The third way to use a remote store (beside reading it by URL, :mod:`features.store.remote`, and streaming it,
:func:`~features.store.stream`): copy it once to node-local disk, then train from the copy. Each shard is fetched in
byte ranges of ``chunk`` bytes (so a dropped connection costs one chunk, not the shard) into a temporary file, its
sha256 compared with the manifest's before it is renamed into place; the sidecars and the index follow, and the
manifest is written last, so a folder with a manifest is a finished copy. Rerunning the command resumes: shards
already present with the recorded size and sha256 are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from features.errors import StoreError
from features.io import atomic_write_bytes, fsync_dir, make_dir
from features.store.format import INDEX_ENTRIES, INDEX_HASH, MANIFEST
from features.store.manifest import parse_manifest
from features.store.remote import HttpFiles

__all__ = ["stage_store"]

_CHUNK = 16 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stage_store(url: str, directory: str | os.PathLike[str], *, retries: int | None = None,
                timeout: float | None = None, chunk: int = _CHUNK,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Copy the store at ``url`` into ``directory`` (new, empty, or an unfinished copy of the same store).

    Args:
        url: The store folder's URL.
        directory: The local folder.
        retries, timeout: As :class:`~features.store.remote.HttpFiles`.
        chunk: Bytes per range request.
        progress: Called with ``(bytes done, bytes in all)`` after each chunk.

    Returns:
        ``{"shards", "fetched", "kept", "bytes"}``: shards in all, shards fetched now, shards already there.

    Raises:
        StoreError: The folder holds another store (a different manifest) or other files; a shard's sha256 differs
            from the manifest's after the download (it is deleted, not kept); or the server fails as
            :class:`~features.store.remote.HttpFiles` says.
    """
    remote = HttpFiles(url, retries=retries, timeout=timeout)
    raw = remote.get(MANIFEST)
    manifest = parse_manifest(raw, remote.url(MANIFEST), remote.base)
    directory = make_dir(directory)
    local_manifest = directory / MANIFEST
    if local_manifest.is_file():
        try:
            same = json.loads(local_manifest.read_bytes()) == manifest
        except ValueError:
            same = False
        if not same:
            raise StoreError(f"{directory} already holds another store ({local_manifest} differs from "
                             f"{remote.url(MANIFEST)}); stage into a new or empty folder")
    else:
        allowed = {s["name"] for s in manifest["shards"]} | {s["name"].removesuffix(".tar") + ".json"
                                                             for s in manifest["shards"]} | {INDEX_HASH, INDEX_ENTRIES}
        other = sorted(p.name for p in directory.iterdir() if p.name not in allowed and not p.name.endswith(".tmp")
                       and p.name != ".lock")
        if other:
            raise StoreError(f"{directory} holds files that are not this store's ({', '.join(other[:3])}); stage into "
                             "a new or empty folder")
    total = sum(int(s["bytes"]) for s in manifest["shards"])
    done = fetched = kept = 0
    for shard in manifest["shards"]:
        name, size, sha = shard["name"], int(shard["bytes"]), shard["sha256"]
        target = directory / name
        if target.is_file() and target.stat().st_size == size and _sha256(target) == sha:
            kept += 1
            done += size
            if progress:
                progress(done, total)
            continue
        tmp = target.with_name(f"{name}.{os.getpid()}.tmp")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as handle:
                for offset in range(0, size, chunk):
                    data = remote.read(name, offset, min(chunk, size - offset), size)
                    handle.write(data)
                    digest.update(data)
                    done += len(data)
                    if progress:
                        progress(done, total)
                handle.flush()
                os.fsync(handle.fileno())
            if digest.hexdigest() != sha:
                raise StoreError(f"{remote.url(name)}: sha256 {digest.hexdigest()[:16]}... after the download, the "
                                 f"manifest records {sha[:16]}...: the shard on the server is damaged or was "
                                 "replaced; nothing of it was kept")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write_bytes(directory / (name.removesuffix(".tar") + ".json"),
                           remote.get(name.removesuffix(".tar") + ".json"))
        fetched += 1
    for name in (INDEX_HASH, INDEX_ENTRIES):
        atomic_write_bytes(directory / name, remote.get(name))
    for shard in manifest["shards"]:  # sidecars of shards kept from an earlier, interrupted run
        sidecar = directory / (shard["name"].removesuffix(".tar") + ".json")
        if not sidecar.is_file():
            atomic_write_bytes(sidecar, remote.get(sidecar.name))
    fsync_dir(directory)
    atomic_write_bytes(local_manifest, raw)  # last: a folder with a manifest is a finished copy
    remote.close()
    return {"shards": len(manifest["shards"]), "fetched": fetched, "kept": kept, "bytes": total}
