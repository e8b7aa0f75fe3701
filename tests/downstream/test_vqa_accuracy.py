"""The official VQA accuracy, answer normalisation, the answer table and soft scores, on hand-worked cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from downstream.vqa import (
    AnswerVocab,
    VQAExample,
    exact_match_accuracy,
    normalize_answer,
    soft_accuracy,
    soft_scores,
    vqa_accuracy,
)
from vlm.errors import DataError


def ann(qid, answers, answer_type="other", question_type=None):
    row = {"question_id": qid, "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                           for i, a in enumerate(answers)], "answer_type": answer_type}
    if question_type is not None:
        row["question_type"] = question_type
    return row


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("none", "0"), ("ten", "10"),
    ("a dog", "dog"), ("The Dog", "dog"), ("an apple", "apple"),
    ("yes.", "yes"), ("Yes!", "yes"), ("no?", "no"),
    ("dont", "don't"), ("isnt", "isn't"), ("whats up", "what's up"),
    ("Im", "im"),  # lower-cased before the lookup: the table's "Im" key never matches
    ("1,000", "1000"), ("3.5", "3.5"), ("3.", "3"),
    ("t-shirt", "t shirt"), ("black , white", "black white"), ("left/right", "left right"),
    ("  red\n", "red"), ("red\tcar", "red car"),
])
def test_normalize_answer_follows_the_official_rules(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("matching, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out_average_over_ten_humans(matching, expected):
    # With m of 10 humans matching: the m left-out matching answers leave m-1 matches, the 10-m others leave m, so
    # acc = (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10: 1 → 9/3/10 = 0.3, 2 → (2/3 + 8*2/3)/10 = 0.6,
    # 3 → (3*2/3 + 7)/10 = 0.9, 4 → (4 + 6)/10 = 1.
    answers = ["cat"] * matching + ["dog"] * (10 - matching)
    result = vqa_accuracy({1: "cat"}, [ann(1, answers)])
    assert result["overall"] == pytest.approx(100 * expected)
    assert result["n"] == 1


def test_vqa_accuracy_normalises_predictions_before_matching():
    anns = [ann(1, ["2"] * 3 + ["3"] * 7, "number"),        # "Two" → "2": 3 humans
            ann(2, ["dog"] * 10),                           # "a dog" → "dog": all 10
            ann(3, ["yes"] * 1 + ["no"] * 9, "yes/no"),     # "yes." → "yes": 1 human
            ann(4, ["don't"] * 2 + ["no"] * 8)]             # "dont" → "don't": 2 humans
    preds = {1: "Two", 2: "a dog", 3: "yes.", 4: "dont"}
    result = vqa_accuracy(preds, anns)
    assert result["overall"] == pytest.approx(100 * (0.9 + 1.0 + 0.3 + 0.6) / 4)
    assert result["per_answer_type"] == pytest.approx({"number": 90.0, "other": 80.0, "yes/no": 30.0})
    assert "per_question_type" not in result


def test_vqa_accuracy_punctuates_human_answers_only_when_they_differ():
    # Humans disagree: their answers go through the punctuation step, so "yes." matches a predicted "yes".
    assert vqa_accuracy({1: "yes"}, [ann(1, ["yes."] * 3 + ["no"] * 7)])["overall"] == pytest.approx(90.0)
    # Humans agree: the official code compares their answers untouched, so "Yes" never equals a normalised prediction.
    assert vqa_accuracy({1: "Yes"}, [ann(1, ["Yes"] * 10)])["overall"] == 0.0


def test_vqa_accuracy_per_answer_and_question_type():
    anns = [ann(1, ["yes"] * 10, "yes/no", "is the"), ann(2, ["no"] * 10, "yes/no", "is the"),
            ann(3, ["2"] * 10, "number", "how many"), ann(4, ["red"] * 1 + ["blue"] * 9, "other", "what color is")]
    result = vqa_accuracy({1: "yes", 2: "yes", 3: "two", "4": "red"}, anns)  # ids compare as strings
    assert result["overall"] == pytest.approx(100 * (1 + 0 + 1 + 0.3) / 4)
    assert result["per_answer_type"] == pytest.approx({"yes/no": 50.0, "number": 100.0, "other": 30.0})
    assert result["per_question_type"] == pytest.approx({"is the": 50.0, "how many": 100.0, "what color is": 30.0})
    assert result["n"] == 4 and result["n_ignored_predictions"] == 0


def test_vqa_accuracy_missing_prediction_names_the_question():
    with pytest.raises(DataError, match=r"annotations\[1\].*question_id 7"):
        vqa_accuracy({5: "yes"}, [ann(5, ["yes"] * 10), ann(7, ["no"] * 10)])


def test_vqa_accuracy_counts_predictions_without_annotation():
    result = vqa_accuracy({5: "yes", 6: "no", 8: "no"}, [ann(5, ["yes"] * 10)])
    assert result["n"] == 1 and result["n_ignored_predictions"] == 2


def test_exact_match_accuracy_single_answer():
    examples = [VQAExample(0, "0", "what shape is in the image?", ["circle"], "shape", "shape"),
                VQAExample(1, "0", "is there a red shape?", ["yes"], "yes/no", "yes/no"),
                VQAExample(2, "1", "what color is the shape?", ["teal"], "colour", "colour")]
    result = exact_match_accuracy({0: "circle", 1: "Yes.", 2: "blue"}, examples)
    assert result["overall"] == pytest.approx(200 / 3)
    assert result["per_answer_type"] == {"shape": 100.0, "yes/no": 100.0, "colour": 0.0}
    assert exact_match_accuracy({"a": "x", "b": "y"}, {"a": "x", "b": "z"})["overall"] == 50.0
    with pytest.raises(DataError, match="question_id 'b'"):
        exact_match_accuracy({"a": "x"}, {"a": "x", "b": "z"})


def test_soft_accuracy_scores_the_label():
    examples = [VQAExample(1, "i", "q", [], label={"2": 0.3, "3": 1.0}),
                VQAExample(2, "i", "q", [], label={"no": 1.0, "yes": 0.6})]
    assert soft_accuracy({1: "2", 2: "maybe"}, examples)["overall"] == pytest.approx(15.0)


def test_soft_scores_lxmert_and_official_rules_count_unknown_answers():
    vocab = AnswerVocab(["yes", "no", "2"])
    answers = ["yes"] * 4 + ["no"] + ["maybe"] * 2 + ["2"] * 3
    scores, unknown = soft_scores(answers, vocab, rule="lxmert")
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, [1.0, 0.3, 0.9], rtol=1e-6)
    assert unknown == 2
    scores, unknown = soft_scores(answers, vocab, rule="official")
    np.testing.assert_allclose(scores, [1.0, 1 / 3, 1.0], rtol=1e-6)
    assert unknown == 2
    scores, unknown = soft_scores(["Two", "2", "yes"], vocab, normalize=True)
    np.testing.assert_allclose(scores, [0.3, 0.0, 0.6], rtol=1e-6)
    with pytest.raises(ValueError, match="lxmert"):
        soft_scores(answers, vocab, rule="bogus")


def test_answer_vocab_min_count_order_and_round_trip(tmp_path):
    vocab = AnswerVocab.build(["b", "a", "c", "a", "b", "a", "d", "d"], min_count=2)
    assert vocab.answers == ["a", "b", "d"]  # most frequent first, ties alphabetical; "c" (1 time) dropped
    assert len(vocab) == 3 and vocab.encode("b") == 1 and vocab.encode("c") is None and "a" in vocab
    assert vocab.stats["dropped_answers"] == 1 and vocab.stats["occurrences_kept"] == 7
    vocab.save(tmp_path / "answers.json")
    again = AnswerVocab.load(tmp_path / "answers.json")
    assert again.answers == vocab.answers and again.min_count == 2
    (tmp_path / "label2ans.json").write_text(json.dumps(["yes", "no"]))
    assert AnswerVocab.load(tmp_path / "label2ans.json").index == {"yes": 0, "no": 1}
    (tmp_path / "ans2label.json").write_text(json.dumps({"no": 1, "yes": 0}))
    assert AnswerVocab.load(tmp_path / "ans2label.json").answers == ["yes", "no"]
    (tmp_path / "bad.json").write_text(json.dumps({"no": 1, "yes": 5}))
    with pytest.raises(DataError, match="bad.json"):
        AnswerVocab.load(tmp_path / "bad.json")
