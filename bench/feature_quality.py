"""Feature quality on easy-VQA: which region features let a VQA model learn fastest (issue 7 benchmark).

Two measurements, each in one run:

``train`` (default) — trains the ``lxmert-mini`` VQA model (text side initialised from all-MiniLM-L6-v2, AdamW, bf16
autocast where the CPU has native bf16, batch 64) for the same fixed budget on the easy-VQA features of each backend:

* ``patches`` — raw 16x16 pixel patches + the whole image (K=17, D=768), the built-in pipeline's previous default;
* ``grid`` — pretrained EfficientNet-Lite0 grid features at the built-in pipeline's settings
  (:data:`features.EASY_VQA_GRID`: last stage, 128 px, 4x4 boxes);
* ``grid-random`` — the same network with random weights: the floor that shows what pretraining adds;
* ``grid-224`` (opt-in) — the pretrained network at the folder defaults (:data:`features.GRID_DEFAULTS`: 224 px, 7x7).

It prints test accuracy per question type (told from the answer: yes/no, a colour word, a shape word) and the time
per training epoch.

``--probe`` — a cheap look at which feature map and grid to use: a 5-fold logistic-regression probe of each image's
colour and shape (both are told by easy-VQA's answers) on mean-pooled and on concatenated region features of a few
hundred easy-VQA test images, for several EfficientNet-Lite0 stages and input sizes (plus patches and random weights).

Usage::

    python bench/feature_quality.py --probe [--probe-images 500]
    python bench/feature_quality.py [--train-questions 12800] [--epochs 1] [--test-questions 3000]
        [--backends patches grid grid-random grid-224]

The bench imports ``vlm`` (it is a bench, not part of the ``features`` package). Timings depend on the machine and
its load: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import easy_vqa
import numpy as np
import torch

from features.backends import create_extractor
from features.decode import load_image
from features.extract import extract
from features.sources import resolve_source
from features.store import FeatureStore
from vlm.data.easy_vqa import EASY_VQA_COLOURS, EASY_VQA_SHAPES, easy_vqa_question_type

LITE0 = {"backbone": "efficientnet_lite0"}


def question_type(answer: str) -> str:
    """``yes/no``, ``colour`` or ``shape``, told from the answer word (downstream's rule)."""
    kind = easy_vqa_question_type(answer)
    if kind is None:
        raise ValueError(f"easy-VQA answer {answer!r} is neither yes/no, a colour nor a shape")
    return kind


def image_labels(split: str) -> dict[str, dict[str, int]]:
    """Colour and shape of each image of a split, read off the answers of its colour and shape questions."""
    questions, answers, image_ids = easy_vqa.get_test_questions() if split == "test" else \
        easy_vqa.get_train_questions()
    labels: dict[str, dict[str, int]] = defaultdict(dict)
    for answer, image_id in zip(answers, image_ids):
        kind = question_type(answer)
        if kind == "yes/no":
            continue
        value = EASY_VQA_COLOURS.index(answer) if kind == "colour" else EASY_VQA_SHAPES.index(answer)
        if labels[str(image_id)].setdefault(kind, value) != value:
            raise ValueError(f"easy-VQA {split} image {image_id}: two different {kind} answers")
    return dict(labels)


# ---------------------------------------------------------------------------------------------------------- probe


def _probe_accuracy(x: torch.Tensor, y: torch.Tensor, folds: int = 5, l2: float = 1e-3, seed: int = 0) -> float:
    """Mean held-out accuracy of an L2-regularised multinomial logistic regression over ``folds`` folds."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    classes = int(y.max()) + 1
    correct = 0
    for fold in range(folds):
        test = order[fold::folds]
        train = torch.cat([order[f::folds] for f in range(folds) if f != fold])
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        xtr, xte = (x[train] - mean) / std, (x[test] - mean) / std
        weight = torch.zeros(x.shape[1], classes, requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(xtr @ weight + bias, y[train]) + l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        with torch.no_grad():
            correct += int(((xte @ weight + bias).argmax(1) == y[test]).sum())
    return correct / len(y)


def _probe_configs() -> list[tuple[str, str, dict]]:
    configs = [("patches 64px 4x4+1 (D=768)", "patches", {})]
    for layer, size, grid, pool in ((2, 224, 7, 4), (3, 224, 7, 2), (4, 224, 7, 1), (3, 128, 4, 2), (4, 128, 4, 1),
                                    (4, 160, 5, 1), (4, 448, 7, 2)):
        channels = {2: 40, 3: 112, 4: 320}[layer]
        configs.append((f"lite0 stage {layer} @{size}px {grid}x{grid} (D={channels})", "grid",
                        {**LITE0, "layer": layer, "image_size": size, "grid": grid, "pool_size": pool}))
    configs.append(("lite0 RANDOM stage 4 @128px 4x4 (D=320)", "grid",
                    {**LITE0, "random_weights": True, "layer": 4, "image_size": 128, "grid": 4, "pool_size": 1}))
    return configs


def run_probe(num_images: int, batch_size: int) -> None:
    """Print the colour/shape probe accuracy of each feature configuration."""
    labels = image_labels("test")
    records = [r for r in resolve_source("easy-vqa:test") if {"colour", "shape"} <= set(labels.get(r.image_id, {}))]
    records = records[:num_images]
    colour = torch.tensor([labels[r.image_id]["colour"] for r in records])
    shape = torch.tensor([labels[r.image_id]["shape"] for r in records])
    print(f"# probe: {len(records)} easy-VQA test images with a colour and a shape answer; 5-fold logistic "
          f"regression (L2 1e-3, LBFGS) on standardised features; {os.cpu_count()} CPUs (shared machine)")
    print("| features | K | D | colour, mean-pooled | shape, mean-pooled | colour, concat | shape, concat | "
          "extract s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, backend, options in _probe_configs():
        extractor = create_extractor(backend, **options)
        start = time.perf_counter()
        feats = []
        for lo in range(0, len(records), batch_size):
            images = torch.stack([load_image(r.path, extractor.image_size)[0] for r in records[lo:lo + batch_size]])
            feats.append(torch.from_numpy(extractor.extract(images).feats.astype(np.float32)))
        seconds = time.perf_counter() - start
        feats_t = torch.cat(feats)  # (N, K, D)
        pooled, concat = feats_t.mean(1), feats_t.flatten(1)
        scores = [_probe_accuracy(rep, target) for rep in (pooled, concat) for target in (colour, shape)]
        print(f"| {name} | {feats_t.shape[1]} | {feats_t.shape[2]} | {scores[0]:.3f} | {scores[1]:.3f} | "
              f"{scores[2]:.3f} | {scores[3]:.3f} | {seconds:.1f} |", flush=True)



# ---------------------------------------------------------------------------------------------------------- train


def _backends(selected: list[str] | None) -> list[tuple[str, str, dict]]:
    """The rows: patches, the built-in grid settings, the same with random weights, and (opt-in) the folder grid."""
    from features import EASY_VQA_GRID, GRID_DEFAULTS

    rows = [("patches", "patches", {}), ("grid", "grid", dict(EASY_VQA_GRID)),
            ("grid-random", "grid", {**EASY_VQA_GRID, "random_weights": True}),
            ("grid-224", "grid", dict(GRID_DEFAULTS)),
            ("grid-colour", "grid", {**EASY_VQA_GRID, "colour_stats": True}),
            ("grid-nocolour", "grid", {**EASY_VQA_GRID, "colour_stats": False}),
            ("grid-hist", "grid", {**EASY_VQA_GRID, "colour_stats": True, "colour_hist": 4})]
    chosen = selected or ["patches", "grid", "grid-random"]
    unknown = sorted(set(chosen) - {name for name, _, _ in rows})
    if unknown:
        raise SystemExit(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(n for n, _, _ in rows)}")
    return [row for row in rows if row[0] in chosen]


def _load_split(store_dir: Path) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
    """``(row of each image id, feats fp16 [N, K, D], boxes fp32 [N, K, 4])`` of a whole store, in memory."""
    store = FeatureStore(store_dir)
    ids = list(store.ids())
    samples = [store[i] for i in ids]
    feats = torch.from_numpy(np.stack([s["feats"] for s in samples]))
    boxes = torch.from_numpy(np.stack([s["boxes"] for s in samples]))
    return {image_id: row for row, image_id in enumerate(ids)}, feats, boxes


class _Questions:
    """Tokenised questions of one split with their answer index, type and image row."""

    def __init__(self, split: str, rows: dict[str, int], tokenizer, answers: list[str], limit: int | None,
                 seed: int) -> None:
        texts, words, image_ids = easy_vqa.get_test_questions() if split == "test" else easy_vqa.get_train_questions()
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        order = order[:limit] if limit else order
        encoded = tokenizer([texts[i] for i in order], padding="longest", return_tensors="pt")
        self.input_ids, self.attention_mask = encoded["input_ids"], encoded["attention_mask"]
        self.token_type_ids = encoded["token_type_ids"]
        self.answer = torch.tensor([answers.index(words[i]) for i in order])
        self.kind = [question_type(words[i]) for i in order]
        self.image_row = torch.tensor([rows[str(image_ids[i])] for i in order])

    def __len__(self) -> int:
        return len(self.answer)

    def batch(self, index: torch.Tensor, feats: torch.Tensor, boxes: torch.Tensor, num_answers: int):
        import vlm

        rows = self.image_row[index]
        region_feats = feats[rows].float()
        return vlm.Batch(
            input_ids=self.input_ids[index], attention_mask=self.attention_mask[index],
            token_type_ids=self.token_type_ids[index], region_feats=region_feats, region_boxes=boxes[rows],
            region_mask=torch.ones(region_feats.shape[:2], dtype=torch.long),
            answer_targets=torch.nn.functional.one_hot(self.answer[index], num_answers).float(),
        )


def _train_one(name: str, stores: dict[str, Path], args: argparse.Namespace, tokenizer) -> dict:
    import vlm
    from vlm.precision import autocast

    answers = easy_vqa.get_answers()
    train_rows, train_feats, train_boxes = _load_split(stores["train"])
    test_rows, test_feats, test_boxes = _load_split(stores["test"])
    train = _Questions("train", train_rows, tokenizer, answers, args.train_questions, seed=0)
    test = _Questions("test", test_rows, tokenizer, answers, args.test_questions, seed=1)
    torch.manual_seed(args.seed)  # a bench script: one seed for the model's random layers, the same for each backend
    model = vlm.create_model("lxmert-mini", task="vqa", num_answers=len(answers),
                             visual_feat_dim=int(train_feats.shape[-1]), text_init="all-minilm-l6-v2")
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * (len(train) // args.batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
    generator = torch.Generator().manual_seed(args.seed)
    epoch_seconds = []
    model.train()
    for _ in range(args.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(train), generator=generator)
        for lo in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = train.batch(order[lo:lo + args.batch_size], train_feats, train_boxes, len(answers))
            with autocast("cpu", args.precision):
                loss = model(batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
        epoch_seconds.append(time.perf_counter() - start)
    model.eval()
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with torch.inference_mode(), autocast("cpu", args.precision):
        for lo in range(0, len(test), 256):
            index = torch.arange(lo, min(lo + 256, len(test)))
            predicted = model(test.batch(index, test_feats, test_boxes, len(answers))).logits.argmax(-1)
            for i, ok in zip(index.tolist(), (predicted == test.answer[index]).tolist()):
                for key in (test.kind[i], "all"):
                    hits[key][0] += int(ok)
                    hits[key][1] += 1
    return {"K": int(train_feats.shape[1]), "D": int(train_feats.shape[2]), "loss": loss.item(),
            "epoch_s": sum(epoch_seconds) / len(epoch_seconds),
            **{key: correct / total for key, (correct, total) in hits.items()}}


def run_train(args: argparse.Namespace) -> None:
    """Extract (or reuse) each backend's stores, train and evaluate the same model on each, print one table."""
    import vlm
    from vlm.precision import autocast_dtype

    tokenizer = vlm.load_tokenizer()
    work = Path(args.work or tempfile.mkdtemp(prefix="feature_quality-"))
    rows = []
    for name, backend, options in _backends(args.backends):
        start = time.perf_counter()
        stores = {}
        for split in ("train", "test"):
            stores[split] = work / f"{name}-{split}"
            extract(f"easy-vqa:{split}", stores[split], backend, options, batch_size=64, num_workers=args.num_workers,
                    progress=False)
        extract_s = time.perf_counter() - start
        result = _train_one(name, stores, args, tokenizer)
        rows.append((name, extract_s, result))
        print(f"# {name}: done ({result['all']:.3f} overall)", flush=True)
    dtype = autocast_dtype("cpu", args.precision)
    print(f"\n# feature_quality: lxmert-mini (text init all-MiniLM-L6-v2), {args.epochs} epoch(s) x "
          f"{args.train_questions or 'all'} train questions, batch {args.batch_size}, AdamW lr {args.lr} (10% warmup, "
          f"linear decay), autocast {dtype}; test: {args.test_questions or 'all'} questions; "
          f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}; stores in {work}")
    print("| features | K | D | yes/no | colour | shape | all | s/epoch | extract s (5,000 images) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, extract_s, r in rows:
        print(f"| {name} | {r['K']} | {r['D']} | {r.get('yes/no', 0):.3f} | {r.get('colour', 0):.3f} | "
              f"{r.get('shape', 0):.3f} | {r['all']:.3f} | {r['epoch_s']:.0f} | {extract_s:.0f} |")


def main() -> None:
    """Parse the options and run the probe or the training comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", action="store_true", help="run the linear probe of stages/grids instead")
    parser.add_argument("--probe-images", type=int, default=500)
    parser.add_argument("--train-questions", "--budget", type=int, default=12800,
                        help="training questions per epoch, a fixed random subset (0: all 38,575)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--test-questions", type=int, default=3000, help="test questions evaluated (0: all 9,673)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", default="auto",
                        help="autocast: auto (default: bf16 where the CPU has native bf16, else fp32), bf16, fp32")
    parser.add_argument("--backends", nargs="*", default=None,
                        help="rows: patches grid grid-random (default) and grid-224 (the folder default, 7x7 @224px)")
    parser.add_argument("--num-workers", type=int, default=0, help="image-decoding workers of the extraction")
    parser.add_argument("--work", default=None, help="folder for the feature stores (reused when rerun)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.probe:
        run_probe(args.probe_images, args.batch_size)
    else:
        run_train(args)


if __name__ == "__main__":
    main()
