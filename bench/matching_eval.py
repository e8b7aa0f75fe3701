"""Held-out image-caption matching of a pretraining checkpoint, per pair kind, beside its text-only control.

For each ``--model`` (a ``vlm pretrain`` model folder), the held-out captions (easy-VQA test captions by default, or
``--holdout N`` training images as in ``data.holdout_images``) are paired as pretraining pairs them — half true, the
other half split between random captions of other images and hard negatives with one colour or shape word swapped
(``--negatives``) — with nothing masked, and scored twice: with the image, and with the image removed at test time
(``downstream.modality.text_only``: one zero region, masked out). The text-only control must stay near 50%: a caption
and its swapped negative differ only in a word that the text alone cannot judge.

Usage::

    python bench/matching_eval.py --model runs/pretrain-lxmert/model --model runs/pretrain-vilbert/model

Prints one row per model and condition: overall and per pair kind (``positive``, ``random``, ``colour``, ``shape``).
No timings.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch

import vlm
from downstream.modality import text_only
from features.builtin import builtin_store, default_cache_dir
from features.store import FeatureStore
from pretraining.data import PretrainData
from pretraining.masking import MaskingConfig
from pretraining.negatives import MatchingConfig
from pretraining.objectives import Matching
from vlm.data.readers import read_texts
from vlm.data.split import split_holdout
from vlm.engine.loader import eval_batches
from vlm.precision import autocast


@torch.no_grad()
def score(model: vlm.VLMModel, data: PretrainData, kinds: list[str], remove_image: bool,
          batch_size: int = 128) -> dict[str, float]:
    """Matching accuracy (%) overall and per pair kind (the matching objective's own counting)."""
    objective = Matching()
    counts: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(2))
    for batch in eval_batches(data, batch_size):
        if remove_image:
            batch = text_only(batch)
        with autocast(torch.device("cpu"), "auto"):
            out = model(batch)
        for name, pair in objective.accuracy_by_kind(out, batch, kinds).items():
            counts[name] += pair
        counts["overall"] += objective.accuracy(out, batch)
    return {k: 100.0 * float(v[0] / v[1]) for k, v in counts.items() if v[1]}


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="a pretraining model folder (repeatable)")
    p.add_argument("--holdout", type=int, default=0, help="score N held-out training images (0: the test split)")
    p.add_argument("--negatives", default="random=0.25,colour=0.5,shape=0.25", help="shares of negative kinds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cache-dir", default="")
    args = p.parse_args(argv)
    negatives = {k: float(v) for k, v in (part.split("=") for part in args.negatives.split(","))}
    matching = MatchingConfig(texts="assertions", negatives=negatives)
    matching.check()
    cache = args.cache_dir or str(default_cache_dir(os.environ))
    if args.holdout:
        _, texts = split_holdout(read_texts("easy-vqa-captions", "train"), args.holdout, "easy-vqa-captions")
        store = FeatureStore(builtin_store("train", cache, "auto"))
    else:
        texts = read_texts("easy-vqa-captions", "test")
        store = FeatureStore(builtin_store("test", cache, "auto"))
    data = PretrainData(texts, store, vlm.load_tokenizer(), None, MaskingConfig(), seed=args.seed,
                        matching=matching).unmasked()
    kinds = matching.kinds()
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{len(data)} captions of {'held-out training' if args.holdout else 'test'} images; "
          f"negatives {negatives}; nothing masked")
    for path in args.model:
        model = vlm.from_pretrained(path).eval()
        results[path] = {"with image": score(model, data, kinds, False),
                         "image removed": score(model, data, kinds, True)}
        for cond, r in results[path].items():
            print(f"{path} | {cond:13s} | " + " | ".join(f"{k} {v:.2f}" for k, v in r.items()))
    return results


if __name__ == "__main__":
    main()
