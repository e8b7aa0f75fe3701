"""The feature store: webdataset tar shards of region features, a manifest, and two readers.

Layout of a store directory::

    manifest.json          backend + settings, feature dim, K, per-shard counts/bytes/sha256, failed images
    shard-000000.tar       webdataset shard: one sample per image
    shard-000000.json      the shard's sidecar: ids, byte offsets, checksum (written last: the shard's commit mark)
    index-hash.npy         sorted 64-bit hashes of all image ids       } random-access index, memory-mapped
    index-entries.npy      (hash2, shard, offset, size) per image        } by every reader process

A sample is three tar members sharing the key ``<key>`` — the image id, with ``%``, ``.`` and ``/`` (and other
characters outside ``[A-Za-z0-9_.~-]``) percent-encoded so that webdataset's ``key.extension`` split cannot break it:

* ``<key>.feats.npy`` — float16 ``[K, D]`` region features;
* ``<key>.boxes.npy`` — float32 ``[K, 4]`` boxes ``(x1, y1, x2, y2)`` divided by image width/height;
* ``<key>.json`` — ``{"image_id", "width", "height", ...}`` plus, when a detector made the boxes, ``objects_id``,
  ``objects_conf`` (and ``attrs_id``, ``attrs_conf`` for imported bottom-up-attention features) and ``num_valid``.

Shards are written to ``*.tmp`` files and renamed when complete; the sidecar is renamed last, so a shard without its
sidecar is unfinished and is redone. Tar members have fixed metadata (mtime 0, uid 0), so the same inputs give
byte-identical shards.

Readers:

* :class:`FeatureStore` — random access by image id (exact epochs, evaluation). It memory-maps the index (a binary
  search over sorted hashes) and reads one sample with a single ``pread``: a process holds no per-image Python objects,
  only the OS page cache of the index, shared by all DataLoader workers.
* :func:`stream` — a webdataset pipeline (shard shuffle, sample shuffle buffer, split by node and worker, optional
  resampling) yielding the same dicts.

Both check shard sizes against the manifest and name the shard when one is truncated or corrupt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import random
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch.utils.data
import webdataset as wds

from features.errors import ShardError, StoreError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "FeatureStore",
    "FeatureStream",
    "ShardWriter",
    "build_index",
    "decode_sample",
    "encode_key",
    "finalize_store",
    "load_manifest",
    "read_sidecar",
    "reindex_store",
    "shard_name",
    "sidecar_name",
    "store_lock",
    "stream",
    "verify_store",
]

logger = logging.getLogger(__name__)

FORMAT = "vlm-features"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_HASH = "index-hash.npy"
INDEX_ENTRIES = "index-entries.npy"
LOCK = ".lock"
INDEX_DTYPE = np.dtype([("hash2", "<u8"), ("shard", "<u4"), ("size", "<u4"), ("offset", "<u8")])


# ----------------------------------------------------------------------------------------------------------- naming


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard-000012.tar``)."""
    return f"shard-{index:06d}.tar"


def sidecar_name(index: int) -> str:
    """File name of the sidecar of shard ``index`` (``shard-000012.json``)."""
    return f"shard-{index:06d}.json"


def encode_key(image_id: str) -> str:
    """Return the tar key of an image id: percent-encoded so it holds no ``.`` or ``/``.

    Ordinary ids (``"17"``, ``"COCO_val2014_000000000042"``) are unchanged.
    """
    if not image_id:
        raise StoreError("empty image id: every sample needs a non-empty id")
    return quote(image_id, safe="").replace(".", "%2E")


def _id_hash(image_id: str) -> tuple[int, int]:
    """Two independent 64-bit hashes of an id (a 128-bit blake2b digest)."""
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------- writer


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

    def tell(self) -> int:
        return self.position


def _tar_header(name: str, size: int) -> bytes:
    """The tar header block(s) of a regular file with fixed metadata (mode 644, uid/gid 0, mtime 0).

    Short ASCII names get a plain ustar block; others go through :mod:`tarfile`'s PAX encoding.
    """
    encoded = name.encode("utf-8")
    if len(encoded) > 99 or not name.isascii() or size >= 8 ** 11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    header = bytearray(512)
    header[0:len(encoded)] = encoded
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b"        "  # checksum field counts as spaces while summing
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class ShardWriter:
    """Write one shard atomically.

    Samples go to ``shard-NNNNNN.tar.tmp``; :meth:`commit` closes the tar, writes the sidecar and renames both into
    place (the sidecar last). :meth:`abort` removes the temporary files.

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

    def _add(self, name: str, data: bytes) -> None:
        padding = -len(data) % 512
        self._file.write(_tar_header(name, len(data)) + data + bytes(padding))

    def write(self, image_id: str, feats: np.ndarray, boxes: np.ndarray, meta: dict[str, Any]) -> None:
        """Append one sample.

        Args:
            image_id: The image id (the sample key, percent-encoded where needed).
            feats: ``[K, D]`` features, stored as float16.
            boxes: ``[K, 4]`` normalised boxes, stored as float32.
            meta: JSON-serialisable metadata; ``image_id`` is added.
        """
        key = encode_key(image_id)
        start = self._file.position
        self._add(f"{key}.feats.npy", _npy_bytes(feats.astype(np.float16, copy=False)))
        self._add(f"{key}.boxes.npy", _npy_bytes(boxes.astype(np.float32, copy=False)))
        self._add(f"{key}.json", json.dumps({"image_id": image_id, **meta}, separators=(",", ":")).encode("utf-8"))
        self.ids.append(image_id)
        self.offsets.append(start)
        self.sizes.append(self._file.position - start)

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
        }
        sidecar = self.directory / sidecar_name(self.index)
        sidecar_tmp = sidecar.with_name(sidecar.name + ".tmp")
        with open(sidecar_tmp, "w", encoding="utf-8") as handle:
            json.dump(record, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(self.tmp_path, self.path)
        os.replace(sidecar_tmp, sidecar)  # the commit point: the shard now counts as finished
        _fsync_dir(self.directory)
        return record

    def abort(self) -> None:
        """Drop the unfinished shard."""
        with contextlib.suppress(Exception):
            self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()


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
    except (OSError, json.JSONDecodeError):
        return None
    if tar.stat().st_size != record.get("bytes"):
        return None
    return record


# ----------------------------------------------------------------------------------------------------------- manifest


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
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{path}: not a vlm feature-store manifest (format {manifest.get('format')!r})")
    if require_complete and not manifest.get("complete"):
        done = len(manifest.get("shards", []))
        raise StoreError(
            f"feature store {directory} is incomplete ({done} of {manifest.get('num_shards')} shards finished); "
            "rerun the same `vlm extract` command (it resumes) for every part"
        )
    return manifest


def build_index(directory: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> None:
    """Write the memory-mapped random-access index from the sidecars of all shards.

    Raises:
        StoreError: If an image id occurs twice.
    """
    directory = Path(directory)
    total = sum(r["num_samples"] for r in records)
    hash1 = np.empty(total, dtype="<u8")
    entries = np.empty(total, dtype=INDEX_DTYPE)
    ids: list[str] = []
    row = 0
    for record in records:
        n = record["num_samples"]
        hashes = np.array([_id_hash(i) for i in record["ids"]], dtype="<u8").reshape(n, 2)
        hash1[row:row + n] = hashes[:, 0]
        entries["hash2"][row:row + n] = hashes[:, 1]
        entries["shard"][row:row + n] = record["index"]
        entries["size"][row:row + n] = record["sizes"]
        entries["offset"][row:row + n] = record["offsets"]
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
        _atomic_write_bytes(directory / name, buffer.getvalue())


def finalize_store(directory: str | os.PathLike[str], plan: dict[str, Any]) -> dict[str, Any]:
    """Rebuild ``manifest.json`` from the plan and the finished shards; index the store once all are finished.

    Call it while holding :func:`store_lock`. Safe to call from every process of a split extraction: the last one to
    finish sees all shards and marks the store complete.

    Args:
        directory: The store directory.
        plan: The run's fixed description (backend, settings, source, ``num_shards``...).

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
    _atomic_write_json(directory / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------- decoding


def _load_npy(data: bytes, what: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise ShardError(f"{what}: not a valid .npy array: {exc}") from exc


def decode_sample(members: Mapping[str, bytes], where: str) -> dict[str, Any]:
    """Turn the raw members of one sample (``feats.npy``, ``boxes.npy``, ``json``) into the reader dict.

    Args:
        members: Member bytes by extension.
        where: Shard and key, for error messages.

    Returns:
        ``{"image_id": str, "feats": float16 [K, D], "boxes": float32 [K, 4], "meta": dict}``.
    """
    missing = [m for m in ("feats.npy", "boxes.npy", "json") if m not in members]
    if missing:
        raise ShardError(f"{where}: sample lacks {', '.join(missing)}")
    meta = json.loads(members["json"])
    return {
        "image_id": meta["image_id"],
        "feats": _load_npy(members["feats.npy"], where),
        "boxes": _load_npy(members["boxes.npy"], where),
        "meta": meta,
    }


# ------------------------------------------------------------------------------------------------------- random access


class FeatureStore(Mapping[str, dict[str, Any]]):
    """Random access to a finished store by image id.

    ``store[image_id]`` returns ``{"image_id", "feats": float16 [K, D], "boxes": float32 [K, 4], "meta": dict}``.
    Iterating yields image ids in shard order. Safe to use from DataLoader workers (files are reopened per process).

    Args:
        directory: The store directory.
        max_open_files: Shard files kept open per process.

    Raises:
        StoreError: If the store is missing or unfinished.
        ShardError: If a shard is missing or has a different size than the manifest records (truncated).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_open_files: int = 64) -> None:
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        self._shards = [self.directory / s["name"] for s in self.manifest["shards"]]
        self._shard_numbers = {int(s["name"][6:12]): pos for pos, s in enumerate(self.manifest["shards"])}
        for path, info in zip(self._shards, self.manifest["shards"]):
            _check_shard_size(path, info["bytes"])
        try:
            mode = "r" if self.manifest["num_samples"] else None  # an empty array cannot be memory-mapped
            self._hash1 = np.load(self.directory / INDEX_HASH, mmap_mode=mode)
            self._entries = np.load(self.directory / INDEX_ENTRIES, mmap_mode=mode)
        except (OSError, ValueError) as exc:
            raise StoreError(f"feature store {self.directory}: index files unreadable ({exc}); run "
                             f"`vlm features inspect {self.directory} --reindex`") from exc
        if len(self._hash1) != self.manifest["num_samples"]:
            raise StoreError(f"feature store {self.directory}: index has {len(self._hash1)} entries but the manifest "
                             f"records {self.manifest['num_samples']} samples; run `vlm features inspect --reindex`")
        self.max_open_files = max_open_files
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    @property
    def feature_dim(self) -> int:
        """Feature size D."""
        return int(self.manifest["feature_dim"])

    @property
    def num_regions(self) -> int | None:
        """Regions per image K, or ``None`` when it varies (imported TSVs with adaptive box counts)."""
        k = self.manifest.get("num_regions")
        return None if k is None else int(k)

    def __len__(self) -> int:
        return int(self.manifest["num_samples"])

    def _find(self, image_id: str) -> np.void | None:
        if not isinstance(image_id, str):
            return None
        h1, h2 = _id_hash(image_id)
        lo = int(np.searchsorted(self._hash1, np.uint64(h1), side="left"))
        while lo < len(self._hash1) and int(self._hash1[lo]) == h1:
            entry = self._entries[lo]
            if int(entry["hash2"]) == h2:
                return entry
            lo += 1
        return None

    def __contains__(self, image_id: object) -> bool:
        return self._find(image_id) is not None  # type: ignore[arg-type]

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
        entry = self._find(image_id)
        if entry is None:
            raise KeyError(image_id)
        shard, offset, size = int(entry["shard"]), int(entry["offset"]), int(entry["size"])
        path = self._shards[self._shard_numbers[shard]]
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise ShardError(f"shard {path} is truncated: sample {image_id!r} needs bytes {offset}..{offset + size} "
                             f"but the file has {path.stat().st_size} bytes")
        try:
            members = _parse_members(data)
        except (ValueError, tarfile.TarError) as exc:
            raise ShardError(f"shard {path} is corrupt at byte {offset} (sample {image_id!r}): {exc}") from exc
        sample = decode_sample(members, f"shard {path}, sample {image_id!r}")
        if sample["image_id"] != image_id:
            raise ShardError(f"shard {path}: index points to {sample['image_id']!r} for {image_id!r}; the index is "
                             f"stale, run `vlm features inspect {self.directory} --reindex`")
        return sample

    def ids(self) -> Iterator[str]:
        """Yield all image ids in shard order (reads one shard sidecar at a time)."""
        for info in self.manifest["shards"]:
            record = json.loads((self.directory / info["name"].replace(".tar", ".json")).read_text(encoding="utf-8"))
            yield from record["ids"]

    def __iter__(self) -> Iterator[str]:
        return self.ids()

    def shard_paths(self) -> list[str]:
        """Paths of the shards, for :func:`stream` or other webdataset tools."""
        return [str(p) for p in self._shards]

    def close(self) -> None:
        """Close the open shard files of this process."""
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


def _parse_members(data: bytes) -> dict[str, bytes]:
    """Split the tar bytes of one sample into ``{extension: bytes}``.

    Reads the ustar headers directly (name, size, type); PAX extended headers (long or non-ASCII names) are handled
    by :mod:`tarfile`.
    """
    members: dict[str, bytes] = {}
    pos = 0
    while pos + 512 <= len(data):
        header = data[pos:pos + 512]
        if header.count(0) == 512:
            break
        kind = header[156:157]
        if kind not in (b"0", b"\0"):
            with tarfile.open(fileobj=io.BytesIO(data[pos:]), mode="r:") as tar:
                for info in tar:
                    handle = tar.extractfile(info)
                    if handle is not None:
                        members[info.name.split(".", 1)[1]] = handle.read()
            return members
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        start = pos + 512
        if start + size > len(data):
            raise ValueError(f"member {name} needs {size} bytes, only {len(data) - start} present")
        members[name.split(".", 1)[1]] = data[start:start + size]
        pos = start + (size + 511) // 512 * 512
    return members


def _check_shard_size(path: Path, expected: int) -> None:
    if not path.is_file():
        raise ShardError(f"shard {path} is missing (listed in the manifest)")
    actual = path.stat().st_size
    if actual != expected:
        state = "truncated" if actual < expected else "larger than recorded"
        raise ShardError(f"shard {path} is {state}: {actual} bytes, the manifest records {expected}; re-extract it "
                         f"(delete it and its .json sidecar, then rerun `vlm extract`) or run `vlm features inspect`")


# ----------------------------------------------------------------------------------------------------------- streaming


def _worker_seed(seed: int, epoch: int) -> int:
    rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
    return hash((seed, epoch, rank, worker)) & 0xFFFFFFFF


class _ShardList(torch.utils.data.IterableDataset):
    """First pipeline stage: yields ``{"url": path}`` — all shards in a per-epoch order, or resampled forever."""

    def __init__(self, urls: Sequence[str], *, shuffle: bool, resampled: bool, seed: int) -> None:
        super().__init__()
        self.urls, self.shuffle, self.resampled, self.seed, self.epoch = list(urls), shuffle, resampled, seed, 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        if self.resampled:  # every node and worker draws its own shards, with replacement
            rng = random.Random(_worker_seed(self.seed, self.epoch))
            while True:
                yield {"url": self.urls[rng.randrange(len(self.urls))]}
        urls = list(self.urls)
        if self.shuffle:  # same permutation on every node and worker, so the splits stay disjoint
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(urls)
        for url in urls:
            yield {"url": url}


class _ReadShards:
    """Pipeline stage: opens each shard and yields its samples; errors name the shard; counts are checked."""

    def __init__(self, expected: dict[str, tuple[int, int]]) -> None:
        self.expected = expected  # path -> (bytes, num_samples), empty when no manifest

    def __call__(self, src: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
        for item in src:
            url = item["url"]
            expected = self.expected.get(url)
            if expected is not None:
                _check_shard_size(Path(url), expected[0])
            count = 0
            try:
                for raw in wds.tarfile_samples([{"url": url}]):
                    count += 1
                    yield raw
            except ShardError:
                raise
            except Exception as exc:
                raise ShardError(f"shard {url} is truncated or corrupt after {count} samples: "
                                 f"{exc.args[0] if exc.args else exc!r}") from exc
            if expected is not None and count != expected[1]:
                raise ShardError(f"shard {url} holds {count} samples, the manifest records {expected[1]}")


class _ShuffleBuffer:
    """Pipeline stage: shuffle samples through a buffer of ``size`` (seeded per epoch, node and worker)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rng = random.Random(_worker_seed(self.seed, self.epoch))
        buffer: list[dict[str, Any]] = []
        for sample in src:
            if len(buffer) < self.size:
                buffer.append(sample)
                continue
            slot = rng.randrange(self.size)
            yield buffer[slot]
            buffer[slot] = sample
        rng.shuffle(buffer)
        yield from buffer


def _decode_raw(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for raw in src:
        yield decode_sample(raw, f"shard {raw.get('__url__')}, key {raw.get('__key__')!r}")


class FeatureStream(wds.DataPipeline):
    """The webdataset pipeline returned by :func:`stream`; call :meth:`set_epoch` before each epoch."""

    def set_epoch(self, epoch: int) -> None:
        """Reseed shard order and sample shuffling for ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        for stage in self.pipeline:
            if hasattr(stage, "epoch"):
                stage.epoch = epoch


def _resolve_shards(source: str | os.PathLike[str] | Sequence[str]) -> tuple[list[str], dict[str, tuple[int, int]]]:
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        manifest = load_manifest(source)
        urls = [str(Path(source) / s["name"]) for s in manifest["shards"]]
        expected = {u: (s["bytes"], s["num_samples"]) for u, s in zip(urls, manifest["shards"])}
        return urls, expected
    urls = wds.shardlists.expand_urls(str(source)) if isinstance(source, (str, os.PathLike)) else list(source)
    for url in urls:
        if not Path(url).is_file():
            raise ShardError(f"shard {url} not found")
    return urls, {}


def stream(source: str | os.PathLike[str] | Sequence[str], *, shuffle: bool = True, buffer_size: int = 1000,
           shard_shuffle: bool | None = None, resampled: bool = False, split_by_node: bool = True,
           split_by_worker: bool = True, seed: int = 0) -> FeatureStream:
    """A webdataset pipeline over a store's shards yielding ``{"image_id", "feats", "boxes", "meta"}``.

    Use it directly or wrap it in ``torch.utils.data.DataLoader(pipeline, batch_size=None or N, num_workers=W)``.

    Args:
        source: A store directory (shard list and sizes from its manifest, which are then checked), a list of shard
            paths, or a brace pattern (``"dir/shard-{000000..000009}.tar"``).
        shuffle: Shuffle samples through a buffer (and shards, unless ``shard_shuffle`` says otherwise).
        buffer_size: Samples held by the shuffle buffer.
        shard_shuffle: Shuffle the shard order each epoch; defaults to ``shuffle``.
        resampled: Draw shards with replacement, forever, independently on each node and worker (for multi-node
            training with ``with_epoch``); otherwise each epoch visits every shard once.
        split_by_node: Give each distributed rank (``RANK``/``WORLD_SIZE`` or ``torch.distributed``) a disjoint
            subset of shards (needs at least one shard per rank and worker).
        split_by_worker: Give each DataLoader worker a disjoint subset of shards.
        seed: Seed of the shard order and shuffle buffer.

    Returns:
        A :class:`FeatureStream` (a ``webdataset.DataPipeline``).
    """
    urls, expected = _resolve_shards(source)
    if not urls:
        raise StoreError(f"no shards in {source}")
    stages: list[Any] = [_ShardList(urls, shuffle=shuffle if shard_shuffle is None else shard_shuffle,
                                    resampled=resampled, seed=seed)]
    if not resampled:
        if split_by_node:
            stages.append(wds.split_by_node)
        if split_by_worker:
            stages.append(wds.split_by_worker)
    stages.append(_ReadShards(expected))
    if shuffle and buffer_size > 1:
        stages.append(_ShuffleBuffer(buffer_size, seed))
    stages.append(_decode_raw)
    return FeatureStream(*stages)


# ----------------------------------------------------------------------------------------------------------- checking


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
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != info["sha256"]:
            results.append((info["name"], "checksum", f"sha256 {digest.hexdigest()[:16]}..., manifest records "
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
