"""Masking statistics on real easy-VQA texts through the real tokenizer and the pretraining collator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlm
from pretraining.data import PretrainData
from pretraining.masking import IGNORE, MaskingConfig, mask_regions, mask_tokens
from vlm.data.readers import read_texts


@pytest.fixture(scope="module")
def data(easy_vqa_stores):
    from features.store import FeatureStore

    texts = read_texts("easy-vqa", "train")[:240]
    return PretrainData(texts, FeatureStore(easy_vqa_stores[0]), vlm.load_tokenizer(), ["yes", "no"], seed=3)


def test_token_masking_rates_and_never_special_or_padding(data):
    tok = vlm.load_tokenizer()
    special = torch.tensor(sorted(tok.all_special_ids))
    selected = maskable = masked = randomised = kept = 0
    mismatched_words = mismatched_masks = 0
    for epoch in range(12):
        for start in range(0, len(data), 48):
            b = data.batch(np.arange(start, min(start + 48, len(data))), epoch)
            sel = b.mlm_labels != IGNORE
            # the originals of selected positions are real words, never [CLS]/[SEP]/[PAD]
            assert not torch.isin(b.mlm_labels[sel], special).any()
            assert (b.attention_mask[sel] == 1).all()
            assert (b.input_ids[b.attention_mask == 0] == tok.pad_token_id).all()  # padding untouched
            orig = b.mlm_labels[sel]
            now = b.input_ids[sel]
            selected += int(sel.sum())
            masked += int((now == tok.mask_token_id).sum())
            kept += int((now == orig).sum())
            randomised += int(((now != orig) & (now != tok.mask_token_id)).sum())
            is_special = torch.isin(b.input_ids, special) & (b.input_ids != tok.mask_token_id)
            words = (b.attention_mask == 1) & ~is_special  # [MASK] positions count as maskable
            true_pair = (b.matched != 0)[:, None]
            maskable += int((words & true_pair).sum())
            # mismatched texts are masked alike (or an unmasked text would tell the pair) but carry no MLM target
            assert not sel[b.matched == 0].any()
            mismatched_words += int((words & ~true_pair).sum())
            mismatched_masks += int(((b.input_ids == tok.mask_token_id) & ~true_pair).sum())
    assert abs(selected / maskable - 0.15) < 0.01
    assert abs(mismatched_masks / mismatched_words - 0.15 * 0.8) < 0.015
    assert abs(masked / selected - 0.8) < 0.02
    # a random replacement can draw the original word (rarely): count it among "kept"
    assert abs(randomised / selected - 0.1) < 0.02
    assert abs(kept / selected - 0.1) < 0.02


def test_region_masking_rates_and_padding_never_selected():
    cfg = MaskingConfig()
    g = torch.Generator().manual_seed(0)
    b, k, d = 64, 36, 8
    feats = torch.randn(b, k, d, generator=g) + 5.0  # no zero rows by chance
    region_mask = torch.ones(b, k, dtype=torch.long)
    region_mask[:, 30:] = 0
    donors = torch.randn(b, k, d, generator=g) - 5.0
    sel_n = zero = swap = keep = 0
    for _ in range(40):
        u = torch.rand(b, k, 2, generator=g)
        out, sel = mask_regions(feats, region_mask, u, donors, cfg)
        assert not sel[:, 30:].any()
        assert torch.equal(out[~sel], feats[~sel])  # unselected regions untouched
        s = out[sel]
        sel_n += int(sel.sum())
        zero += int((s == 0).all(-1).sum())
        swap += int((s == donors[sel]).all(-1).sum())
        keep += int((s == feats[sel]).all(-1).sum())
    real = 40 * b * 30
    assert abs(sel_n / real - 0.15) < 0.01
    assert abs(zero / sel_n - 0.8) < 0.02 and abs(swap / sel_n - 0.1) < 0.02 and abs(keep / sel_n - 0.1) < 0.02


def test_mask_tokens_is_a_pure_function_of_its_uniforms():
    ids = torch.arange(10, 30).view(2, 10)
    u = torch.rand(2, 10, 2)
    a = mask_tokens(ids, torch.ones_like(ids, dtype=torch.bool), u, ids.flip(1), 103, MaskingConfig())
    b = mask_tokens(ids, torch.ones_like(ids, dtype=torch.bool), u, ids.flip(1), 103, MaskingConfig())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mismatched_pairs_come_from_another_image_and_carry_no_answer(easy_vqa_stores):
    from features.store import FeatureStore

    tok = vlm.load_tokenizer()
    texts = read_texts("easy-vqa", "train")[:240]
    # masked LM scored on mismatched pairs too, so that every row's text can be read back from its labels
    data = PretrainData(texts, FeatureStore(easy_vqa_stores[0]), tok, ["yes", "no"], MaskingConfig(mlm_mismatched=True),
                        seed=3)
    image_of_text = {}
    for e in texts:
        image_of_text.setdefault(tuple(tok(e.text)["input_ids"]), set()).add(e.image_id)
    n_pairs = n_mismatched = 0
    for epoch in range(6):
        idx = np.arange(len(data))
        b = data.batch(idx, epoch)
        orig_ids = data.batch(idx, epoch)  # deterministic: the same batch again
        assert torch.equal(b.input_ids, orig_ids.input_ids)
        for r in range(len(idx)):
            if b.matched[r]:
                continue
            n_mismatched += 1
            # recover the unmasked text: replace masked positions by their labels
            ids = torch.where(b.mlm_labels[r] != IGNORE, b.mlm_labels[r], b.input_ids[r])
            ids = tuple(ids[b.attention_mask[r] == 1].tolist())
            own_image = texts[idx[r]].image_id
            assert own_image not in image_of_text.get(ids, {own_image}), "a mismatched text is about the same image"
            assert not b.has_answer[r]
        n_pairs += len(idx)
    assert abs(n_mismatched / n_pairs - 0.5) < 0.04


def test_batches_do_not_depend_on_batch_composition(data):
    """Example i is masked and paired the same way alone or inside a bigger batch (resume and DDP rely on it)."""
    big = data.batch(np.array([5, 9, 17, 30]), 2)
    alone = data.batch(np.array([17]), 2)
    t = int(alone.attention_mask.sum())
    assert torch.equal(big.input_ids[2, :t], alone.input_ids[0, :t])
    assert torch.equal(big.mlm_labels[2, :t], alone.mlm_labels[0, :t])
    assert torch.equal(big.region_feats[2], alone.region_feats[0])
    assert big.matched[2] == alone.matched[0]


def test_texts_without_features_are_counted_and_reported(easy_vqa_stores, caplog):
    from features.store import FeatureStore

    texts = read_texts("easy-vqa", "train")[:600]  # covers more images than the store holds
    d = PretrainData(texts, FeatureStore(easy_vqa_stores[0]), vlm.load_tokenizer(), [])
    assert d.report.texts == 600
    assert d.report.missing_image > 0 and d.report.kept + d.report.missing_image == 600
    assert any("not in the feature store" in r.getMessage() for r in caplog.records)
