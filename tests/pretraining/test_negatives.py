"""Matching negatives: the word-group swap (on easy-VQA captions and on a COCO captions fixture), matching applied to
assertions only, hard negatives that are never one of the image's own texts, per-kind accuracy, the config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vlm
from pretraining.data import PretrainData
from pretraining.masking import IGNORE, MaskingConfig
from pretraining.negatives import MatchingConfig, swap_variants
from pretraining.run import load_pretrain_config
from vlm.config import ConfigError
from vlm.data.readers import read_texts

from vlm_testing import OneRegionStore

COCO = Path(__file__).parent / "fixtures" / "coco_captions.json"
COCO_GROUPS = {"colour": ("red", "green", "white", "blue"), "animal": ("giraffe", "zebra", "dog"),
               "thing": ("vase", "table", "tree")}


def test_swap_changes_exactly_one_word_of_its_group_on_coco_captions():
    texts = read_texts(str(COCO))
    made = {t.text: swap_variants(t.text, COCO_GROUPS) for t in texts}
    vase = made["A white vase with red flowers on a wooden table."]
    assert sorted(vase) == ["colour", "thing"]
    assert len(vase["colour"]) == 2 * 3  # two colour words, three others each
    assert "A white table with red flowers on a wooden table." in vase["thing"]
    assert "A giraffe eating food from the top of the tree." in made  # lower-case words only match whole words
    assert made["Zebra reaching its head down to ground where grass is."]["animal"][0].startswith("Giraffe ")
    for original, variants in made.items():
        for group, texts_ in variants.items():
            for v in texts_:
                a, b = original.split(), v.split()
                diff = [(x, y) for x, y in zip(a, b) if x != y]
                assert len(a) == len(b) and len(diff) == 1, (original, v)
                assert diff[0][1].lower().strip(".") in COCO_GROUPS[group]




def _texts_of(batch, tok) -> list[str]:
    ids = torch.where(batch.mlm_labels != IGNORE, batch.mlm_labels, batch.input_ids)
    return [tok.decode(ids[r][batch.attention_mask[r] == 1][1:-1].tolist()) for r in range(len(ids))]


def test_assertions_only_and_hard_negatives_on_easy_vqa():
    texts = [t for t in read_texts("easy-vqa+easy-vqa-captions", "test") if int(t.image_id) < 60]
    tok = vlm.load_tokenizer()
    cfg = MatchingConfig(texts="assertions", negatives={"random": 0.2, "colour": 0.4, "shape": 0.4})
    cfg.check()
    # masked LM scored on mismatched pairs too, so that every row's text can be read back from its labels
    data = PretrainData(texts, OneRegionStore(), tok, None, MaskingConfig(mlm_mismatched=True), seed=3, matching=cfg)
    own = {}
    for t in texts:
        if t.answers is None:
            own.setdefault(t.image_id, set()).add(t.text)
    counts = np.zeros(5, dtype=int)
    for epoch in range(3):
        idx = np.arange(len(data))
        b = data.batch(idx, epoch)
        shown = _texts_of(b, tok)
        for r, i in enumerate(idx):
            t = texts[i]
            if t.answers is not None:  # a question: never mismatched, not scored
                assert b.matched[r] == IGNORE and b.match_kind[r] == 0
                continue
            kind = int(b.match_kind[r])
            counts[kind] += 1
            assert (b.matched[r] == 1) == (kind == 0)
            if kind >= 2:  # one word of the drawn group changed, and not into another true caption of the image
                a, c = t.text.split(), shown[r].split()
                diff = [(x, y) for x, y in zip(a, c) if x != y]
                assert len(a) == len(c) and len(diff) == 1
                assert diff[0][1] in cfg.word_groups[["colour", "shape"][kind - 2]]
                assert shown[r] not in own[t.image_id]
        # the same example gives the same pair whatever batch it is in
        again = data.batch(idx[::-1].copy(), epoch)
        assert torch.equal(again.matched.flip(0), b.matched) and torch.equal(again.match_kind.flip(0), b.match_kind)
    assert counts[0] > 0 and counts[1] > 0 and counts[2] > 0 and counts[3] > 0
    assert counts[2] + counts[3] > 2 * counts[1]  # 80% of the negatives are hard


def test_default_pairing_scores_every_text_with_random_negatives_only():
    texts = [t for t in read_texts("easy-vqa+easy-vqa-captions", "test") if int(t.image_id) < 40]
    data = PretrainData(texts, OneRegionStore(), vlm.load_tokenizer(), None, seed=0)
    b = data.batch(np.arange(len(data)), 0)
    assert set(b.matched.tolist()) == {0, 1} and set(b.match_kind.tolist()) == {0, 1}


def test_matching_objective_ignores_unscored_rows_and_reports_per_kind():
    from pretraining.objectives import Matching
    from vlm.models.tasks import PreTrainingOutput

    logits = torch.tensor([[0.0, 5.0], [5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    batch = vlm.Batch(input_ids=torch.ones(4, 3, dtype=torch.long), attention_mask=torch.ones(4, 3, dtype=torch.long),
                      token_type_ids=torch.zeros(4, 3, dtype=torch.long), region_feats=torch.zeros(4, 1, 4),
                      region_boxes=torch.zeros(4, 1, 4), region_mask=torch.ones(4, 1, dtype=torch.long),
                      matched=torch.tensor([1, 0, IGNORE, 1]), match_kind=torch.tensor([0, 2, 0, 0]))
    out = PreTrainingOutput(text_states=None, region_states=None, pooled=torch.zeros(4, 8), mlm_logits=None,
                            matched_logits=logits)
    m = Matching()
    assert m.count(batch) == 3
    assert m.accuracy(out, batch).tolist() == [2.0, 3.0]  # the unscored row is not counted
    by_kind = m.accuracy_by_kind(out, batch, ["positive", "random", "colour"])
    assert by_kind["positive"].tolist() == [1.0, 2.0] and by_kind["colour"].tolist() == [1.0, 1.0]
    assert by_kind["random"].tolist() == [0.0, 0.0]


def test_matching_config_loads_merges_and_refuses():
    preset = load_pretrain_config(arch="lxmert").matching  # the preset: captions, hard negatives
    assert preset.texts == "assertions" and preset.negatives == {"random": 0.25, "colour": 0.5, "shape": 0.25}
    cfg = load_pretrain_config(arch="lxmert", overrides=["matching.texts=all", "matching.negatives.colour=0.7"])
    assert cfg.matching.texts == "all" and cfg.matching.negatives == {"random": 0.25, "colour": 0.7, "shape": 0.25}
    assert cfg.matching.shares() == pytest.approx([0.25 / 1.2, 0.7 / 1.2, 0.25 / 1.2])
    for override, needle in [("matching.negatives.size=1", "'size' is neither 'random' nor a word group"),
                             ("matching.texts=questions", "matching.texts: expected one of all, assertions"),
                             ("matching.word_groups.colour=[red]", "needs two different words"),
                             ("matching.negatives.random=-1", "expected a share >= 0")]:
        with pytest.raises(ConfigError, match=needle):
            load_pretrain_config(arch="lxmert", overrides=[override])


def test_held_out_matching_is_scored_on_whole_texts():
    """`unmasked()` gives the same pairs with nothing masked; evaluate_pretraining scores matching on it and the
    masked objectives on the masked pass."""
    from pretraining.objectives import build_objectives
    from pretraining.run import evaluate_pretraining
    from pretraining.task import PretrainTask
    from vlm.engine import distributed as D

    from vlm_testing import TINY_MODEL

    texts = [t for t in read_texts("easy-vqa-captions", "test") if int(t.image_id) < 40]
    cfg = MatchingConfig(texts="assertions", negatives={"random": 0.5, "colour": 0.5})
    data = PretrainData(texts, OneRegionStore(), vlm.load_tokenizer(), None, seed=1, matching=cfg)
    clean = data.unmasked()
    idx = np.arange(len(data))
    a, b = data.batch(idx, 0), clean.batch(idx, 0)
    assert torch.equal(a.matched, b.matched) and torch.equal(a.match_kind, b.match_kind)
    assert (a.mlm_labels != IGNORE).any() and (b.mlm_labels == IGNORE).all()
    assert not (b.input_ids == vlm.load_tokenizer().mask_token_id).any()
    assert not a.region_labels["mask"].equal(b.region_labels["mask"]) and not b.region_labels["mask"].any()

    from vlm.config import model_config
    from vlm.models.tasks import VLMForPreTraining

    model = VLMForPreTraining(model_config("lxmert-mini", {**TINY_MODEL, "visual_feat_dim": 4}))
    task = PretrainTask(model.eval(), build_objectives({"mlm": 1.0, "region_feat": 1.0, "matching": 1.0}),
                        match_kinds=cfg.kinds())
    both = evaluate_pretraining(task, data, 16, D.DistInfo(), torch.device("cpu"), clean=clean)
    masked_only = evaluate_pretraining(task, data, 16, D.DistInfo(), torch.device("cpu"))
    whole_only = evaluate_pretraining(task, clean, 16, D.DistInfo(), torch.device("cpu"))
    assert both["mlm_acc"] == masked_only["mlm_acc"] and both["region_feat_loss"] == masked_only["region_feat_loss"]
    assert both["matching_acc"] == whole_only["matching_acc"]
    assert both["matching/colour_acc"] == whole_only["matching/colour_acc"]
