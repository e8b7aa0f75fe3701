"""Random access to a finished store by image id: :class:`FeatureStore`.

Every sample read is checked against the checksum (xxh3_64) its writer recorded (format 2), so a damaged shard raises
:class:`~features.errors.ShardError` naming the shard, the byte range and the image instead of returning wrong numbers.
The check costs about 1% of a read (``bench/pipeline.py`` prints the ratio); ``verify=False`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from features.errors import ShardError
from features.store.format import (
    INDEX_ENTRIES,
    INDEX_HASH,
    MANIFEST,
    decode_sample,
    read_checked,
)
from features.store.index import StoreIndex
from features.store.manifest import StoreShape, load_manifest, parse_manifest
from features.store.remote import HttpFiles, is_url
from features.store.verify import check_shard_size
from features.store.writer import load_sidecar, parse_sidecar

__all__ = ["FeatureStore", "warn_unverified"]

logger = logging.getLogger(__name__)

_WARNED: set[str] = set()


def warn_unverified(directory: os.PathLike[str] | str) -> None:
    """Warn once per process and store that a format-1 store's samples cannot be checked as they are read."""
    key = str(directory) if is_url(str(directory)) else os.path.realpath(directory)
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning("feature store %s has format version 1, without per-sample checksums: a damaged shard cannot be "
                       "detected as it is read; run `vlm features inspect %s --reindex` once to check its shards and "
                       "add them", directory, directory)


class FeatureStore(StoreShape, Mapping[str, dict[str, Any]]):
    """Random access to a finished store by image id.

    ``store[image_id]`` returns ``{"image_id", "feats": float16 [K, D], "boxes": float32 [K, 4], "meta": dict}``.
    Iterating yields image ids in shard order. A lookup searches the memory-mapped index and reads the sample with a
    single ``pread``. Safe to use from DataLoader workers (files are reopened per process; picklable for ``spawn``).

    Every sample is checked against its recorded checksum as it is read (format 2; a format-1 store is read unchecked,
    with a warning, until ``vlm features inspect DIR --reindex`` adds the checksums).

    A store can also be read from a web server: give its folder's ``http://`` or ``https://`` URL. The manifest and
    the index are fetched once; each sample is one ``Range`` request for its bytes (:mod:`features.store.remote`:
    retries, timeouts, what is checked). The order of reads, and so the data order, is the same as from disk.

    Args:
        directory: The store directory, or its URL.
        max_open_files: Shard files kept open per process.
        verify: Check each sample's checksum (on by default; off only to measure what the check costs).
        retries: A store by URL: further tries of a request that fails (default ``VLM_HTTP_RETRIES``, else 3).
        timeout: A store by URL: seconds to wait for the server (default ``VLM_HTTP_TIMEOUT``, else 60).

    Raises:
        StoreError: If the store is missing, unfinished, or its manifest or index is damaged.
        ShardError: If a shard or its sidecar is missing, or a shard has a different size than the manifest records
            (truncated); on read, if a sample fails its checksum or cannot be decoded.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_open_files: int = 64, verify: bool = True,
                 retries: int | None = None, timeout: float | None = None) -> None:
        self.remote = HttpFiles(str(directory), retries=retries, timeout=timeout) if is_url(directory) else None
        if self.remote is not None:  # a store on a web server: manifest and index fetched once, shards read in place
            self.directory: Path | str = self.remote.base
            self.manifest = parse_manifest(self.remote.get(MANIFEST), self.remote.url(MANIFEST), self.directory)
            self._index = StoreIndex(self.directory, int(self.manifest["num_samples"]),
                                     files=(self.remote.get(INDEX_HASH), self.remote.get(INDEX_ENTRIES)))
        else:
            self.directory = Path(directory)
            self.manifest = load_manifest(self.directory)
        self._names = [s["name"] for s in self.manifest["shards"]]
        self._sizes = [int(s["bytes"]) for s in self.manifest["shards"]]
        self._shards = [self.directory / n for n in self._names] if self.remote is None else \
            [self.remote.url(n) for n in self._names]
        # shard number (from "shard-NNNNNN.tar") -> position in the manifest's list
        self._shard_numbers = {int(s["name"][6:12]): pos for pos, s in enumerate(self.manifest["shards"])}
        if self.remote is None:  # a server's files are checked on each read (Content-Range), not one request each
            for path, size in zip(self._shards, self._sizes):
                check_shard_size(path, size)
                if not path.with_suffix(".json").is_file():
                    load_sidecar(path)  # raises, naming the shard and its sidecar
            self._index = StoreIndex(self.directory, int(self.manifest["num_samples"]))
        self.verify = verify and self._index.has_checksum
        if verify and not self._index.has_checksum:
            warn_unverified(self.directory)
        self.max_open_files = max_open_files
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.manifest["num_samples"])

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self._index.find(image_id) is not None

    def _fd(self, shard: int) -> int:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: descriptors are the parent's
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= self.max_open_files:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = os.open(self._shards[self._shard_numbers[shard]], os.O_RDONLY)
            self._fds[shard] = fd
        return fd

    def __getitem__(self, image_id: str) -> dict[str, Any]:
        if not isinstance(image_id, str):
            there = f"; {str(image_id)!r} is in the store" if str(image_id) in self else f"; {str(image_id)!r} is not"
            raise KeyError(f"image ids are strings, got the {type(image_id).__name__} {image_id!r}{there}")
        entry = self._index.find(image_id)
        if entry is None:
            raise KeyError(image_id)
        shard, offset, size = int(entry["shard"]), int(entry["offset"]), int(entry["size"])
        pos = self._shard_numbers[shard]
        path = self._shards[pos]
        if self.remote is not None:
            data = self.remote.read(self._names[pos], offset, size, self._sizes[pos])
            file_size = self._sizes[pos]
        else:
            data = os.pread(self._fd(shard), size, offset)
            file_size = path.stat().st_size if len(data) != size else 0
        recorded = int(entry["xxh3_64"]) if self.verify else None
        members = read_checked(data, path, image_id, offset, size, recorded, file_size,
                               f"`vlm features inspect {self.directory}`")
        sample = decode_sample(members, f"shard {path}, sample {image_id!r}")
        if sample["image_id"] != image_id:
            raise ShardError(f"shard {path}: index points to {sample['image_id']!r} for {image_id!r}; the index is "
                             f"stale, run `vlm features inspect {self.directory} --reindex`")
        return sample

    def prefetch(self, image_ids: Iterable[str]) -> None:
        """Ask the kernel to start reading these samples (``posix_fadvise(WILLNEED)``), so that the reads of a batch
        queue up on the disk together instead of one after another; a hint only (ids not in the store are ignored, a
        store by URL does nothing)."""
        if self.remote is not None or not hasattr(os, "posix_fadvise"):
            return
        for image_id in image_ids:
            entry = self._index.find(image_id) if isinstance(image_id, str) else None
            if entry is not None:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(self._fd(int(entry["shard"])), int(entry["offset"]), int(entry["size"]),
                                     os.POSIX_FADV_WILLNEED)

    def ids(self) -> Iterator[str]:
        """Yield all image ids in shard order (reads one shard sidecar at a time)."""
        for name, path in zip(self._names, self._shards):
            if self.remote is not None:
                sidecar = name.removesuffix(".tar") + ".json"
                yield from parse_sidecar(self.remote.get(sidecar), path)["ids"]
            else:
                yield from load_sidecar(path)["ids"]

    def __iter__(self) -> Iterator[str]:
        return self.ids()

    def shard_paths(self) -> list[str]:
        """Paths (or URLs) of the shards, for :func:`~features.store.stream` or other webdataset tools."""
        return [str(p) for p in self._shards]

    def close(self) -> None:
        """Close the open shard files (or the server connection) of this process."""
        if self.remote is not None:
            self.remote.close()
        if os.getpid() == self._pid:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:  # picklable for spawn-started DataLoader workers
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.directory)!r}, images={len(self)}, K={self.num_regions}, "
                f"D={self.feature_dim}, backend={self.manifest.get('backend')!r})")

