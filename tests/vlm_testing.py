"""Tiny model shapes and batches shared by the vlm tests (imported as a module: conftest names clash)."""

from __future__ import annotations

import torch

import vlm

# HF LxmertModelTester-like sizes: hidden 28 would not split into 4 heads evenly with our check, so 32.
TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=37, l_layers=2, r_layers=1, x_layers=1,
            num_layers=2, visual_feat_dim=12, num_object_labels=11, num_attr_labels=5, vocab_size=99,
            max_position_embeddings=64, sep_token_id=2)


def make_batch(b: int = 3, t: int = 9, k: int = 10, d: int = 12, vocab: int = 99, seed: int = 0) -> vlm.Batch:
    """A batch with text padding in one row and region padding in another."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    ids[:, 0] = 1
    am = torch.ones(b, t, dtype=torch.long)
    if b > 1:
        am[1, t - 3:] = 0
        ids[1, t - 3:] = 0
    rm = torch.ones(b, k, dtype=torch.long)
    if b > 2:
        rm[2, k // 2:] = 0
    x1y1 = torch.rand(b, k, 2, generator=g) * 0.5
    boxes = torch.cat([x1y1, x1y1 + torch.rand(b, k, 2, generator=g) * 0.5], dim=-1)
    return vlm.Batch(input_ids=ids, attention_mask=am, token_type_ids=torch.zeros_like(ids),
                     region_feats=torch.randn(b, k, d, generator=g), region_boxes=boxes, region_mask=rm)


# ------------------------------------------------------------------------------------------------ pretraining runs

TINY_MODEL = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, l_layers=1, r_layers=1, x_layers=1,
                  num_layers=2, text_init=None, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_stores(root, train_images: int = 24, test_images: int = 8) -> tuple[str, str]:
    """Real easy-VQA images → `patches` feature stores (train, test) under ``root``."""
    from pathlib import Path

    from features.extract import extract

    root = Path(root)
    out = []
    for split, n in (("train", train_images), ("test", test_images)):
        d = root / f"feats-{split}"
        extract(f"easy-vqa:{split}", d, "patches", limit=n, part=(0, 1), device="cpu", progress=False,
                num_workers=0)
        out.append(str(d))
    return out[0], out[1]


def write_pretrain_config(path, stores: tuple[str, str], preset: str = "lxmert-mini", train: dict | None = None,
                          objectives: dict | None = None, train_limit: int = 160, eval_limit: int = 32,
                          model: dict | None = None) -> str:
    """A tiny pretraining run config (YAML) on the stores of :func:`make_stores`."""
    import yaml

    cfg = {
        "preset": preset,
        "model": {**TINY_MODEL, **(model or {})},
        "train": {"batch_size": 8, "max_steps": 6, "lr": 1e-3, "log_every": 1, "save_every": 2,
                  "precision": "fp32", "warmup_ratio": 0.0, **(train or {})},
        "data": {"texts": "easy-vqa", "features": stores[0], "eval_features": stores[1], "eval_texts": "easy-vqa",
                 "train_limit": train_limit, "eval_limit": eval_limit},
    }
    if objectives:
        cfg["objectives"] = objectives
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


class OneRegionStore:
    """A stand-in feature store for tests of text pairing and answer targets: every image id has one 4-d region (those
    paths never look at features)."""

    manifest: dict = {}
    feature_dim = 4

    def __contains__(self, image_id: object) -> bool:
        return True

    def __getitem__(self, image_id: str) -> dict:
        import numpy as np

        return {"feats": np.ones((1, 4), np.float32), "boxes": np.array([[0, 0, 1, 1]], np.float32), "meta": {}}
