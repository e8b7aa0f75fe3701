"""Writing one shard: samples into ``shard-NNNNNN.tar.tmp``, then commit (tar renamed, sidecar written last).

The sidecar ``shard-NNNNNN.json`` records the shard's ids, the byte offset, length and checksum (xxh3_64) of each
sample (for the random-access index and the readers' checks), its size and sha256; it is written after the tar is in
place, so a shard without its sidecar is unfinished and is redone by the next run. :func:`load_sidecar` is the readers'
way in: a missing or damaged sidecar of a finished store is a :class:`~features.errors.ShardError` naming the shard.

The writer refuses what it cannot store faithfully: features that are NaN/Inf, or that become Inf as float16 (beyond
±65504), and boxes that are not finite, are a :class:`~features.errors.StoreError` naming the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import ShardError, StoreError
from features.io import atomic_write_json, fsync_dir
from features.store.format import encode_sample, sample_checksum, shard_name, sidecar_name

__all__ = ["ShardWriter", "load_sidecar", "parse_sidecar", "read_sidecar"]

#: Largest finite float16.
_F16_MAX = float(np.finfo(np.float16).max)

# Why a hand-written tar writer and not webdataset.TarWriter: bench/extract_throughput.py writes the same 36x2048
# float16 samples with both; TarWriter(mtime=0) took 1.7-1.8x as long per sample (it goes through tarfile and
# re-encodes each member by its extension; 2 shared cores), and it gives neither the byte offset of each sample (the
# random-access index needs them) nor a running sha256. Headers here are fixed: shards are byte-identical across runs.


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, handle: io.BufferedWriter) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.position += len(data)
        return self.handle.write(data)


def _float16_features(image_id: str, feats: np.ndarray) -> np.ndarray:
    """``feats`` as float16, or a :class:`StoreError` if a value is NaN/Inf or does not fit float16."""
    if feats.dtype == np.float16:
        half = feats
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            half = feats.astype(np.float16)
    finite = np.isfinite(half)
    if not finite.all():
        region = int(np.argwhere(~finite)[0][0])
        if not np.isfinite(feats).all():
            raise StoreError(f"image {image_id!r}: features hold NaN or Inf (region {region}); expected finite values")
        largest = float(np.abs(feats).max())
        raise StoreError(f"image {image_id!r}: feature value {largest:.4g} (region {region}) is beyond the float16 "
                         f"range ±{_F16_MAX:g} the store keeps; expected smaller features")
    return half


def _finite_boxes(image_id: str, boxes: np.ndarray) -> np.ndarray:
    """``boxes``, or a :class:`StoreError` if one holds NaN/Inf."""
    finite = np.isfinite(boxes)
    if not finite.all():
        region = int(np.argwhere(~finite)[0][0])
        raise StoreError(f"image {image_id!r}: box {region} holds NaN or Inf; expected finite (x1, y1, x2, y2)")
    return boxes


class ShardWriter:
    """Write one shard atomically.

    Samples go to ``shard-NNNNNN.tar.tmp``; :meth:`commit` closes the tar, renames it into place and writes the
    sidecar (the commit mark). :meth:`abort` removes the temporary file.

    Args:
        directory: The store directory.
        index: The shard number.
    """

    def __init__(self, directory: str | os.PathLike[str], index: int) -> None:
        self.directory = Path(directory)
        self.index = index
        self.path = self.directory / shard_name(index)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._handle = open(self.tmp_path, "wb", buffering=1 << 20)
        self._file = _HashingFile(self._handle)
        self.ids: list[str] = []
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self.checksums: list[int] = []

    def write(self, image_id: str, feats: np.ndarray, boxes: np.ndarray, meta: dict[str, Any]) -> None:
        """Append one sample.

        Args:
            image_id: The image id (the sample key, percent-encoded where needed).
            feats: ``[K, D]`` features, stored as float16.
            boxes: ``[K, 4]`` normalised boxes, stored as float32.
            meta: JSON-serialisable metadata; ``image_id`` is added.
        """
        data = encode_sample(image_id, _float16_features(image_id, feats), _finite_boxes(image_id, boxes), meta)
        self.ids.append(image_id)
        self.offsets.append(self._file.position)
        self.sizes.append(len(data))
        self.checksums.append(sample_checksum(data))
        self._file.write(data)

    def commit(self, failed: Sequence[dict[str, str]] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the shard and make it visible; return its sidecar record.

        Args:
            failed: Images of this shard that could not be read (``{"image_id", "path", "reason"}``).
            extra: More fields for the sidecar.
        """
        end = self._file.position + 1024  # end-of-archive: two zero blocks, then pad to a 10 KiB record like tar
        self._file.write(bytes(1024 + (-end % tarfile.RECORDSIZE)))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        record = {
            "name": self.path.name,
            "index": self.index,
            "num_samples": len(self.ids),
            "bytes": self._file.position,
            "sha256": self._file.sha256.hexdigest(),
            "failed": list(failed),
            **(extra or {}),
            "ids": self.ids,
            "offsets": self.offsets,
            "sizes": self.sizes,
            "xxh3_64": self.checksums,
        }
        os.replace(self.tmp_path, self.path)
        fsync_dir(self.directory)
        atomic_write_json(self.directory / sidecar_name(self.index), record, compact=True)  # the commit point
        return record

    def abort(self) -> None:
        """Drop the unfinished shard."""
        with contextlib.suppress(Exception):
            self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()


def load_sidecar(shard: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of a finished shard (``shard-NNNNNN.json`` beside ``shard-NNNNNN.tar``), checked for the readers.

    Raises:
        ShardError: Naming the shard if the sidecar is missing, unreadable, or its per-sample lists disagree.
    """
    shard = Path(shard)
    sidecar = shard.with_suffix(".json")
    if not sidecar.is_file():
        raise ShardError(f"shard {shard}: its sidecar {sidecar.name} (ids and byte offsets) is missing{_REDO}")
    try:
        text = sidecar.read_bytes()
    except OSError as exc:
        raise ShardError(f"shard {shard}: its sidecar {sidecar.name} is unreadable ({exc}){_REDO}") from None
    return parse_sidecar(text, shard)


_REDO = ("; redo the shard: rerun the `vlm extract` command that made the store (it redoes shards without a "
         "sidecar), or rerun `vlm features import-tsv --overwrite`")


def parse_sidecar(text: bytes | str, shard: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the bytes of the sidecar of ``shard`` (a path or a URL), read from a file or a server.

    Raises:
        ShardError: Naming the shard if the sidecar is not JSON or its per-sample lists disagree.
    """
    name = f"{str(shard).rsplit('/', 1)[-1].removesuffix('.tar')}.json"
    try:
        record = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"shard {shard}: its sidecar {name} is unreadable ({exc}){_REDO}") from None
    lists = ("ids", "offsets", "sizes") + (("xxh3_64",) if isinstance(record, dict) and "xxh3_64" in record else ())
    if not isinstance(record, dict) or not all(isinstance(record.get(k), list) for k in lists) or \
            len({len(record[k]) for k in lists}) != 1:
        raise ShardError(f"shard {shard}: its sidecar {name} does not hold equally long lists "
                         f"{', '.join(lists)}{_REDO}")
    return record


def read_sidecar(directory: str | os.PathLike[str], index: int) -> dict[str, Any] | None:
    """Return the sidecar of a finished shard, or ``None`` if the shard is not finished.

    A shard counts as finished when its sidecar exists and the tar has the recorded size.
    """
    directory = Path(directory)
    sidecar = directory / sidecar_name(index)
    tar = directory / shard_name(index)
    if not sidecar.is_file() or not tar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: JSON or UTF-8 decoding
        return None
    if not isinstance(record, dict) or tar.stat().st_size != record.get("bytes"):
        return None
    return record
