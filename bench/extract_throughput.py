"""Throughput of region-feature extraction and size of the feature store (issue 3 benchmark).

Measures, in one run, on easy-VQA train images:

1. ``patches`` end-to-end images/s: decode + resize + patchify + encode + write shards + manifest/index
   (target >= 2,000 images/s on 2 cores);
2. ``grid`` end-to-end images/s and the bare backbone forward images/s on the same batches (already decoded and
   normalised tensors, measured before and after the end-to-end run and averaged); their ratio shows what decoding,
   RoI pooling, encoding and writing cost (target >= 0.85);
3. bytes per image of a 36 x 2048 sample in the store (float16 features, float32 boxes, JSON with labels, tar
   headers) against the bottom-up-attention TSV encoding of the same arrays (base64 of float32; target <= 0.5).

Random backbone weights are used (``random_weights=True``): speed does not depend on the weight values.

Usage::

    python bench/extract_throughput.py [--patch-images 4000] [--grid-images 192] [--backbone timm:resnet18]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from features.backends import create_extractor
from features.extract import extract, load_image
from features.sources import resolve_source
from features.store import ShardWriter
from features.tsv import encode_tsv_row


def _bench_patches(num_images: int, batch_size: int, num_workers: int, work: Path) -> float:
    extract("easy-vqa:train", work / "warmup", "patches", batch_size=batch_size, num_workers=num_workers,
            progress=False, limit=256)  # page cache and worker start-up paths warm
    start = time.perf_counter()
    manifest = extract("easy-vqa:train", work / "patches", "patches", batch_size=batch_size, shard_size=1000,
                       num_workers=num_workers, progress=False, limit=num_images)
    elapsed = time.perf_counter() - start
    assert manifest["complete"] and manifest["num_samples"] == num_images
    return num_images / elapsed


def _bare_forward(extractor, batches: list[torch.Tensor]) -> float:
    mean = torch.tensor(extractor.backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(extractor.backbone.std).view(1, 3, 1, 1)
    normalised = [((b.float() / 255) - mean) / std for b in batches]
    with torch.inference_mode():
        extractor.backbone(normalised[0])  # warm-up
        start = time.perf_counter()
        for x in normalised:
            extractor.backbone(x)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def _bench_grid(num_images: int, batch_size: int, num_workers: int, options: dict, work: Path) -> tuple[float, float]:
    extractor = create_extractor("grid", random_weights=True, **options)
    records = resolve_source("easy-vqa:train")[:num_images]
    images = torch.stack([load_image(r.path, extractor.image_size)[0] for r in records])
    batches = list(images.split(batch_size))
    bare_before = _bare_forward(extractor, batches)
    start = time.perf_counter()
    manifest = extract("easy-vqa:train", work / "grid", extractor, batch_size=batch_size, shard_size=num_images,
                       num_workers=num_workers, progress=False, limit=num_images)
    end_to_end = num_images / (time.perf_counter() - start)
    assert manifest["complete"] and manifest["num_samples"] == num_images
    bare_after = _bare_forward(extractor, batches)
    return end_to_end, (bare_before + bare_after) / 2


def _bench_bytes(work: Path, samples: int = 50) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    k, d = 36, 2048
    writer = ShardWriter(work, 0)
    tsv_bytes = 0
    for i in range(samples):
        feats = np.maximum(rng.normal(0, 2, (k, d)), 0).astype(np.float32)  # ReLU-like pool5 features
        w, h = 640, 480
        x1, y1 = rng.uniform(0, w / 2, k), rng.uniform(0, h / 2, k)
        boxes = np.stack([x1, y1, x1 + rng.uniform(8, w / 2, k), y1 + rng.uniform(8, h / 2, k)], 1).astype(np.float32)
        labels = {"objects_id": rng.integers(0, 1600, k), "objects_conf": rng.random(k).astype(np.float32),
                  "attrs_id": rng.integers(0, 400, k), "attrs_conf": rng.random(k).astype(np.float32)}
        image_id = f"COCO_val2014_{i:012d}"
        tsv_bytes += len(encode_tsv_row(image_id, h, w, boxes, feats, labels).encode()) + 1
        meta = {"width": w, "height": h, **{name: v.tolist() for name, v in labels.items()}}
        writer.write(image_id, feats, boxes / np.array([w, h, w, h], dtype=np.float32), meta)
    record = writer.commit()
    return record["bytes"] / samples, tsv_bytes / samples


def main() -> None:
    """Run the three measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch-images", type=int, default=4000)
    parser.add_argument("--grid-images", type=int, default=192)
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--grid-image-size", type=int, default=224)
    parser.add_argument("--grid", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patch-workers", type=int, default=2)
    parser.add_argument("--grid-workers", type=int, default=0,
                        help="decoding workers for grid (0 on 2 cores: a worker would steal a core from the forward)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        patches = _bench_patches(args.patch_images, args.batch_size, args.patch_workers, work)
        options = {"backbone": args.backbone, "image_size": args.grid_image_size, "grid": args.grid}
        grid_e2e, grid_bare = _bench_grid(args.grid_images, args.batch_size, args.grid_workers, options, work)
        (work / "bytes").mkdir()
        store_bytes, tsv_bytes = _bench_bytes(work / "bytes")

    ratio, size_ratio = grid_e2e / grid_bare, store_bytes / tsv_bytes
    grid_desc = f"{args.backbone} @{args.grid_image_size}px, {args.grid}x{args.grid} boxes"
    rows = [
        ("patches end-to-end, images/s", f"{patches:,.0f}", ">= 2,000", patches >= 2000),
        (f"grid end-to-end, images/s ({grid_desc})", f"{grid_e2e:,.1f}", "", None),
        ("grid bare backbone forward, images/s (same batches)", f"{grid_bare:,.1f}", "", None),
        ("grid end-to-end / bare forward", f"{ratio:.3f}", ">= 0.85", ratio >= 0.85),
        ("bytes/image 36x2048, store (tar: fp16 npy + boxes + json)", f"{store_bytes:,.0f}", "", None),
        ("bytes/image 36x2048, BUTD TSV (base64 float32)", f"{tsv_bytes:,.0f}", "", None),
        ("store / TSV bytes", f"{size_ratio:.3f}", "<= 0.5", size_ratio <= 0.5),
    ]
    print(f"# extract_throughput: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; patches: {args.patch_images} easy-VQA "
          f"images, {args.patch_workers} workers; grid: {args.grid_images} images, batch {args.batch_size}, "
          f"{args.grid_workers} worker(s), random weights")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measurement':{width}} | {'value':>9} | {'target':8} | ok  |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 10}|-----|")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"| {name:{width}} | {value:>9} | {target:8} | {mark:3} |")


if __name__ == "__main__":
    main()
