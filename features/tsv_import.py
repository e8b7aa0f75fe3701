"""Bottom-up-attention TSV files to a feature store (``vlm features import-tsv IN.tsv OUT_DIR``).

:func:`import_tsv` reads a file with the row parser of :mod:`features.tsv` (either layout, every row validated there)
and writes shards: boxes divided by width and height (clipped to [0, 1]), features stored as float16, labels and
attributes with their confidences kept in each sample's JSON (``objects_id``, ``objects_conf``, ``attrs_id``,
``attrs_conf``).

A malformed row raises :class:`~features.errors.TSVFormatError` naming the row number, the field (and box) and what was
expected; with ``on_error="skip"`` it is counted, logged and listed in the manifest (``{"row", "image_id", "reason"}``)
instead. An import that fails, or finds no valid row, removes what it wrote, so the fixed rerun starts from an empty
folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from features.errors import FeaturesError, TSVFormatError
from features.io import prepare_output_dir
from features.store.format import MANIFEST, is_store_file
from features.store.manifest import finalize_store, make_plan, store_lock
from features.store.writer import ShardWriter
from features.tsv import BUTD_FIELDS, LXMERT_FIELDS, _is_header, _open_binary, _RowParser, _text_line

__all__ = ["import_tsv"]

logger = logging.getLogger(__name__)


def import_tsv(tsv_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, shard_size: int = 1000,
               on_error: str = "fail", overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Convert a bottom-up-attention TSV file into a feature store.

    Args:
        tsv_path: The TSV file.
        out_dir: New (or empty) store directory.
        shard_size: Images per shard.
        on_error: ``"fail"`` on the first malformed row, or ``"skip"`` it (counted and listed in the manifest).
        overwrite: Replace an existing store in ``out_dir``.
        progress: Show a progress bar.

    Returns:
        The manifest.

    Raises:
        TSVFormatError: On a malformed row (with ``on_error="fail"``) or a file with no valid rows.
    """
    if on_error not in ("skip", "fail"):
        raise FeaturesError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if shard_size < 1:
        raise FeaturesError(f"shard_size must be at least 1, got {shard_size}")
    tsv_path, directory = Path(tsv_path), Path(out_dir)
    handle = _open_binary(tsv_path)
    try:
        prepare_output_dir(directory, overwrite=overwrite, owned=is_store_file)
    except BaseException:
        handle.close()
        raise
    parser = _RowParser(str(tsv_path))
    seen: dict[str, int] = {}
    region_counts: set[int] = set()
    writer: ShardWriter | None = None
    failed: list[dict[str, Any]] = []
    all_failed: list[dict[str, Any]] = []
    num_shards = 0
    bar = tqdm(unit="img", disable=not progress, desc="import-tsv")
    try:
        with handle:
            for row_number, raw in enumerate(handle, start=1):
                try:
                    line = _text_line(raw, str(tsv_path), row_number)
                    if (row_number == 1 and _is_header(line)) or not line.strip():
                        continue
                    row = parser(line, row_number)
                    if row.image_id in seen:
                        raise TSVFormatError(f"{tsv_path}, row {row_number}: image id {row.image_id!r} already used "
                                             f"on row {seen[row.image_id]}")
                except TSVFormatError as exc:
                    if on_error == "fail":
                        raise
                    logger.warning("skipping %s", exc)
                    first = raw.split(b"\t", 1)[0][:200].decode("utf-8", "replace")
                    failed.append({"row": row_number, "image_id": first, "reason": str(exc)})
                    all_failed.append(failed[-1])
                    if writer is None:
                        writer = ShardWriter(directory, num_shards)
                    continue
                seen[row.image_id] = row_number
                scale = np.array([row.width, row.height, row.width, row.height], dtype=np.float32)
                boxes = np.clip(row.boxes / scale, 0.0, 1.0)
                meta: dict[str, Any] = {"width": row.width, "height": row.height}
                meta.update({name: values.tolist() for name, values in row.labels.items()})
                if writer is None:
                    writer = ShardWriter(directory, num_shards)
                writer.write(row.image_id, row.features, boxes, meta)
                region_counts.add(len(row.boxes))
                bar.update(1)
                if len(writer.ids) == shard_size:
                    writer.commit(failed)
                    writer, failed, num_shards = None, [], num_shards + 1
            if not seen:
                what = (f"all {len(all_failed)} rows are malformed (first: {all_failed[0]['reason']})" if all_failed
                        else "the file holds no rows")
                raise TSVFormatError(f"{tsv_path}: no valid rows: {what}; expected bottom-up-attention rows with "
                                     f"{len(LXMERT_FIELDS)} or {len(BUTD_FIELDS)} tab-separated fields")
            if writer is not None:
                writer.commit(failed)
                writer, num_shards = None, num_shards + 1
    except BaseException:
        if writer is not None:
            writer.abort()
        with contextlib.suppress(FeaturesError):  # leave the folder empty, so the fixed rerun is not refused
            prepare_output_dir(directory, overwrite=True, owned=is_store_file)
        raise
    finally:
        bar.close()
    plan = make_plan(
        backend="butd-tsv",
        settings={"layout": "lxmert-10-field" if parser.fields is LXMERT_FIELDS else "butd-6-field",
                  "features_stored_as": "float16"},
        weights={}, random_weights=False, feature_dim=parser.feature_dim,
        num_regions=next(iter(region_counts)) if len(region_counts) == 1 else None, max_regions=max(region_counts),
        boxes_format="x1,y1,x2,y2 divided by image width,height, clipped to [0,1] (float32)",
        source={"kind": "butd-tsv", "path": str(tsv_path.resolve()), "num_images": len(seen)},
        shard_size=shard_size, num_images=len(seen), num_shards=num_shards,
    )
    with store_lock(directory):
        manifest = finalize_store(directory, plan)
    if manifest["num_failed"]:
        logger.warning("%d malformed row(s) skipped; listed under 'failed' in %s", manifest["num_failed"],
                       directory / MANIFEST)
    return manifest
