"""The on-disk format of a feature store: file names, sample keys, tar members, and sample encoding/decoding.

A sample is three tar members sharing the key ``<key>`` — the image id, percent-encoded by :func:`encode_key`:

* ``<key>.feats.npy`` — float16 ``[K, D]`` region features;
* ``<key>.boxes.npy`` — float32 ``[K, 4]`` boxes ``(x1, y1, x2, y2)`` divided by image width/height;
* ``<key>.json`` — ``{"image_id", "width", "height", ...}`` (compact JSON).

Tar members have fixed metadata (mode 644, uid/gid 0, mtime 0, ustar; PAX only for long or non-ASCII names), so the
same inputs give byte-identical shards. This module holds no state and does no I/O beyond bytes in, bytes out.

Format versions (the manifest's ``version``):

* 1 — shards, sidecars (ids, offsets, sizes), the index, a sha256 per shard;
* 2 — adds a checksum of every sample's bytes (:func:`sample_checksum`: xxh3_64 of the three members with their tar
  headers) to the
  sidecar (``"xxh3_64"``) and to the index (:data:`INDEX_DTYPE`), so both readers check each sample as they read it. A
  version-1 store is still read, unverified and with a warning; ``vlm features inspect DIR --reindex`` adds the
  checksums once its shards match their sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import numpy as np
import xxhash

from features.errors import ShardError, StoreError

__all__ = ["FORMAT", "FORMAT_VERSION", "INDEX_DTYPE", "INDEX_DTYPE_V1", "INDEX_ENTRIES", "INDEX_HASH", "LOCK",
           "MANIFEST", "decode_sample", "encode_key", "encode_sample", "id_hash", "is_store_file", "npy_bytes",
           "parse_members", "read_checked", "sample_checksum", "shard_name", "sidecar_name", "tar_header"]

FORMAT = "vlm-features"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
INDEX_HASH = "index-hash.npy"
INDEX_ENTRIES = "index-entries.npy"
LOCK = ".lock"
#: One row of the random-access index (beside the sorted first hash): second hash, shard, sample bytes, offset, and
#: the checksum of the sample's bytes.
INDEX_DTYPE = np.dtype([("hash2", "<u8"), ("shard", "<u4"), ("size", "<u4"), ("offset", "<u8"), ("xxh3_64", "<u8")])
#: The index row of format version 1 (no checksum).
INDEX_DTYPE_V1 = np.dtype([("hash2", "<u8"), ("shard", "<u4"), ("size", "<u4"), ("offset", "<u8")])


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard-000012.tar``)."""
    return f"shard-{index:06d}.tar"


def sidecar_name(index: int) -> str:
    """File name of the sidecar of shard ``index`` (``shard-000012.json``)."""
    return f"shard-{index:06d}.json"


def is_store_file(name: str) -> bool:
    """Whether a file name in a store folder belongs to the store (manifest, shards, sidecars, index, temporaries)."""
    return name == MANIFEST or name.startswith(("shard-", "index-", MANIFEST + "."))


def encode_key(image_id: str) -> str:
    """Return the tar key of an image id: percent-encoded so it holds no ``.`` or ``/``.

    Ordinary ids (``"17"``, ``"COCO_val2014_000000000042"``) are unchanged.
    """
    if not image_id:
        raise StoreError("empty image id: every sample needs a non-empty id")
    return quote(image_id, safe="").replace(".", "%2E")


def id_hash(image_id: str) -> tuple[int, int]:
    """Two independent 64-bit hashes of an id (a 128-bit blake2b digest), the keys of the random-access index."""
    digest = hashlib.blake2b(image_id.encode("utf-8"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def sample_checksum(data: bytes) -> int:
    """The checksum of one sample's tar bytes: xxh3_64, a 64-bit non-cryptographic hash.

    Why xxh3 and not ``zlib.crc32``: on 2 shared cores crc32 ran at about 4 GB/s (8.7 us for a 29 KiB sample, 35 us
    for a 36 x 2048 float16 one), which is 8% of a bare ``FeatureStore[id]`` read of the smaller; xxh3_64 took 0.6 and
    2.8 us. It detects accidental damage (bit rot, a torn copy), not tampering.
    """
    return xxhash.xxh3_64_intdigest(data)


def read_checked(data: bytes, shard: str | os.PathLike[str], image_id: str, offset: int, size: int,
                 recorded: int | None, file_size: int,
                 inspect_hint: str = "`vlm features inspect`") -> dict[str, bytes]:
    """The members of one sample read at ``offset`` (``size`` bytes), checked: the one check of both readers.

    Args:
        data: the bytes read.
        recorded: the checksum its writer recorded (None: a format-1 store, read unchecked).
        file_size: the shard's size, named when the read came up short.
        inspect_hint: the command that lists damaged shards, named in the message.

    Raises:
        ShardError: naming the shard, the sample and the byte range, when the read is short, the checksum differs, or
            the bytes are not a tar sample.
    """
    if len(data) != size:
        raise ShardError(f"shard {shard} is truncated: sample {image_id!r} needs bytes {offset}..{offset + size} but "
                         f"the file has {file_size} bytes")
    if recorded is not None:
        actual = sample_checksum(data)
        if actual != recorded:
            raise ShardError(f"shard {shard} is damaged: sample {image_id!r} (bytes {offset}..{offset + size}) fails "
                             f"its checksum (xxh3_64 {actual:016x}, recorded {recorded:016x}); re-extract the shard "
                             f"({inspect_hint} lists the damaged ones)")
    try:
        return parse_members(data)
    except (ValueError, tarfile.TarError) as exc:
        raise ShardError(f"shard {shard} is corrupt at byte {offset} (sample {image_id!r}): {exc}") from None


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file bytes of an array (no pickle)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def tar_header(name: str, size: int) -> bytes:
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


def _member(name: str, data: bytes) -> bytes:
    return tar_header(name, len(data)) + data + bytes(-len(data) % 512)


def encode_sample(image_id: str, feats: np.ndarray, boxes: np.ndarray, meta: Mapping[str, Any]) -> bytes:
    """The tar bytes of one sample: its three members, each padded to 512-byte blocks.

    Args:
        image_id: The image id (the key, percent-encoded where needed; kept exactly in the JSON).
        feats: ``[K, D]`` features, stored as float16.
        boxes: ``[K, 4]`` normalised boxes, stored as float32.
        meta: JSON-serialisable metadata; ``image_id`` is put first.
    """
    key = encode_key(image_id)
    return b"".join((
        _member(f"{key}.feats.npy", npy_bytes(feats.astype(np.float16, copy=False))),
        _member(f"{key}.boxes.npy", npy_bytes(boxes.astype(np.float32, copy=False))),
        _member(f"{key}.json", json.dumps({"image_id": image_id, **meta}, separators=(",", ":")).encode("utf-8")),
    ))


def parse_members(data: bytes) -> dict[str, bytes]:
    """Split the tar bytes of one sample into ``{extension: bytes}``.

    Reads the ustar headers directly (name, size, type); PAX extended headers (long or non-ASCII names) are handled
    by :mod:`tarfile`.

    Raises:
        ValueError: If a member is cut short.
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


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|][fiub][1248])', 'fortran_order': False, "
                         rb"'shape': \(((?:\d+, )*\d*,?)\), \}")


def _load_npy(data: bytes, what: str) -> np.ndarray:
    """The array of ``.npy`` bytes. The headers numpy writes for a C-ordered number array (every array of a store)
    are parsed here directly — ``numpy.lib.format`` evaluates the header as a Python literal, which took a third of
    reading a sample — and anything else goes through numpy."""
    if data[:8] == b"\x93NUMPY\x01\x00" and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        m = _NPY_HEADER.match(data, 10, end)
        if m is not None:
            dtype = np.dtype(m.group(1).decode())
            shape = tuple(int(x) for x in m.group(2).split(b",") if x.strip())
            count = int(np.prod(shape)) if shape else 1
            if len(data) - end == count * dtype.itemsize:
                return np.frombuffer(data, dtype, count, end).reshape(shape).copy()
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

    Raises:
        ShardError: If a member is missing or undecodable (the message starts with ``where``).
    """
    missing = [m for m in ("feats.npy", "boxes.npy", "json") if m not in members]
    if missing:
        raise ShardError(f"{where}: sample lacks {', '.join(missing)}")
    try:
        meta = json.loads(members["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{where}: member json is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("image_id"), str):
        raise ShardError(f"{where}: member json has no string 'image_id'")
    feats, boxes = _load_npy(members["feats.npy"], where), _load_npy(members["boxes.npy"], where)
    if feats.ndim != 2 or boxes.shape != (feats.shape[0], 4):
        raise ShardError(f"{where}: feats {feats.shape} and boxes {boxes.shape} are not [K, D] and [K, 4]")
    return {"image_id": meta["image_id"], "feats": feats, "boxes": boxes, "meta": meta}
