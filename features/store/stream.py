"""Streaming a store: :func:`stream`, a webdataset pipeline with shard shuffling, splitting and a shuffle buffer.

Stages: shard list (per-epoch permutation, or resampled with replacement) -> split by node -> split by worker ->
read shards -> shuffle buffer -> decode.

Shards are read sample by sample at the byte ranges their sidecar records, each sample checked against its checksum
(format 2), sizes and counts against the manifest; any mismatch is a :class:`~features.errors.ShardError` naming the
shard (and the sample), so a damaged shard never feeds training silently. ``verify=False`` skips the checksums and
also reads webdataset shards that have no sidecar (not written by vlm) through webdataset's own tar reader.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch.utils.data
import webdataset as wds

from features.errors import ShardError, StoreError
from features.store.format import decode_sample, encode_key, read_checked
from features.store.manifest import load_manifest
from features.store.reader import warn_unverified
from features.store.verify import check_shard_size
from features.store.writer import load_sidecar

__all__ = ["FeatureStream", "stream"]


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
    """Pipeline stage: yields each shard's raw samples, checked (sizes, counts, checksums); errors name the shard."""

    def __init__(self, expected: dict[str, tuple[int, int]], verify: bool) -> None:
        self.expected = expected  # path -> (bytes, num_samples), empty when no manifest
        self.verify = verify

    def __call__(self, src: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
        for item in src:
            url = item["url"]
            path = Path(url)
            expected = self.expected.get(url)
            if expected is not None:
                check_shard_size(path, expected[0])
            elif not path.with_suffix(".json").is_file():
                if self.verify:
                    raise ShardError(f"shard {url}: no sidecar {path.with_suffix('.json').name} beside it, so its "
                                     "samples cannot be checked; pass verify=False to stream webdataset shards not "
                                     "written by vlm")
                yield from _webdataset_samples(url)
                continue
            record = load_sidecar(path)
            if expected is None:
                check_shard_size(path, record.get("bytes", path.stat().st_size), recorded_by="its sidecar")
            elif len(record["ids"]) != expected[1]:
                raise ShardError(f"shard {url} holds {len(record['ids'])} samples by its sidecar, the manifest records "
                                 f"{expected[1]}")
            checksums = record.get("xxh3_64") if self.verify else None
            if self.verify and checksums is None:
                warn_unverified(path.parent)
            yield from _sidecar_samples(url, record, checksums)


def _sidecar_samples(url: str, record: dict[str, Any], checksums: list[int] | None) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard at its sidecar's byte ranges, each checked against ``checksums`` when given."""
    with open(url, "rb") as handle:
        for n, (image_id, offset, size) in enumerate(zip(record["ids"], record["offsets"], record["sizes"])):
            handle.seek(offset)
            data = handle.read(size)
            members = read_checked(data, url, image_id, offset, size, checksums[n] if checksums is not None else None,
                                   os.fstat(handle.fileno()).st_size if len(data) != size else 0)
            yield {"__key__": encode_key(image_id), "__url__": url, "__id__": image_id, **members}


def _webdataset_samples(url: str) -> Iterator[dict[str, Any]]:
    """The raw samples of a shard without a sidecar, read by webdataset (``verify=False`` only)."""
    count = 0
    try:
        for raw in wds.tarfile_samples([{"url": url}]):
            count += 1
            yield raw
    except Exception as exc:  # webdataset and tarfile raise many types on a damaged file
        raise ShardError(f"shard {url} is truncated or corrupt after {count} samples: "
                         f"{exc.args[0] if exc.args else exc!r}") from exc


class _ShuffleBuffer:
    """Pipeline stage: shuffle samples through a buffer of ``size`` (seeded per epoch, node and worker).

    Why not ``webdataset.detshuffle``: it seeds with ``seed + epoch`` only, so every rank and worker draws the same
    random sequence, and it advances its own epoch on each pass, which fights :meth:`FeatureStream.set_epoch`; and it
    took 1.8x as long per sample (``bench/extract_throughput.py``, 200k small samples, 2 shared cores).
    """

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
        where = f"shard {raw.get('__url__')}, key {raw.get('__key__')!r}"
        sample = decode_sample(raw, where)
        if "__id__" in raw and sample["image_id"] != raw["__id__"]:
            raise ShardError(f"{where}: the sample holds image id {sample['image_id']!r}, its sidecar lists "
                             f"{raw['__id__']!r}")
        yield sample


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
           split_by_worker: bool = True, seed: int = 0, verify: bool = True) -> FeatureStream:
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
        split_by_node: Give each distributed rank a disjoint subset of shards (needs at least one shard per rank and
            worker). The rank comes from ``torch.distributed`` when it is initialised (webdataset falls back to the
            ``RANK``/``WORLD_SIZE`` variables of ``torchrun``).
        split_by_worker: Give each DataLoader worker a disjoint subset of shards.
        seed: Seed of the shard order and shuffle buffer.
        verify: Check each sample's checksum as it is read (needs the shards' sidecars). ``False`` skips the check and
            also reads shards without a sidecar (webdataset shards not written by vlm).

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
    stages.append(_ReadShards(expected, verify))
    if shuffle and buffer_size > 1:
        stages.append(_ShuffleBuffer(buffer_size, seed))
    stages.append(_decode_raw)
    return FeatureStream(*stages)
