"""``vlm demo``: real easy-VQA images → ``patches`` shards → every preset as a VQA model over the 13 answers, one
forward pass each (untrained heads: the answers are arbitrary; ``vlm finetune`` trains them)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import easy_vqa
import torch

import vlm
from features.cli import extract_main
from features.store import FeatureStore
from vlm.config import DataConfig
from vlm.data.collate import make_batch


def run_demo(num_images: int = 8, out: str = "runs/demo") -> int:
    """Real easy-VQA images → `patches` shards → every preset as a VQA model over the 13 answers (forward only)."""
    store_dir = Path(out) / "feats-test"
    print(f"1/3 extracting patches features for {num_images} easy-VQA test images into {store_dir}")
    code = extract_main(["--source", "easy-vqa:test", "--backend", "patches", "--out", str(store_dir),
                         "--limit", str(num_images), "--no-progress", "--overwrite"])
    if code:
        return code
    store = FeatureStore(store_dir)
    texts, answers, image_ids = easy_vqa.get_test_questions()
    table = easy_vqa.get_answers()
    pick = {}
    for q, a, i in zip(texts, answers, image_ids):  # first question of each extracted image
        if str(i) in store and str(i) not in pick:
            pick[str(i)] = (q, a)
    ids = sorted(pick, key=int)
    samples = [store[i] for i in ids]
    batch, _ = make_batch(vlm.load_tokenizer(), [pick[i][0] for i in ids], samples, DataConfig().max_text_len)
    print(f"2/3 batch: {len(ids)} questions, {batch.input_ids.shape[1]} tokens, "
          f"{batch.region_feats.shape[1]} regions x {batch.region_feats.shape[2]}-d features")
    print(f"    e.g. image {ids[0]}: {pick[ids[0]][0]!r} (answer: {pick[ids[0]][1]})")
    print("3/3 forward pass of every preset as a VQA model over the 13 easy-VQA answers (untrained heads)")
    print(f"{'preset':<14}{'params':>9}{'text init':>18}{'forward ms':>12}  pooled     top answer of sample 0")
    for name in vlm.list_models():
        init = "all-minilm-l6-v2" if name.endswith("-mini") else None
        model = vlm.create_model(name, task="vqa", num_answers=len(table), visual_feat_dim=store.feature_dim,
                                 text_init=init).eval()
        with torch.inference_mode():
            model(batch)  # warm-up
            start = time.perf_counter()
            out = model(batch)
            ms = (time.perf_counter() - start) * 1000
        if not torch.isfinite(out.logits).all():
            print(f"{name}: non-finite logits", file=sys.stderr)
            return 1
        top = table[int(out.logits[0].argmax())]
        print(f"{name:<14}{model.num_parameters() / 1e6:>8.1f}M{init or 'random':>18}{ms:>12.1f}  "
              f"{tuple(out.pooled.shape)!s:<10} {top}")
    print("The answer heads are untrained, so the answers above are arbitrary: `vlm finetune` trains them.")
    return 0
