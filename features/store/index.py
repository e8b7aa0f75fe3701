"""The random-access index: image id -> (shard, byte offset, length), memory-mapped by every reader process.

``index-hash.npy`` holds the sorted first 64-bit hash of every id; ``index-entries.npy`` the second hash, shard number,
sample length, offset and checksum in the same order (:data:`~features.store.format.INDEX_DTYPE`; a format-1 store has
no checksum column). A lookup is a binary search
over the first hash, confirmed by the second (128 bits in all), so a process holds no per-image Python objects — only
the OS page cache of two arrays, shared by all DataLoader workers.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import StoreError
from features.io import atomic_write_bytes
from features.store.format import INDEX_DTYPE, INDEX_DTYPE_V1, INDEX_ENTRIES, INDEX_HASH, id_hash

__all__ = ["StoreIndex", "build_index"]


def build_index(directory: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> None:
    """Write the memory-mapped random-access index from the sidecars of all shards.

    The per-sample checksum column is written when every sidecar has one (format 2); otherwise the format-1 layout.

    Raises:
        StoreError: If an image id occurs twice.
    """
    directory = Path(directory)
    total = sum(r["num_samples"] for r in records)
    with_checksum = all("xxh3_64" in r for r in records)
    hash1 = np.empty(total, dtype="<u8")
    entries = np.empty(total, dtype=INDEX_DTYPE if with_checksum else INDEX_DTYPE_V1)
    ids: list[str] = []
    row = 0
    for record in records:
        n = record["num_samples"]
        hashes = np.array([id_hash(i) for i in record["ids"]], dtype="<u8").reshape(n, 2)
        hash1[row:row + n] = hashes[:, 0]
        entries["hash2"][row:row + n] = hashes[:, 1]
        entries["shard"][row:row + n] = record["index"]
        entries["size"][row:row + n] = record["sizes"]
        entries["offset"][row:row + n] = record["offsets"]
        if with_checksum:
            entries["xxh3_64"][row:row + n] = record["xxh3_64"]
        ids.extend(record["ids"])
        row += n
    order = np.lexsort((entries["hash2"], hash1))
    hash1, entries = hash1[order], entries[order]
    same = (hash1[1:] == hash1[:-1]) & (entries["hash2"][1:] == entries["hash2"][:-1])
    if same.any():
        first = int(order[int(np.flatnonzero(same)[0])])
        raise StoreError(f"image id {ids[first]!r} occurs more than once in {directory}; image ids must be unique")
    for name, array in ((INDEX_HASH, hash1), (INDEX_ENTRIES, entries)):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        atomic_write_bytes(directory / name, buffer.getvalue())


class StoreIndex:
    """The memory-mapped index of a complete store.

    Args:
        directory: The store directory (or its URL, named in errors, when ``files`` are given).
        num_samples: Samples the manifest records (the index must hold as many).
        files: The bytes of ``index-hash.npy`` and ``index-entries.npy`` when they were fetched from a server;
            otherwise both are memory-mapped from ``directory``.

    Raises:
        StoreError: If the index files are unreadable or disagree with the manifest.
    """

    def __init__(self, directory: str | os.PathLike[str], num_samples: int, *,
                 files: tuple[bytes, bytes] | None = None) -> None:
        where = str(directory)
        try:
            if files is not None:  # fetched from a server: held in memory (about 48 bytes an image)
                self.hash1 = np.load(io.BytesIO(files[0]), allow_pickle=False)
                self.entries = np.load(io.BytesIO(files[1]), allow_pickle=False)
            else:
                directory = Path(directory)
                mode = "r" if num_samples else None  # an empty array cannot be memory-mapped
                self.hash1 = np.load(directory / INDEX_HASH, mmap_mode=mode, allow_pickle=False)
                self.entries = np.load(directory / INDEX_ENTRIES, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise StoreError(f"feature store {where}: index files unreadable ({exc}); run "
                             f"`vlm features inspect {where} --reindex`") from exc
        if len(self.hash1) != num_samples or len(self.entries) != num_samples:
            raise StoreError(f"feature store {where}: index has {len(self.hash1)} entries but the manifest "
                             f"records {num_samples} samples; run `vlm features inspect {where} --reindex`")
        if self.entries.dtype not in (INDEX_DTYPE, INDEX_DTYPE_V1):
            raise StoreError(f"feature store {where}: {INDEX_ENTRIES} has an unknown layout; run "
                             f"`vlm features inspect {where} --reindex`")
        #: Whether each entry carries the checksum of its sample (format 2).
        self.has_checksum = "xxh3_64" in self.entries.dtype.names

    def find(self, image_id: str) -> np.void | None:
        """The index entry of ``image_id`` (``hash2``, ``shard``, ``size``, ``offset``[, ``xxh3_64``]), or ``None``."""
        h1, h2 = id_hash(image_id)
        lo = int(np.searchsorted(self.hash1, np.uint64(h1), side="left"))
        while lo < len(self.hash1) and int(self.hash1[lo]) == h1:
            entry = self.entries[lo]
            if int(entry["hash2"]) == h2:
                return entry
            lo += 1
        return None
