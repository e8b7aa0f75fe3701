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
