"""Does the model relate words to regions? A diagnosis of trained easy-VQA models, LXMERT beside the single stream.

For each trained VQA model folder given, on easy-VQA test images and questions with the built-in features:

1. **Linear probes of the image's colour** (8 classes) from every layer's region states (mean over real regions) and
   from the ``[CLS]`` text state of every layer and the pooled vector, all under one fixed question ("what color is
   the shape?", so any colour in a text state came from the image). A ridge classifier (closed form, one-vs-rest)
   trained on half the images, scored on the other half: held-out accuracy, chance 12.5%.
2. **Colour-word agreement in the pooled vector**: for yes/no questions that name exactly one colour, whether that
   colour is the image's (independent of negation) — a linear probe of the pooled vector (real question and image),
   beside the same probe with the image removed at test time (``text_only``: chance if only the image can tell), and
   the model's own accuracy on those questions.
3. **Attention from words to the shape**: easy-VQA has no boxes, so the pixels that differ from the background colour
   (the corner pixel's colour) mark the shape; each region's share of shape pixels gives the regions covering the
   shape (share >= 0.25). Per cross-modality layer (LXMERT: text→region cross-attention; single stream: each layer's
   self-attention from text to region tokens, renormalised over the regions), head-averaged: the attention mass the
   question's colour word and ``[CLS]`` put on those regions, beside their share of the regions (what uniform
   attention would give).
4. **Per-block gradient norms early in fine-tuning** (``--grad-steps``, from ``--init`` per architecture, the
   architecture's VQA preset): the L2 norm of each block's gradient at the first steps.

    python bench/diagnose_grounding.py --model runs/ft-lxmert-vqa-pre/model --model runs/ft-vilbert-vqa-pre/model \
        --init lxmert=runs/pretrain-lxmert/model --init vilbert=runs/pretrain-vilbert/model

Numbers go to stdout (and ``--json FILE``); docs/results.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vlm
from downstream.modality import text_only
from features.builtin import builtin_store, default_cache_dir
from features.store import FeatureStore
from vlm.data.collate import make_batch
from vlm.data.easy_vqa import EASY_VQA_COLOURS, read_easy_vqa, read_image_attributes
from vlm.models.attention import region_attention

FIXED_QUESTION = "what color is the shape?"
SHAPE_SHARE = 0.25  # a region covers the shape when at least this share of its pixels are shape pixels


# ------------------------------------------------------------------------------------------------------- batches


def batch_of(store: FeatureStore, image_ids: list[str], texts: list[str], tok: Any, max_len: int) -> vlm.Batch:
    """The texts with their images' regions, through the one batch builder, truncated to the model's text length."""
    return make_batch(tok, texts, [store[i] for i in image_ids], max_len)[0]


def capture(model: vlm.VLMModel, batch: vlm.Batch) -> dict[str, Any]:
    """One forward that keeps every layer's states and attention: ``region[l]`` ``[B, K, H]``, ``cls[l]`` ``[B, H]``,
    ``attn[l]`` text→region ``[B, T, K]`` (per cross-modality layer for LXMERT, per layer for the single stream;
    head-averaged, :func:`vlm.models.attention.region_attention`), ``pooled`` and ``logits``."""
    with torch.inference_mode():
        result = model(batch, output_attentions=True, output_hidden_states=True)
    enc = result.encoder_output
    if model.config.arch == "lxmert":
        crosses = [f"x{i}" for i in range(model.config.x_layers)]
        cls_names = [f"l{i}" for i in range(model.config.l_layers)] + crosses
        region_names = [f"r{i}" for i in range(model.config.r_layers)] + crosses
    else:
        cls_names = region_names = [f"{i}" for i in range(len(enc.text_hidden_states))]
    return {"region": [r.float() for r in enc.region_hidden_states], "region_names": region_names,
            "cls": [t[:, 0].float() for t in enc.text_hidden_states], "cls_names": cls_names,
            "attn": [region_attention(enc, layer) for layer in range(len(enc.attentions))],
            "pooled": result.pooled.float(), "logits": result.logits.float()}


# ------------------------------------------------------------------------------------------------------- probes


def ridge_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, lam: float = 1e-2) -> float:
    """Held-out accuracy (percent) of a one-vs-rest ridge classifier on standardised features."""
    x = torch.from_numpy(x).double()
    mu, sd = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = torch.cat([(x - mu) / sd, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    classes = np.unique(y[train])
    targets = torch.from_numpy((y[train][:, None] == classes[None, :]).astype(np.float64) * 2 - 1)
    xt = x[train]
    w = torch.linalg.solve(xt.T @ xt + lam * len(xt) * torch.eye(xt.shape[1], dtype=torch.float64), xt.T @ targets)
    test = ~train
    pred = classes[(x[test] @ w).argmax(1).numpy()]
    return 100.0 * float((pred == y[test]).mean())


def mlp_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, steps: int = 400) -> float:
    """Held-out accuracy (percent) of a probe shaped like the answer head (Linear(H, 2H), GeLU, LayerNorm, Linear):
    whether a non-linear read-out of the vector could compute what a linear one cannot (e.g. an equality)."""
    g = torch.Generator().manual_seed(0)
    xt = torch.from_numpy(x).float()
    mu, sd = xt[train].mean(0), xt[train].std(0).clamp_min(1e-6)
    xt = (xt - mu) / sd
    classes, yi = np.unique(y, return_inverse=True)
    yt = torch.from_numpy(yi)
    h = xt.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(h, 2 * h), torch.nn.GELU(), torch.nn.LayerNorm(2 * h),
                              torch.nn.Linear(2 * h, len(classes)))
    for p in net.parameters():
        if p.ndim == 2:
            torch.nn.init.normal_(p, std=0.02, generator=g)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    tr = torch.from_numpy(train)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(xt[tr]), yt[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return 100.0 * float((net(xt[~tr]).argmax(1) == yt[~tr]).float().mean())


def split(n: int, seed: int = 0) -> np.ndarray:
    """A boolean mask: half the rows for training the probe."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
    return mask


# ------------------------------------------------------------------------------------------------------- shape regions


def shape_pixels(path: str) -> np.ndarray:
    """``[H, W]`` bool: the pixels whose colour differs from the background (the top-left pixel's colour)."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB")).astype(np.int16)
    return np.abs(a - a[0, 0]).sum(-1) > 30


def region_cover(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of shape pixels in each box (boxes normalised x1, y1, x2, y2)."""
    h, w = mask.shape
    out = np.zeros(len(boxes))
    for n, (x1, y1, x2, y2) in enumerate(boxes):
        c1, r1 = int(np.floor(x1 * w)), int(np.floor(y1 * h))
        c2, r2 = max(c1 + 1, int(np.ceil(x2 * w))), max(r1 + 1, int(np.ceil(y2 * h)))
        out[n] = mask[r1:r2, c1:c2].mean()
    return out


# ------------------------------------------------------------------------------------------------------- parts


def probe_colour(model: vlm.VLMModel, store: FeatureStore, images: list[str], colours: list[str], tok: Any,
                 max_len: int, batch_size: int) -> dict[str, dict[str, float]]:
    region_means: dict[str, list[np.ndarray]] = defaultdict(list)
    cls: dict[str, list[np.ndarray]] = defaultdict(list)
    pooled = []
    for s in range(0, len(images), batch_size):
        ids = images[s:s + batch_size]
        batch = batch_of(store, ids, [FIXED_QUESTION] * len(ids), tok, max_len)
        out = capture(model, batch)
        m = batch.region_mask.unsqueeze(-1).float()
        for name, r in zip(out["region_names"], out["region"]):
            region_means[name].append(((r * m).sum(1) / m.sum(1).clamp_min(1)).numpy())
        for name, c in zip(out["cls_names"], out["cls"]):
            cls[name].append(c.numpy())
        pooled.append(out["pooled"].numpy())
    y = np.array(colours)
    train = split(len(images))
    return {"region": {n: ridge_probe(np.concatenate(v), y, train) for n, v in region_means.items()},
            "cls": {n: ridge_probe(np.concatenate(v), y, train) for n, v in cls.items()},
            "pooled": {"pooled": ridge_probe(np.concatenate(pooled), y, train)}}


def colour_questions(questions: list[Any], colour_of: dict[str, str]) -> list[tuple[Any, str, bool]]:
    """Yes/no test questions naming exactly one colour: ``(question, named colour, named == image colour)``."""
    out = []
    for q in questions:
        if q.answers[0] not in ("yes", "no") or q.image_id not in colour_of:
            continue
        named = [w for w in re.findall(r"[a-z]+", q.question.lower()) if w in EASY_VQA_COLOURS]
        if len(named) == 1:
            out.append((q, named[0], named[0] == colour_of[q.image_id]))
    return out


def probe_agreement(model: vlm.VLMModel, store: FeatureStore, rows: list[tuple[Any, str, bool]], answers: list[str],
                    tok: Any, max_len: int, batch_size: int) -> dict[str, float]:
    fused, blind, right = [], [], []
    for s in range(0, len(rows), batch_size):
        part = rows[s:s + batch_size]
        batch = batch_of(store, [q.image_id for q, _, _ in part], [q.question for q, _, _ in part], tok, max_len)
        out = capture(model, batch)
        fused.append(out["pooled"].numpy())
        right += [answers[int(i)] == q.answers[0] for i, (q, _, _) in zip(out["logits"].argmax(1), part)]
        blind.append(capture(model, text_only(batch))["pooled"].numpy())
    y = np.array([agree for _, _, agree in rows])
    # split by image, so a probe never sees the held-out images
    images = sorted({q.image_id for q, _, _ in rows})
    train_images = {images[i] for i in np.flatnonzero(split(len(images)))}
    train = np.array([q.image_id in train_images for q, _, _ in rows])
    yes = np.array([q.answers[0] == "yes" for q, _, _ in rows])
    fused_x, blind_x = np.concatenate(fused), np.concatenate(blind)
    return {"questions": len(rows), "agree_share": 100.0 * float(y.mean()),
            "probe_fused": ridge_probe(fused_x, y, train), "mlp_probe_fused": mlp_probe(fused_x, y, train),
            "probe_image_removed": ridge_probe(blind_x, y, train),
            "mlp_probe_image_removed": mlp_probe(blind_x, y, train),
            "model_accuracy": 100.0 * float(np.mean(right)),
            "model_accuracy_when_agree": 100.0 * float(np.mean(np.array(right)[y])),
            "model_accuracy_when_disagree": 100.0 * float(np.mean(np.array(right)[~y])),
            "yes_share": 100.0 * float(yes.mean())}


def attention_to_shape(model: vlm.VLMModel, store: FeatureStore, rows: list[tuple[Any, str, bool]], tok: Any,
                       max_len: int, image_paths: dict[str, str], batch_size: int) -> dict[str, dict[str, float]]:
    word_mass: dict[int, list[float]] = defaultdict(list)
    cls_mass: dict[int, list[float]] = defaultdict(list)
    share: list[float] = []
    cover_cache: dict[str, np.ndarray] = {}
    for s in range(0, len(rows), batch_size):
        part = rows[s:s + batch_size]
        image_ids = [q.image_id for q, _, _ in part]
        batch = batch_of(store, image_ids, [q.question for q, _, _ in part], tok, max_len)
        out = capture(model, batch)
        for r, (q, colour, _) in enumerate(part):
            img = q.image_id
            if img not in cover_cache:
                boxes = regions_of(store[img])[1]
                cover_cache[img] = region_cover(shape_pixels(image_paths[img]), boxes) >= SHAPE_SHARE
            covers = torch.from_numpy(cover_cache[img])
            if not covers.any():
                continue
            ids = batch.input_ids[r].tolist()
            word_ids = tok(colour, add_special_tokens=False)["input_ids"]
            pos = next((i for i in range(len(ids)) if ids[i:i + len(word_ids)] == word_ids), None)
            share.append(float(covers.float().mean()))
            kk = len(covers)
            for layer, a in enumerate(out["attn"]):
                cls_mass[layer].append(float(a[r, 0, :kk][covers].sum()))
                if pos is not None:
                    word_mass[layer].append(float(a[r, pos, :kk][covers].sum()))
    return {"uniform": {"share": 100.0 * float(np.mean(share))},
            "colour_word": {str(l): 100.0 * float(np.mean(v)) for l, v in word_mass.items()},
            "cls": {str(l): 100.0 * float(np.mean(v)) for l, v in cls_mass.items()}}


def gradient_norms(arch: str, init: str, steps: int, cache: str) -> dict[str, list[float]]:
    """Per-block gradient L2 norms over the first ``steps`` fine-tuning steps of the architecture's VQA preset."""
    from downstream.finetune import load_finetune_config, prepare_finetuning
    from vlm.engine.loader import StepBatches

    cfg = load_finetune_config(task="vqa", arch=arch, overrides=[f"init={init}"] if init else [])
    cfg.data.cache_dir = cache
    cfg.train.device = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare_finetuning(cfg, out_dir=Path(tmp) / "run", show_progress=False)
        device = run.device
        model, trainer = run.model, run.trainer
        blocks: dict[str, list[torch.nn.Parameter]] = defaultdict(list)
        for name, p in model.named_parameters():
            parts = name.split(".")
            key = ".".join(parts[:3]) if parts[1] in ("text_layers", "region_layers", "cross_layers", "layers") \
                else ".".join(parts[:2])
            if parts[1] == "cross_layers":
                key = ".".join(parts[:4])  # cross / text_self / region_self / text_ffn / region_ffn
            blocks[key].append(p)
        norms: dict[str, list[float]] = defaultdict(list)

        def record(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            for key, params in blocks.items():
                sq = sum(float(p.grad.float().pow(2).sum()) for p in params if p.grad is not None)
                norms[key].append(sq ** 0.5)

        handle = trainer.optimizer.register_step_pre_hook(record)
        batches = StepBatches(run.train_data, trainer.plan, cfg.train.grad_accum)
        try:
            for _ in range(steps):
                trainer.train_step(next(batches))
        finally:
            handle.remove()
            batches.close()
    return dict(norms)


# ------------------------------------------------------------------------------------------------------- report


def _table(title: str, rows: dict[str, dict[str, float]]) -> str:
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))  # layer order as captured
    lines = [title, f"{'':<22}" + "".join(f"{c:>9}" for c in cols)]
    for name, r in rows.items():
        lines.append(f"{name:<22}" + "".join(f"{r[c]:>9.1f}" if c in r else f"{'':>9}" for c in cols))
    return "\n".join(lines)


def diagnose(path: str, args: argparse.Namespace, store: FeatureStore, tok: Any) -> dict[str, Any]:
    import easy_vqa

    loaded = vlm.load_model_folder(path, tasks=("vqa",))
    model, answers, max_len = loaded.model, loaded.labels, loaded.max_text_len
    arch = model.config.arch
    questions = read_easy_vqa("test")
    attributes, _ = read_image_attributes(questions)
    images = sorted((i for i in attributes if i in store), key=int)[:args.images]
    colour_of = {i: attributes[i][0] for i in attributes}
    result: dict[str, Any] = {"model": path, "arch": arch}
    t0 = time.perf_counter()
    result["colour_probe"] = probe_colour(model, store, images, [colour_of[i] for i in images], tok, max_len,
                                          args.batch_size)
    rows = [r for r in colour_questions(questions, colour_of) if r[0].image_id in store][:args.questions]
    result["agreement"] = probe_agreement(model, store, rows, answers, tok, max_len, args.batch_size)
    paths = {str(k): v for k, v in easy_vqa.get_test_image_paths().items()}
    result["attention"] = attention_to_shape(model, store, rows, tok, max_len, paths, args.batch_size)
    result["seconds"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a fine-tuned VQA model folder (repeat)")
    parser.add_argument("--init", action="append", default=[], metavar="ARCH=DIR",
                        help="gradient norms: fine-tune ARCH from DIR (a pretraining model folder, or a preset)")
    parser.add_argument("--grad-steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=1000, help="test images for the colour probe")
    parser.add_argument("--questions", type=int, default=3000, help="colour yes/no questions for parts 2 and 3")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    cache = str(default_cache_dir(os.environ))
    store = FeatureStore(builtin_store("test", cache))
    tok = vlm.load_tokenizer()
    results = []
    for path in args.model:
        r = diagnose(path, args, store, tok)
        results.append(r)
        print(f"\n=== {r['arch']}: {path} ({r['seconds']:.0f} s)")
        print(_table("1. colour probe (held-out %, chance 12.5): region states / [CLS] per layer, pooled",
                     {"region states": r["colour_probe"]["region"], "[CLS] text state": r["colour_probe"]["cls"],
                      "pooled": r["colour_probe"]["pooled"]}))
        a = r["agreement"]
        print(f"2. colour-word agreement ({a['questions']} yes/no questions naming one colour, the colour is the "
              f"image's in {a['agree_share']:.1f}%): pooled vector, linear probe {a['probe_fused']:.1f}%, "
              f"MLP probe {a['mlp_probe_fused']:.1f}%; image removed: linear {a['probe_image_removed']:.1f}%, MLP "
              f"{a['mlp_probe_image_removed']:.1f}%; the model answers {a['model_accuracy']:.1f}% right "
              f"({a['model_accuracy_when_agree']:.1f}% when the colour is the image's, "
              f"{a['model_accuracy_when_disagree']:.1f}% when not)")
        att = r["attention"]
        print(_table(f"3. attention mass on the shape's regions (%; uniform attention gives "
                     f"{att['uniform']['share']:.1f}), per "
                     f"{'cross-modality layer' if r['arch'] == 'lxmert' else 'layer'}",
                     {"colour word": att["colour_word"], "[CLS]": att["cls"]}))
    for spec in args.init:
        arch, _, init = spec.partition("=")
        norms = gradient_norms(arch, init, args.grad_steps, cache)
        results.append({"arch": arch, "init": init, "gradient_norms": norms})
        print(f"\n4. {arch} from {init or 'the preset'}: gradient L2 norm per block at steps 1..{args.grad_steps}")
        for key, values in norms.items():
            shown = [values[i] for i in sorted({0, 1, 2, len(values) // 2, len(values) - 1}) if i < len(values)]
            print(f"  {key:<44}" + " ".join(f"{v:9.4f}" for v in shown))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
