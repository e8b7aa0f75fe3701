"""Fine-tuning recipes on easy-VQA: which optimisation choices let a mini model reach 99% fastest (issue 8).

Trains a VQA model (``lxmert-mini`` or ``vilbert-mini``, text side from all-MiniLM-L6-v2 or a pretraining checkpoint)
on the built-in easy-VQA features held in memory, in a plain loop (AdamW, linear warm-up and decay, clipping 1.0,
``vlm.precision.autocast``), and prints test accuracy per question type every ``--eval-every`` steps with the wall
time, so that variants can be compared at equal budgets. Each variant is one row of the table in
``docs/results.md``; the presets in ``configs/`` are the winner.

Usage::

    python bench/easy_vqa_recipes.py --arch lxmert --steps 600 --lr 2e-4 --new-lr-mult 5 --dropout 0

Timings depend on the machine and its load: compare rows measured on a quiet machine only.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import easy_vqa
import torch

import vlm
from features.builtin import builtin_store, default_cache_dir
from features.store import FeatureStore
from vlm.data.easy_vqa import EASY_VQA_COLOURS, easy_vqa_question_type
from vlm.precision import autocast


def load_split(split: str, tokenizer, answers: list[str], cache: str, limit: int = 0, store_dir: str = ""):
    store = FeatureStore(store_dir or builtin_store(split, cache, "auto"))
    ids = list(store.ids())
    row = {image_id: i for i, image_id in enumerate(ids)}
    samples = [store[i] for i in ids]
    feats = torch.stack([torch.from_numpy(s["feats"]).float() for s in samples])
    boxes = torch.stack([torch.from_numpy(s["boxes"]) for s in samples])
    texts, words, image_ids = easy_vqa.get_test_questions() if split == "test" else easy_vqa.get_train_questions()
    if limit:
        g = torch.Generator().manual_seed(1)
        keep = torch.randperm(len(texts), generator=g)[:limit].tolist()
        texts, words, image_ids = [texts[i] for i in keep], [words[i] for i in keep], [image_ids[i] for i in keep]
    enc = tokenizer(list(texts), padding="longest", return_tensors="pt")
    return {
        "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "token_type_ids": enc["token_type_ids"],
        "answer": torch.tensor([answers.index(w) for w in words]),
        "kind": [_kind(t, w) for t, w in zip(texts, words)],
        "image": torch.tensor([row[str(i)] for i in image_ids]), "feats": feats, "boxes": boxes,
    }


def _kind(text: str, answer: str) -> str:
    """Question type from the answer; yes/no split by what it asks about (a colour or a shape)."""
    kind = easy_vqa_question_type(answer)
    if kind == "yes/no":
        kind = "yn-colour" if any(c in text.split() for c in EASY_VQA_COLOURS) else "yn-shape"
    return kind


def make_batch(d, index: torch.Tensor, num_answers: int) -> vlm.Batch:
    rows = d["image"][index]
    feats = d["feats"][rows]
    return vlm.Batch(
        input_ids=d["input_ids"][index], attention_mask=d["attention_mask"][index],
        token_type_ids=d["token_type_ids"][index], region_feats=feats, region_boxes=d["boxes"][rows],
        region_mask=torch.ones(feats.shape[:2], dtype=torch.long),
        answer_targets=torch.nn.functional.one_hot(d["answer"][index], num_answers).float())


@torch.inference_mode()
def evaluate(model, d, num_answers: int, precision: str) -> dict[str, float]:
    model.eval()
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with autocast("cpu", precision):
        for lo in range(0, len(d["answer"]), 512):
            index = torch.arange(lo, min(lo + 512, len(d["answer"])))
            pred = model(make_batch(d, index, num_answers)).logits.argmax(-1)
            for i, ok in zip(index.tolist(), (pred == d["answer"][index]).tolist()):
                for key in (d["kind"][i], "yes/no" if d["kind"][i].startswith("yn") else "", "all"):
                    hits[key][0] += int(ok)
                    hits[key][1] += 1
    model.train()
    return {k: 100 * c / n for k, (c, n) in hits.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lxmert", choices=["lxmert", "vilbert"])
    p.add_argument("--init", default="", help="a pretraining checkpoint folder (default: the preset)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--new-lr-mult", type=float, default=1.0, help="lr multiplier of weights not from the text BERT")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--test-questions", type=int, default=3000)
    p.add_argument("--precision", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--colour-scale", type=float, default=1.0, help="multiply the colour statistics by this")
    p.add_argument("--train-store", default="", help="feature store of easy-VQA train (default: built in)")
    p.add_argument("--test-store", default="", help="feature store of easy-VQA test (default: built in)")
    p.add_argument("--keep-dims", type=int, default=0, help="keep only the first N feature values")
    p.add_argument("--drop-first-region", action="store_true", help="drop region 0 (a whole-image box)")
    p.add_argument("--xr-init", action="store_true", help="lxmert: cross/region layers start as copies of text layers")
    p.add_argument("--override", nargs="*", default=[], help="model overrides key=value (int/float)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    cache = str(default_cache_dir(os.environ))
    tok = vlm.load_tokenizer()
    answers = easy_vqa.get_answers()
    train = load_split("train", tok, answers, cache, store_dir=args.train_store)
    test = load_split("test", tok, answers, cache, args.test_questions, store_dir=args.test_store)
    for d in (train, test):
        d["feats"][..., 320:] *= args.colour_scale
        if args.keep_dims:
            d["feats"] = d["feats"][..., :args.keep_dims].contiguous()
        if args.drop_first_region:
            d["feats"], d["boxes"] = d["feats"][:, 1:].contiguous(), d["boxes"][:, 1:].contiguous()
    over = {k: (float(v) if "." in v or "e" in v else int(v)) for k, v in (o.split("=") for o in args.override)}
    drop = {"hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout}
    if args.init:
        model = vlm.from_pretrained(args.init, task="vqa", num_answers=len(answers), **drop, **over)
        text_keys = set()
    else:
        model = vlm.create_model(f"{args.arch}-mini", task="vqa", num_answers=len(answers),
                                 visual_feat_dim=int(train["feats"].shape[-1]), text_init="all-minilm-l6-v2",
                                 **drop, **over)
        text_keys = set(vlm.load_text_weights(model, "all-minilm-l6-v2"))
        if args.xr_init and args.arch == "lxmert":
            enc = model.encoder
            n = len(enc.text_layers)
            for i, layer in enumerate(enc.cross_layers):
                src = enc.text_layers[n - len(enc.cross_layers) + i]
                for name in ("cross", "text_self", "region_self"):
                    getattr(layer, name).load_state_dict(src.attn.state_dict())
                layer.text_ffn.load_state_dict(src.ffn.state_dict())
                layer.region_ffn.load_state_dict(src.ffn.state_dict())
            for i, layer in enumerate(enc.region_layers):
                layer.load_state_dict(enc.text_layers[i].state_dict())
    groups = []
    for mult, names in ((1.0, text_keys), (args.new_lr_mult, None)):
        sub = torch.nn.Module()
        params = [(n, q) for n, q in model.named_parameters() if (n in text_keys) == (names is not None)]
        for g in param_groups_of(params, 0.01):
            g["lr"] = args.lr * mult
            groups.append(g)
    opt = torch.optim.AdamW(groups, lr=args.lr, fused=True)
    warm = max(1, int(args.warmup * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (args.steps - s) / max(1, args.steps - warm))))
    g = torch.Generator().manual_seed(args.seed)
    n, nA = len(train["answer"]), len(answers)
    order, pos, t0, train_s = torch.randperm(n, generator=g), 0, time.perf_counter(), 0.0
    print(f"# {args}")
    model.train()
    for step in range(1, args.steps + 1):
        if pos + args.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + args.batch_size]
        pos += args.batch_size
        t = time.perf_counter()
        with autocast("cpu", args.precision):
            loss = model(make_batch(train, idx, nA)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - t
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(model, test, nA, args.precision)
            print(f"step {step:5d} ep {step * args.batch_size / n:5.2f} loss {loss.item():.4f} "
                  f"all {acc['all']:.2f} yes/no {acc['yes/no']:.2f} (c {acc['yn-colour']:.1f} s {acc['yn-shape']:.1f}) "
                  f"colour {acc['colour']:.2f} "
                  f"shape {acc['shape']:.2f} train {train_s:.0f}s ({train_s / step:.3f}s/step) "
                  f"wall {time.perf_counter() - t0:.0f}s", flush=True)


def param_groups_of(named, wd):
    decay = [q for _, q in named if q.ndim >= 2]
    no = [q for _, q in named if q.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": no, "weight_decay": 0.0}]


if __name__ == "__main__":
    main()
