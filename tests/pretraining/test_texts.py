"""Pretraining text sources: the built-in easy-VQA captions agree with the images' own answers; sources join by "+"."""

from __future__ import annotations

from collections import defaultdict

import pytest

from pretraining.data import read_texts
from vlm.data.easy_vqa import CAPTION_TEMPLATES, EASY_VQA_COLOURS, EASY_VQA_SHAPES, is_builtin, read_easy_vqa
from vlm.errors import DataError


def test_easy_vqa_captions_name_each_images_own_colour_and_shape():
    captions = read_texts("easy-vqa-captions", "test")
    by_image = defaultdict(list)
    for c in captions:
        assert c.answers is None  # captions are not questions: no QA target
        by_image[c.image_id].append(c.text)
    assert all(len(texts) == len(CAPTION_TEMPLATES) for texts in by_image.values())
    # The direct questions of easy-VQA say the truth: every caption must name the answered colour and shape.
    checked = 0
    for q in read_easy_vqa("test"):
        if q.image_id not in by_image or q.question not in ("what color is the shape?", "what shape is in the image?"):
            continue
        answer = q.answers[0]
        assert answer in (EASY_VQA_COLOURS if "color" in q.question else EASY_VQA_SHAPES)
        for text in by_image[q.image_id]:
            words = text.split()
            assert answer in words, (q.image_id, text, answer)
            others = set(EASY_VQA_COLOURS if "color" in q.question else EASY_VQA_SHAPES) - {answer}
            assert not others & set(words), (q.image_id, text)
        checked += 1
    assert checked > 300
    # 1,000 test images; the ones whose colour or shape no answer tells are left out (112 on test), not guessed.
    assert 850 < len(by_image) < 1000


def test_sources_join_with_plus_in_order():
    questions = read_texts("easy-vqa", "test")
    joined = read_texts("easy-vqa+easy-vqa-captions", "test")
    assert joined[:len(questions)] == questions
    assert len(joined) == len(questions) + len(read_texts("easy-vqa-captions", "test"))
    assert is_builtin("easy-vqa+easy-vqa-captions") and is_builtin("easy-vqa")
    assert not is_builtin("easy-vqa+captions.jsonl")


def test_unknown_source_in_a_join_is_named(tmp_path):
    with pytest.raises(DataError, match=r"notes\.txt: unknown text format"):
        read_texts(f"easy-vqa+{tmp_path / 'notes.txt'}", "test")


def test_a_mismatched_caption_is_another_images_caption(easy_vqa_stores):
    """Questions and captions mixed: a caption is swapped only for a caption (of a different colour/shape), a
    question only for a question, so half the caption pairs the matching objective sees are really false."""
    import numpy as np
    import torch

    import vlm
    from features.store import FeatureStore
    from pretraining.data import PretrainData
    from pretraining.masking import IGNORE, MaskingConfig

    store = FeatureStore(easy_vqa_stores[0])
    texts = [t for t in read_texts("easy-vqa+easy-vqa-captions", "train") if t.image_id in set(store.ids())]
    tok = vlm.load_tokenizer()
    # masked LM scored on mismatched pairs too, so that every row's text can be read back from its labels
    data = PretrainData(texts, store, tok, ["yes", "no"], MaskingConfig(mlm_mismatched=True), seed=5)
    captions = {tuple(tok(t.text)["input_ids"]): t.image_id for t in texts if t.answers is None}
    own = {t.image_id: {x.text for x in texts if x.image_id == t.image_id and x.answers is None} for t in texts}
    kinds = {"caption": [0, 0], "question": [0, 0]}
    for epoch in range(4):
        idx = np.arange(len(data))
        b = data.batch(idx, epoch)
        for r in range(len(idx)):
            ids = torch.where(b.mlm_labels[r] != IGNORE, b.mlm_labels[r], b.input_ids[r])
            ids = tuple(ids[b.attention_mask[r] == 1].tolist())
            kind = "question" if texts[r].answers is not None else "caption"
            assert (ids in captions) == (kind == "caption"), "a text was swapped for one of the other kind"
            kinds[kind][0] += 1
            if not b.matched[r]:
                kinds[kind][1] += 1
                if kind == "caption":
                    assert tok.decode(ids[1:-1]) not in own[texts[r].image_id]
    for kind, (n, mismatched) in kinds.items():
        assert n > 100 and abs(mismatched / n - 0.5) < 0.1, (kind, n, mismatched)
