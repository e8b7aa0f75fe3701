"""Batched, resumable, splittable region-feature extraction into a feature store.

:func:`extract` runs one backend (:mod:`features.backends`) over an image source (:mod:`features.sources`), its images
decoded by :func:`features.decode.decode_image`, and writes webdataset shards (:mod:`features.store`);
:func:`extract_decoded` runs a backend in memory on images already decoded, with the same batch and metadata.

* **Shard plan.** The source's images, in their deterministic order, are cut into consecutive shards of
  ``shard_size`` images: shard ``j`` holds images ``[j * shard_size, (j + 1) * shard_size)`` minus those that failed.
  Batches never cross a shard boundary, so every run computes every shard from the same batches.
* **Parts.** ``rank=i, world_size=n`` (or ``part=(i, n)``) takes the shards ``j`` with ``j % n == i``. Several
  processes write into the same directory without coordination beyond a file lock around the manifest; the last to
  finish marks the store complete and writes the index. This module reads no environment variables: under
  ``torchrun`` the command line (:mod:`features.cli`) passes ``RANK``/``WORLD_SIZE`` and the ``LOCAL_RANK`` device.
* **Resuming.** A shard becomes visible only when it is complete (written to ``*.tmp``, renamed, sidecar last). A rerun
  with the same arguments skips the finished shards and redoes the rest; a rerun with different settings or a
  different image list is refused (``overwrite=True`` starts over).
* **Bad images.** With ``on_error="skip"`` (the default) an image that cannot be opened or decoded is left out, counted,
  logged and listed with its reason in the manifest's ``failed`` list; ``on_error="fail"`` stops at the first one with
  :class:`~features.errors.ImageReadError` naming the file.
* **Padded regions.** For a backend whose samples record ``num_valid`` (``detector``, ``detectron2``, ``proposals``),
  each shard's sidecar counts the images padded to K (``num_padded``) and those in which the backend found no region
  at all (``num_no_regions``: no detection, or no segmentation proposal in a flat image); the manifest sums them under
  ``regions`` and a run with images of no region logs a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from features.backends import Extractor, create_extractor
from features.decode import decode_image
from features.errors import FeaturesError, ImageReadError, StoreError
from features.io import atomic_write_json, prepare_output_dir
from features.sources import ImageRecord, describe_source, resolve_source
from features.store.format import MANIFEST, is_store_file
from features.store.manifest import finalize_store, load_manifest, make_plan, store_lock
from features.store.writer import ShardWriter, read_sidecar

__all__ = ["check_device", "default_num_workers", "extract", "extract_decoded", "parse_part"]

logger = logging.getLogger(__name__)

# Manifest fields that may differ between runs that resume one another. The format version is one: a run of this
# version finishes a store begun by an older one (its shards without checksums are read unchecked, with a warning,
# until `vlm features inspect DIR --reindex` adds them).
_PLAN_VOLATILE = ("created", "updated", "version")


def parse_part(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0 <= i < n) into ``(i, n)``.

    Raises:
        FeaturesError: If the text is not of that form.
    """
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise FeaturesError(f"--part {text!r}: expected i/n with integers 0 <= i < n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise FeaturesError(f"--part {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return index, count


def _resolve_part(part: tuple[int, int] | None, rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)`` from either spelling, checked."""
    if part is not None and (rank is not None or world_size is not None):
        raise FeaturesError("give either part=(rank, world_size) or rank=/world_size=, not both")
    index, count = part if part is not None else (rank or 0, 1 if world_size is None else world_size)
    if count < 1 or not 0 <= index < count:
        raise FeaturesError(f"rank {index} / world size {count}: expected 0 <= rank < world_size")
    return index, count


def check_device(device: str) -> torch.device:
    """The torch device named ``device``, refused before any work when this machine does not have it.

    Raises:
        FeaturesError: If the name is not a device, or names a GPU that is not there (``cuda:7`` on a 1-GPU machine).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FeaturesError(f"device {device!r} is not a device name; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise FeaturesError(f"device {device!r}: no such CUDA device on this machine ({count} visible); use "
                                f"--device cpu{' or cuda:0' if count else ''}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise FeaturesError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise FeaturesError(f"device {device!r}: expected cpu, cuda, cuda:N or mps")
    return dev


def default_num_workers() -> int:
    """Image-decoding worker processes: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def extract_decoded(extractor: Extractor, images: Sequence[np.ndarray],
                    sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Run ``extractor`` in memory on images decoded by :func:`~features.decode.decode_image` (no feature store).

    The same batch and metadata as :func:`extract` writes, so a sample here equals the store's sample of the same
    image: ``{"feats" [K, D] float16, "boxes" [K, 4], "meta" {"width", "height", ...backend metadata}}``.

    Args:
        extractor: A built backend.
        images: uint8 ``[S, S, 3]`` arrays, ``S = extractor.image_size``.
        sizes: ``(width, height)`` of each upright original image.
    """
    if not images:
        return []
    out = extractor.extract(_image_batch(images))
    return [{"feats": out.feats[row], "boxes": out.boxes[row], "meta": _sample_meta(sizes[row], out.meta, row)}
            for row in range(len(images))]


def _image_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    # (B, S, S, 3) in memory, seen as (B, 3, S, S): channels-last strides, what the CNN backbones run fastest on
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def _sample_meta(size: tuple[int, int], meta: list[dict[str, Any]] | None, row: int) -> dict[str, Any]:
    """A stored sample's metadata: the original image size, then the backend's own (labels, scores...)."""
    return {"width": size[0], "height": size[1], **(meta[row] if meta else {})}


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes images in DataLoader workers; a failure becomes a reason string instead of an exception."""

    def __init__(self, records: Sequence[ImageRecord], size: int) -> None:
        self.records, self.size = records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, int, int, str | None]:
        path = self.records[index].path
        try:
            image, width, height = decode_image(path, self.size)
        except FileNotFoundError:
            return index, None, 0, 0, "file not found"
        except Exception as exc:  # PIL raises many types for corrupt files; each one is a skip reason
            return index, None, 0, 0, f"{type(exc).__name__}: {exc}"
        return index, image, width, height, None


def _collate(items: list[tuple[int, np.ndarray | None, int, int, str | None]]) -> dict[str, Any]:
    ok = [item for item in items if item[1] is not None]
    images = _image_batch([item[1] for item in ok]) if ok else None
    return {
        "indices": [item[0] for item in ok],
        "images": images,
        "sizes": [(item[2], item[3]) for item in ok],
        "failed": [(item[0], item[4]) for item in items if item[1] is None],
        "count": len(items),
    }


def _ids_sha256(records: Sequence[ImageRecord]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.image_id.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _plan(extractor: Extractor, source: dict[str, Any], records: Sequence[ImageRecord], shard_size: int,
          limit: int | None) -> dict[str, Any]:
    return make_plan(
        backend=extractor.name, settings=extractor.settings(), weights=extractor.weights_info,
        random_weights=extractor.random_weights, feature_dim=extractor.feature_dim,
        num_regions=extractor.num_regions, label_names=extractor.label_names,
        boxes_format="x1,y1,x2,y2 divided by image width,height (float32)",
        source={**source, "limit": limit, "num_images": len(records), "ids_sha256": _ids_sha256(records)},
        shard_size=shard_size, num_images=len(records),
    )


def _fingerprint(plan: dict[str, Any]) -> dict[str, Any]:
    """The parts of a plan that must match for a run to resume into an existing store."""
    keep = {k: v for k, v in plan.items() if k not in _PLAN_VOLATILE and k not in ("source", "weights")}
    keep["source"] = {k: plan["source"].get(k) for k in ("num_images", "ids_sha256", "limit")}
    keep["weights"] = {name: info.get("sha256", info.get("source")) for name, info in plan.get("weights", {}).items()}
    return keep


def _prepare(directory: Path, plan: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """Create or check the store directory (call under the store lock); return the plan to use."""
    if (directory / MANIFEST).is_file():
        existing = load_manifest(directory, require_complete=False)
        old, new = _fingerprint({k: existing.get(k) for k in plan}), _fingerprint(plan)
        if old == new:
            return {k: existing[k] for k in plan}  # keep the original creation time
        if not overwrite:
            differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise StoreError(
                f"{directory} holds an extraction with different {', '.join(differing)}; use another --out, or "
                "--overwrite to delete it and start over"
            )
        logger.warning("overwriting the feature store in %s", directory)
    prepare_output_dir(directory, overwrite=overwrite, owned=is_store_file)
    finalize_store(directory, plan)
    return plan


def extract(source: str | Sequence[ImageRecord], out_dir: str | os.PathLike[str], backend: str | Extractor = "patches",
            backend_options: dict[str, Any] | None = None, *, batch_size: int = 64, shard_size: int = 1000,
            num_workers: int | None = None, part: tuple[int, int] | None = None, on_error: str = "skip",
            overwrite: bool = False, progress: bool = True, limit: int | None = None,
            device: str | None = None, rank: int | None = None, world_size: int | None = None,
            dataset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Extract region features of a source into a feature store (resuming a previous run of the same command).

    Args:
        source: A source string (``easy-vqa:train``, a folder, a list file) or image records.
        out_dir: The store directory (created if needed).
        backend: ``patches``, ``grid``, ``detector`` or ``detectron2``, or an already built
            :class:`~features.backends.Extractor` (then ``backend_options`` and ``device`` are not used).
        backend_options: Keyword options of the backend (``image_size``, ``backbone``, ``weights``...).
        batch_size: Images per forward pass.
        shard_size: Images per shard (the unit of resuming and of splitting into parts).
        num_workers: Image-decoding processes (0: decode in this process; ``None``: :func:`default_num_workers`).
        part: ``(rank, world_size)`` in one tuple (the ``--part i/n`` of the command line); not with ``rank``.
        on_error: ``"skip"`` unreadable images (counted and listed) or ``"fail"`` on the first one.
        overwrite: Delete an existing store with different settings instead of refusing.
        progress: Show a progress bar.
        limit: Extract only the first ``limit`` images of the source.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: the current GPU when there is one, else the CPU.
        rank: This process's part: it does only the shards ``j`` with ``j % world_size == rank`` (default 0).
        world_size: Number of parts the shards are split into (default 1: all of them).
        dataset: What data set the images are (a generated world: name, generator version, settings hash, seed):
            kept in the manifest's ``source`` and in the features record of every model trained on the store.

    Returns:
        The manifest after this process's part (``complete`` is true once all parts are done).

    Raises:
        FeaturesError: On bad arguments, sources, weights, an incompatible existing store, or (``on_error="fail"``) an
            unreadable image.
    """
    if on_error not in ("skip", "fail"):
        raise FeaturesError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value < 1:
            raise FeaturesError(f"{name} must be at least 1, got {value}")
    if limit is not None and limit < 1:
        raise FeaturesError(f"limit must be at least 1, got {limit}")
    if num_workers is not None and num_workers < 0:
        raise FeaturesError(f"num_workers must be 0 (decode in this process) or more, got {num_workers}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif not isinstance(backend, Extractor):
        check_device(device)  # before any work, so a missing GPU leaves no half-made store behind
    skipped: list[dict[str, str]] = []
    records = resolve_source(source, skipped) if isinstance(source, str) else list(source)
    source_info = describe_source(source) if isinstance(source, str) else {"kind": "records"}
    if skipped:
        source_info["skipped"] = skipped
    if dataset:
        source_info["dataset"] = dict(dataset)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise FeaturesError(f"source {source!r} has no images")
    index, count = _resolve_part(part, rank, world_size)
    if isinstance(backend, Extractor):
        extractor = backend
    else:
        extractor = create_extractor(backend, **{**(backend_options or {}), "device": device})
    directory = Path(out_dir)
    with store_lock(directory):
        plan = _prepare(directory, _plan(extractor, source_info, records, shard_size, limit), overwrite)

    mine = [j for j in range(plan["num_shards"]) if j % count == index]
    for j in mine:  # leftovers of an interrupted run of this part (shard-NNNNNN.tar.tmp, shard-NNNNNN.json.PID.tmp)
        for stale in directory.glob(f"shard-{j:06d}.*tmp"):
            stale.unlink(missing_ok=True)
    todo = [j for j in mine if read_sidecar(directory, j) is None]
    logger.info("part %d/%d: %d of %d shards to do (%d already finished)", index, count, len(todo), len(mine),
                len(mine) - len(todo))
    if todo:
        _run(extractor, records, todo, directory, batch_size=batch_size, shard_size=shard_size,
             num_workers=default_num_workers() if num_workers is None else num_workers, on_error=on_error,
             progress=progress)
    with store_lock(directory):
        manifest = _count_regions(directory, finalize_store(directory, plan))
        if manifest["complete"] and not manifest["num_samples"]:  # nothing to keep; a fixed rerun must start afresh
            prepare_output_dir(directory, overwrite=True, owned=is_store_file)
    if manifest["complete"] and not manifest["num_samples"]:
        first = manifest["failed"][0]
        raise ImageReadError(f"none of the {manifest['num_failed']} images could be read (e.g. {first['path']}: "
                             f"{first['reason']}); nothing was stored in {directory}")
    if manifest["num_failed"]:
        logger.warning("%d image(s) could not be read and were skipped; they are listed under 'failed' in %s",
                       manifest["num_failed"], directory / MANIFEST)
    if manifest.get("regions", {}).get("num_no_regions"):
        logger.warning("in %d image(s) backend %r found no region (flat or empty images): each keeps only the "
                       "whole-image box; counted under 'regions' in %s", manifest["regions"]["num_no_regions"],
                       extractor.name, directory / MANIFEST)
    return manifest


def _region_counts(meta: dict[str, Any], num_regions: int) -> tuple[bool, bool]:
    """``(padded, no_region)`` of one sample of a backend that records ``num_valid``: fewer real regions than K, and
    no region found at all (``num_proposals`` of the ``proposals`` backend, else ``num_valid``, is 0)."""
    found = meta.get("num_proposals", meta["num_valid"])
    return int(meta["num_valid"]) < num_regions, int(found) == 0


def _count_regions(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add ``regions: {num_padded, num_no_regions}``, summed over the finished shards' sidecars, to the manifest
    (rewritten) when the shards count them; call it under the store lock."""
    records = [read_sidecar(directory, i) for i in range(manifest["num_shards"])]
    counted = [r for r in records if r is not None and "num_padded" in r]
    if not counted:
        return manifest
    manifest["regions"] = {key: sum(int(r.get(key, 0)) for r in counted) for key in ("num_padded", "num_no_regions")}
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def _read_ahead(batches: Iterable[dict[str, Any]], depth: int = 2) -> Iterator[dict[str, Any]]:
    """Yield ``batches``, decoded by one background thread up to ``depth`` batches ahead.

    With ``num_workers=0`` this overlaps decoding with the forward pass (PIL and torch release the GIL) without the
    start-up and copying of a worker process. Measured with ``bench/extract_throughput.py`` (pretrained EfficientNet-
    Lite0 at 224 px, 2 shared cores): end-to-end / bare forward went from 0.87 to 0.93.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fill() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        slots.put(("batch", batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            slots.put(("error", exc))

    thread = threading.Thread(target=fill, name="extract-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


def _run(extractor: Extractor, records: Sequence[ImageRecord], todo: Sequence[int], directory: Path, *,
         batch_size: int, shard_size: int, num_workers: int, on_error: str, progress: bool) -> None:
    """Extract the shards ``todo``, committing each as soon as its last image is written."""
    work: list[ImageRecord] = []
    batches: list[list[int]] = []
    batch_shard: list[int] = []
    shard_count: dict[int, int] = {}
    for j in todo:
        shard_records = records[j * shard_size:(j + 1) * shard_size]
        start = len(work)
        work.extend(shard_records)
        shard_count[j] = len(shard_records)
        for lo in range(0, len(shard_records), batch_size):
            batches.append(list(range(start + lo, start + min(lo + batch_size, len(shard_records)))))
            batch_shard.append(j)
    loader = torch.utils.data.DataLoader(
        _ImageDataset(work, extractor.image_size), batch_sampler=batches, num_workers=num_workers,
        collate_fn=_collate, prefetch_factor=4 if num_workers else None,
    )
    writer: ShardWriter | None = None
    failed: list[dict[str, str]] = []
    regions: dict[str, int] = {}  # this shard's padding counts, for backends that record num_valid
    bar = tqdm(total=len(work), unit="img", disable=not progress, desc=f"extract[{extractor.name}]", smoothing=0.1)
    try:
        for batch_number, batch in enumerate(loader if num_workers else _read_ahead(loader)):
            shard = batch_shard[batch_number]
            if writer is None:
                writer, failed, regions = ShardWriter(directory, shard), [], {}
            for item, reason in batch["failed"]:
                record = work[item]
                if on_error == "fail":
                    raise ImageReadError(f"cannot read image {record.path} (id {record.image_id!r}): {reason}; "
                                         "use --on-error skip to skip unreadable images")
                logger.warning("skipping image %s (id %r): %s", record.path, record.image_id, reason)
                failed.append({"image_id": record.image_id, "path": record.path, "reason": reason})
            if batch["images"] is not None:
                out = extractor.extract(batch["images"])
                for row, item in enumerate(batch["indices"]):
                    meta = _sample_meta(batch["sizes"][row], out.meta, row)
                    writer.write(work[item].image_id, out.feats[row], out.boxes[row], meta)
                    if "num_valid" in meta:
                        padded, empty = _region_counts(meta, extractor.num_regions)
                        regions["num_padded"] = regions.get("num_padded", 0) + padded
                        regions["num_no_regions"] = regions.get("num_no_regions", 0) + empty
            shard_count[shard] -= batch["count"]
            bar.update(batch["count"])
            if shard_count[shard] == 0:
                record = writer.commit(failed, extra=regions or None)
                logger.debug("finished %s: %d samples, %d failed", record["name"], record["num_samples"], len(failed))
                writer = None
    finally:
        if writer is not None:
            writer.abort()
        bar.close()
