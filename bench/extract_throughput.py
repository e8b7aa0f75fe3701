"""Throughput of region-feature extraction and size of the feature store (issue 3 benchmark).

Measures, in one run, on easy-VQA train images:

1. ``patches`` end-to-end images/s: decode + resize + patchify + encode + write shards + manifest/index
   (target >= 2,000 images/s on 2 cores);
2. ``grid`` end-to-end images/s and the bare backbone forward images/s on the same batches (already decoded and
   normalised tensors; the two alternate ``--repeats`` times and the best of each counts); their ratio shows what
   decoding, RoI pooling, encoding and writing cost (target >= 0.9). By default the pretrained built-in backend as
   ``vlm extract`` runs it on a folder: EfficientNet-Lite0 with its built-in weights at :data:`features.GRID_DEFAULTS`
   (``--grid-image-size 128 --grid 4`` gives the easy-VQA settings);
3. bytes per image of a 36 x 2048 sample in the store (float16 features, float32 boxes, JSON with labels, tar
   headers) against the bottom-up-attention TSV encoding of the same arrays (base64 of float32; target <= 0.5);
4. why the store keeps its own tar writer and shuffle buffer: time per sample of :class:`features.store.ShardWriter`
   against ``webdataset.TarWriter`` (same arrays, fixed mtime), and of the stream's shuffle buffer against
   ``webdataset.detshuffle`` (same buffer size, small samples);
5. ``proposals`` end-to-end images/s (segmentation proposals pooled from EfficientNet-Lite0, its defaults) beside
   ``grid`` (:data:`features.GRID_DEFAULTS`) on the same two folders: synthetic scenes (128 px, 2-7 flat-colour
   squares, discs and triangles on white, PNG) and a 640-pixel photo (matplotlib's grace_hopper.jpg resized to 640 on
   its long side, JPEG, copies), plus the proposer alone (segmentation, grouping, scores, NMS) in ms per image.

Usage::

    python bench/extract_throughput.py [--patch-images 4000] [--grid-images 512] [--backbone efficientnet_lite0]
        [--random-weights] [--grid-image-size 224] [--grid 7] [--repeats 3] [--proposal-images 64]
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
from PIL import Image

from features.backends import create_extractor
from features.decode import decode_image
from features.defaults import GRID_DEFAULTS
from features.extract import extract
from features.sources import resolve_source
from features.store import ShardWriter
from features.store.stream import _ShuffleBuffer
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


def _bench_grid(num_images: int, batch_size: int, num_workers: int, options: dict, work: Path,
                repeats: int) -> tuple[float, float]:
    """Best images/s of the end-to-end extraction and of the bare backbone forward, measured alternately."""
    extractor = create_extractor("grid", **options)
    records = resolve_source("easy-vqa:train")[:num_images]
    # (B, S, S, 3) seen as (B, 3, S, S), channels-last strides: exactly what the extraction's loader hands the backend
    images = torch.from_numpy(np.stack([decode_image(r.path, extractor.image_size)[0] for r in records]))
    batches = list(images.permute(0, 3, 1, 2).split(batch_size))
    end_to_end = bare = 0.0
    for rep in range(repeats):  # alternating, best of each: the machine is shared and its load changes by the minute
        bare = max(bare, _bare_forward(extractor, batches))
        start = time.perf_counter()
        manifest = extract("easy-vqa:train", work / f"grid-{rep}", extractor, batch_size=batch_size,
                           shard_size=num_images, num_workers=num_workers, progress=False, limit=num_images)
        end_to_end = max(end_to_end, num_images / (time.perf_counter() - start))
        assert manifest["complete"] and manifest["num_samples"] == num_images
    return end_to_end, bare


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


def _bench_tar_writers(work: Path, samples: int = 1000) -> float:
    """Seconds per sample of webdataset.TarWriter over ShardWriter, writing the same 36 x 2048 samples."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    data = [(f"{i:012d}", rng.standard_normal((36, 2048)).astype(np.float16), rng.random((36, 4), dtype=np.float32),
             {"width": 640, "height": 480}) for i in range(64)]
    timings = {}
    for name in ("store", "webdataset", "store", "webdataset"):  # interleaved, best of two each
        start = time.perf_counter()
        if name == "store":
            writer = ShardWriter(work, 1)
            for i in range(samples):
                image_id, feats, boxes, meta = data[i % len(data)]
                writer.write(f"{image_id}-{i}", feats, boxes, meta)
            writer.commit()
        else:
            with open(work / "wds.tar", "wb") as handle:
                tar = wds.TarWriter(handle, mtime=0.0)
                for i in range(samples):
                    image_id, feats, boxes, meta = data[i % len(data)]
                    tar.write({"__key__": f"{image_id}-{i}", "feats.npy": feats, "boxes.npy": boxes,
                               "json": {"image_id": f"{image_id}-{i}", **meta}})
                tar.close()
                handle.flush()
                os.fsync(handle.fileno())
        elapsed = time.perf_counter() - start
        timings[name] = min(timings.get(name, elapsed), elapsed)
    return timings["webdataset"] / timings["store"]


def _bench_shuffle(samples: int = 200_000, buffer_size: int = 1000) -> float:
    """Seconds per sample of webdataset.detshuffle over the stream's shuffle buffer (same buffer size)."""
    import webdataset as wds

    items = [{"__key__": str(i), "x": i} for i in range(samples)]
    timings = {}
    for name in ("store", "webdataset", "store", "webdataset"):
        stage = _ShuffleBuffer(buffer_size, seed=0) if name == "store" else \
            wds.detshuffle(bufsize=buffer_size, initial=buffer_size, seed=0)
        start = time.perf_counter()
        count = sum(1 for _ in (stage(iter(items)) if name == "store" else stage.run(iter(items))))
        elapsed = time.perf_counter() - start
        assert count == samples
        timings[name] = min(timings.get(name, elapsed), elapsed)
    return timings["webdataset"] / timings["store"]


def _scene_folder(folder: Path, count: int, size: int = 128, seed: int = 0) -> Path:
    """``count`` PNG scenes: 2-7 flat-colour squares, discs and triangles (10-32 px) on white."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    folder.mkdir()
    for i in range(count):
        image = np.full((size, size, 3), 255, np.uint8)
        for _ in range(int(rng.integers(2, 8))):
            side, x, y = int(rng.integers(10, 33)), int(rng.integers(0, size - 32)), int(rng.integers(0, size - 32))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                mask = (xs >= x) & (xs < x + side) & (ys >= y) & (ys < y + side)
            elif kind == 1:
                mask = (xs - x - side / 2) ** 2 + (ys - y - side / 2) ** 2 <= (side / 2) ** 2
            else:
                mask = (ys >= y) & (ys < y + side) & (np.abs(xs - x - side / 2) <= (ys - y) / 2)
            image[mask] = rng.integers(0, 230, 3)
        Image.fromarray(image).save(folder / f"scene{i:04d}.png")
    return folder


def _photo_folder(folder: Path, count: int, side: int = 640) -> Path:
    """``count`` JPEG copies of grace_hopper.jpg resized to ``side`` pixels on its long side."""
    import matplotlib

    with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg") as photo:
        scale = side / max(photo.size)
        photo = photo.convert("RGB").resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
    folder.mkdir()
    for i in range(count):
        photo.save(folder / f"photo{i:04d}.jpg", quality=90)
    return folder


def _bench_proposals(count: int, batch_size: int, num_workers: int, work: Path) -> dict[str, float]:
    """End-to-end images/s of ``proposals`` and ``grid`` on scenes and photos; the proposer alone in ms/image."""
    folders = {"scenes": _scene_folder(work / "scenes", count), "photo": _photo_folder(work / "photos", count)}
    extractors = {"proposals": create_extractor("proposals"), "grid": create_extractor("grid", **GRID_DEFAULTS)}
    results = {}
    for name, folder in folders.items():
        for backend, extractor in extractors.items():
            extract(str(folder), work / f"warm-{backend}-{name}", extractor, batch_size=batch_size,
                    num_workers=num_workers, progress=False, limit=4)  # first-call paths warm
            start = time.perf_counter()
            manifest = extract(str(folder), work / f"{backend}-{name}", extractor, batch_size=batch_size,
                               shard_size=count, num_workers=num_workers, progress=False)
            results[f"{backend} {name}"] = count / (time.perf_counter() - start)
            assert manifest["complete"] and manifest["num_samples"] == count
        proposer = extractors["proposals"]
        images = [decode_image(path, proposer.image_size)[0] for path in sorted(folder.iterdir())[:16]]
        start = time.perf_counter()
        for image in images:
            proposer.proposer(image)
        results[f"proposer {name}"] = 1000 * (time.perf_counter() - start) / len(images)
    return results


def main() -> None:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch-images", type=int, default=4000)
    parser.add_argument("--grid-images", type=int, default=512)
    parser.add_argument("--backbone", default=GRID_DEFAULTS["backbone"])
    parser.add_argument("--random-weights", action="store_true", help="random backbone weights (other backbones)")
    parser.add_argument("--grid-image-size", type=int, default=GRID_DEFAULTS["image_size"])
    parser.add_argument("--grid", type=int, default=GRID_DEFAULTS["grid"])
    parser.add_argument("--pool-size", type=int, default=GRID_DEFAULTS["pool_size"])
    parser.add_argument("--layer", type=int, default=GRID_DEFAULTS["layer"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="grid: alternating runs, the best of each is kept")
    parser.add_argument("--patch-workers", type=int, default=2)
    parser.add_argument("--grid-workers", type=int, default=0,
                        help="decoding workers for grid (0 on 2 cores: a worker would steal a core from the forward)")
    parser.add_argument("--proposal-images", type=int, default=64,
                        help="images per folder for proposals vs grid (scenes, photo); 0 skips the measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        patches = _bench_patches(args.patch_images, args.batch_size, args.patch_workers, work)
        options = {"backbone": args.backbone, "image_size": args.grid_image_size, "grid": args.grid,
                   "pool_size": args.pool_size, "layer": args.layer, "random_weights": args.random_weights}
        grid_e2e, grid_bare = _bench_grid(args.grid_images, args.batch_size, args.grid_workers, options, work,
                                          args.repeats)
        (work / "bytes").mkdir()
        store_bytes, tsv_bytes = _bench_bytes(work / "bytes")
        tar_ratio = _bench_tar_writers(work / "bytes")
        proposals = _bench_proposals(args.proposal_images, args.batch_size, args.grid_workers, work) \
            if args.proposal_images else {}
    shuffle_ratio = _bench_shuffle()

    ratio, size_ratio = grid_e2e / grid_bare, store_bytes / tsv_bytes
    weights = "random weights" if args.random_weights else "pretrained"
    grid_desc = (f"{args.backbone} {weights}, stage {args.layer} @{args.grid_image_size}px, "
                 f"{args.grid}x{args.grid} boxes")
    rows = [
        ("patches end-to-end, images/s", f"{patches:,.0f}", ">= 2,000", patches >= 2000),
        (f"grid end-to-end, images/s ({grid_desc})", f"{grid_e2e:,.1f}", "", None),
        ("grid bare backbone forward, images/s (same batches)", f"{grid_bare:,.1f}", "", None),
        ("grid end-to-end / bare forward", f"{ratio:.3f}", ">= 0.9", ratio >= 0.9),
        ("bytes/image 36x2048, store (tar: fp16 npy + boxes + json)", f"{store_bytes:,.0f}", "", None),
        ("bytes/image 36x2048, BUTD TSV (base64 float32)", f"{tsv_bytes:,.0f}", "", None),
        ("store / TSV bytes", f"{size_ratio:.3f}", "<= 0.5", size_ratio <= 0.5),
        ("webdataset.TarWriter / ShardWriter, time per 36x2048 sample", f"{tar_ratio:.2f}", "", None),
        ("webdataset.detshuffle / stream shuffle buffer, time per sample", f"{shuffle_ratio:.2f}", "", None),
    ]
    for name in ("scenes", "photo"):
        if f"proposals {name}" not in proposals:
            continue
        what = "128 px scenes, 2-7 shapes" if name == "scenes" else "640 px photo"
        rows += [
            (f"proposals end-to-end, images/s ({what})", f"{proposals[f'proposals {name}']:,.1f}", "", None),
            (f"grid end-to-end, images/s ({what}, GRID_DEFAULTS)", f"{proposals[f'grid {name}']:,.1f}", "", None),
            (f"proposals: the proposer alone, ms/image ({what})", f"{proposals[f'proposer {name}']:,.0f}", "", None),
        ]
    print(f"# extract_throughput: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; patches: {args.patch_images} easy-VQA "
          f"images, {args.patch_workers} workers; grid: {args.grid_images} images, batch {args.batch_size}, "
          f"{args.grid_workers} worker(s), {weights}; proposals vs grid: {args.proposal_images} images per folder; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measurement':{width}} | {'value':>9} | {'target':8} | ok  |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|{'-' * 10}|-----|")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"| {name:{width}} | {value:>9} | {target:8} | {mark:3} |")


if __name__ == "__main__":
    main()
