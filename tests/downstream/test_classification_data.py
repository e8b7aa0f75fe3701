"""Classification readers (plain JSONL, Hateful Memes layout) and metrics checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from downstream.classification import accuracy, classification_metrics, macro_f1, roc_auc
from vlm.data.classification import HATEFUL_MEMES_CLASSES, ClassList, read_hateful_memes, read_jsonl
from vlm.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def test_read_hateful_memes_layout():
    examples = read_hateful_memes(FIXTURES / "hateful_memes.jsonl")
    assert len(examples) == 6  # the blank line is not a row
    assert examples[0].example_id == "42953" and examples[0].image_id == "42953"
    assert examples[0].text == "a made-up caption for row one"
    assert [e.label for e in examples] == [1, 0, 1, 1, 0, 0]
    test = read_hateful_memes(FIXTURES / "hateful_memes_test.jsonl")
    assert [e.label for e in test] == [None, None] and test[1].image_id == "37405"


def test_read_jsonl_with_string_labels():
    classes = ClassList(["bird", "cat", "dog"])
    examples = read_jsonl(FIXTURES / "captions.jsonl", classes)
    assert [e.label for e in examples] == [1, 2, 0, 2, 1]
    assert examples[1].image_id == "73" and examples[1].example_id == "2"  # no "id": the line number
    assert examples[3].example_id == "x4"
    inferred = read_jsonl(FIXTURES / "captions.jsonl")  # classes inferred, alphabetical
    assert [e.label for e in inferred] == [e.label for e in examples]


def test_hateful_memes_metrics_by_hand():
    labels = np.array([e.label for e in read_hateful_memes(FIXTURES / "hateful_memes.jsonl")])  # 1 0 1 1 0 0
    p_hateful = np.array([0.9, 0.4, 0.35, 0.8, 0.35, 0.1])
    # Predicted at 0.5: 1 0 0 1 0 0 → 5 of 6 right. F1(1): tp 2, fp 0, fn 1 → 4/5; F1(0): tp 3, fp 1, fn 0 → 6/7.
    # AUC: positive/negative pairs ordered right: 0.9 and 0.8 beat all three negatives (6); 0.35 loses to 0.4, ties
    # 0.35 (one half) and beats 0.1 → 7.5 of 9.
    metrics = classification_metrics(labels, np.stack([1 - p_hateful, p_hateful], axis=1))
    assert metrics["accuracy"] == pytest.approx(100 * 5 / 6)
    assert metrics["macro_f1"] == pytest.approx(100 * (4 / 5 + 6 / 7) / 2)
    assert metrics["roc_auc"] == pytest.approx(100 * 7.5 / 9)
    assert metrics["n"] == 6
    assert classification_metrics(labels, p_hateful) == metrics  # a vector is the positive-class probability


def test_multiclass_metrics_by_hand():
    labels = np.array([1, 2, 0, 2, 1])
    preds = np.array([1, 2, 2, 2, 0])
    # F1 per class: 0 → 0 (no true positive); 1 → tp 1, fn 1 → 2/3; 2 → tp 2, fp 1 → 4/5.
    assert accuracy(labels, preds) == pytest.approx(60.0)
    assert macro_f1(labels, preds) == pytest.approx(100 * (0 + 2 / 3 + 4 / 5) / 3)
    # A fourth class seen on neither side counts only when asked for.
    assert macro_f1(labels, preds, num_classes=4) == pytest.approx(100 * (0 + 2 / 3 + 4 / 5) / 4)
    probs = np.eye(3)[preds]
    metrics = classification_metrics(labels, probs, groups=["a", "a", "b", "b", None])
    assert "roc_auc" not in metrics and metrics["per_group"] == {"a": 100.0, "b": 50.0}


def test_roc_auc_ties_and_single_class():
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(50.0)
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(100.0)
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.0)
    with pytest.raises(DataError, match="needs both classes"):
        roc_auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))
    assert classification_metrics(np.array([1, 1]), np.array([0.2, 0.9]))["roc_auc"] is None


# -- bad input ------------------------------------------------------------------------------------------------------


def test_label_outside_the_class_list_names_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"captions\.jsonl: line 3: field 'label': 'bird' is not one of the classes"):
        read_jsonl(FIXTURES / "captions.jsonl", ["cat", "dog"])
    path = tmp_path / "hm.jsonl"
    path.write_text(json.dumps({"id": 1, "img": "img/1.png", "text": "t", "label": 2}) + "\n")
    with pytest.raises(DataError, match=r"hm\.jsonl: line 1: field 'label': 2 is not one of the classes \['0', '1'\]"):
        read_hateful_memes(path)


def test_hateful_memes_row_without_image_names_file_and_line(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "hateful_memes.jsonl").read_text().splitlines() if line]
    del rows[2]["img"]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl: line 3: missing field 'img'"):
        read_hateful_memes(path)


def test_jsonl_empty_text_and_bad_json_name_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"image_id": "1", "text": "ok", "label": 0}\n{"image_id": "2", "text": " ", "label": 1}\n')
    with pytest.raises(DataError, match=r"data\.jsonl: line 2: field 'text': the text is empty"):
        read_jsonl(path)
    path.write_text('{"image_id": "1", "text": "ok", "label": 0}\n{"image_id": "2", "text": \n')
    with pytest.raises(DataError, match=r"data\.jsonl: line 2: not valid JSON"):
        read_jsonl(path)


def test_class_list_round_trip(tmp_path):
    HATEFUL_MEMES_CLASSES.save(tmp_path / "classes.json")
    assert ClassList.load(tmp_path / "classes.json") == HATEFUL_MEMES_CLASSES
    assert HATEFUL_MEMES_CLASSES.encode(1) == HATEFUL_MEMES_CLASSES.encode("1") == 1
