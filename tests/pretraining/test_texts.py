"""Pretraining text sources: the built-in easy-VQA captions agree with the images' own answers; sources join by "+";
one ``.json`` sniffing (:func:`vlm.data.readers.json_layout`) for the VQA and the text readers."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from vlm.data.builtin import is_builtin
from vlm.data.easy_vqa import CAPTION_TEMPLATES, EASY_VQA_COLOURS, EASY_VQA_SHAPES, read_easy_vqa
from vlm.data.readers import json_layout, read_texts, read_vqa
from vlm.data.texts import TextExample, read_coco_captions
from vlm.data.vqa_formats import read_lxmert_json, read_vqa_v2
from vlm.errors import DataError

VQA_FIXTURES = Path(__file__).parents[1] / "downstream" / "fixtures"
COCO = Path(__file__).parent / "fixtures" / "coco_captions.json"


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


# --------------------------------------------------------------------------------------- one .json sniffing for all


@pytest.mark.parametrize("path, layout", [(VQA_FIXTURES / "vqa_v2_questions.json", "vqa-v2"),
                                          (VQA_FIXTURES / "lxmert_vqa.json", "lxmert"),
                                          (COCO, "coco-captions")])
def test_each_json_layout_is_recognised(path, layout):
    assert json_layout(path) == layout


@pytest.mark.parametrize("content, got", [({"foo": 1}, "an object with keys ['foo']"), ([1, 2], "a list of int"),
                                          ("text", "a str")])
def test_an_unknown_json_layout_is_named_with_what_was_expected(tmp_path, content, got):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(content))
    for read in (json_layout, read_texts, lambda p: read_vqa(p, "test")):
        with pytest.raises(DataError) as e:
            read(str(path))
        message = str(e.value)
        assert message.startswith(f"{path}: not a known .json layout ({got})")
        assert "COCO captions json" in message and "VQA v2 questions json" in message and "LXMERT json list" in message


def test_a_vqa_v2_annotations_file_alone_is_named():
    with pytest.raises(DataError, match=r"vqa_v2_annotations\.json: a VQA v2 annotations file has no questions; give "
                                        r"it after its questions file"):
        json_layout(VQA_FIXTURES / "vqa_v2_annotations.json")


def test_read_vqa_refuses_coco_captions_naming_the_file():
    with pytest.raises(DataError, match=r"coco_captions\.json: a COCO captions file has no questions"):
        read_vqa(str(COCO), "test")


def test_read_texts_reads_every_json_layout_as_its_own_reader_does():
    lxmert = read_texts(str(VQA_FIXTURES / "lxmert_vqa.json"))
    expected = read_lxmert_json(VQA_FIXTURES / "lxmert_vqa.json")
    assert lxmert == [TextExample(e.image_id, e.question) for e in expected]  # same rows, same order
    assert lxmert[0] == TextExample("COCO_val2014_000000262148", "What is the man looking through?")
    questions = VQA_FIXTURES / "vqa_v2_questions.json"
    assert [(t.image_id, t.text) for t in read_texts(str(questions))] == [
        (e.image_id, e.question) for e in read_vqa_v2(questions)]
    assert read_texts(str(COCO)) == read_coco_captions(COCO)
    # sources of different layouts join by "+", each read by its own reader
    joined = read_texts(f"{COCO}+{VQA_FIXTURES / 'lxmert_vqa.json'}")
    assert joined == read_coco_captions(COCO) + lxmert


def test_read_vqa_and_read_texts_agree_on_vqa_layouts():
    pair = f"{VQA_FIXTURES / 'vqa_v2_questions.json'},{VQA_FIXTURES / 'vqa_v2_annotations.json'}"
    for spec in (pair, str(VQA_FIXTURES / "lxmert_vqa.json")):
        vqa = read_vqa(spec, "test")
        assert [(t.image_id, t.text, t.answers) for t in read_texts(spec)] == [
            (e.image_id, e.question, list(e.answers) or None) for e in vqa]
