"""The official VQA accuracy (GT-Vision-Lab/VQA master, commit a013f00), exact match, LXMERT's soft score, answer
normalisation, the answer table and soft targets, on hand-worked cases. Per-question cases of the official rule, branch
by branch, are in test_vqa_metric_official.py."""

from __future__ import annotations

import json

import pytest

from downstream.vqa import exact_match_accuracy, official_round, soft_accuracy, vqa_accuracy, vqa_question_accuracy
from vlm.data.vqa import AnswerVocab, VQAExample, answer_scores, normalize_answer
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
    ("1.\u0663", "1\u0663"),  # Python 2's \d (the official tool's) is [0-9]: the Arabic-Indic 3 does not keep the period
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


def test_vqa_accuracy_normalises_the_prediction_only_when_the_humans_differ():
    anns = [ann(1, ["2"] * 3 + ["3"] * 7, "number"),        # humans differ: "Two" → "2", 3 humans
            ann(2, ["dog"] * 10),                           # all agree: "a dog" is compared raw, 0 humans
            ann(3, ["yes"] * 1 + ["no"] * 9, "yes/no"),     # humans differ: "yes." → "yes", 1 human
            ann(4, ["don't"] * 2 + ["no"] * 8)]             # humans differ: "dont" → "don't", 2 humans
    preds = {1: "Two", 2: "a dog", 3: "yes.", 4: "dont"}
    result = vqa_accuracy(preds, anns)
    assert result["overall"] == pytest.approx(100 * (0.9 + 0.0 + 0.3 + 0.6) / 4)
    assert result["per_answer_type"] == pytest.approx({"number": 90.0, "other": 30.0, "yes/no": 30.0})
    assert "per_question_type" not in result


def test_vqa_accuracy_normalises_both_sides_when_the_humans_differ_and_neither_when_they_agree():
    # The two cases that tell master (a013f00) from the older rule (prediction always normalised, humans only
    # punctuation-processed), which gave 0 for both.
    assert vqa_accuracy({1: "Yes"}, [ann(1, ["Yes"] * 10)])["overall"] == 100.0  # all agree: raw "Yes" == "Yes"
    assert vqa_accuracy({1: "2"}, [ann(1, ["Two"] * 3 + ["three"] * 7)])["overall"] == 90.0  # "Two" → "2" on humans
    # Humans disagree: punctuation on the humans too, so "yes." matches a predicted "yes".
    assert vqa_accuracy({1: "yes"}, [ann(1, ["yes."] * 3 + ["no"] * 7)])["overall"] == 90.0
    # Ten identical answers that differ from the prediction only by case, punctuation, number word, article,
    # contraction or digit comma: nothing is normalised, so each scores 0.
    for pred, human in [("yes", "Yes"), ("yes", "yes."), ("2", "two"), ("dog", "the dog"), ("don't", "dont"),
                        ("1000", "1,000"), ("black white", "black - white"), ("3", "3.")]:
        assert vqa_accuracy({1: pred}, [ann(1, [human] * 10)])["overall"] == 0.0, (pred, human)
        # One dissenting human switches the normalisation on: the nine now match.
        assert vqa_accuracy({1: pred}, [ann(1, [human] * 9 + ["other"])])["overall"] == 100.0, (pred, human)


def test_vqa_accuracy_per_type_means_are_over_per_question_scores():
    # 3 of 10 say "cat", listed first: per-question 0.9. The last human's own credit is 1 (a "dog" left out leaves
    # 3 cats); the per-type table must average the question's 0.9, not that last credit (an old bug of the script).
    result = vqa_accuracy({1: "cat", 2: "dog"}, [ann(1, ["cat"] * 3 + ["dog"] * 7, "other", "what is"),
                                                 ann(2, ["dog"] * 10, "other", "what is")])
    assert result["per_answer_type"] == {"other": 95.0}  # 100 * (0.9 + 1.0) / 2
    assert result["per_question_type"] == {"what is": 95.0}
    assert result["overall"] == 95.0


def test_vqa_accuracy_is_unrounded_and_official_round_rounds_like_python_2():
    # 1 right (1.0) and 31 wrong (0.0) of 32: 100 * 1 / 32 = 3.125 exactly. The official tool prints
    # round(3.125, 2) under Python 2: halves go away from zero, 3.13; Python 3's round() would say 3.12.
    anns = [ann(i, ["yes"] * 10, "yes/no") for i in range(32)]
    result = vqa_accuracy({i: "yes" if i == 0 else "no" for i in range(32)}, anns)
    assert result["overall"] == 3.125 and result["per_answer_type"] == {"yes/no": 3.125}
    assert official_round(result["overall"]) == 3.13 and round(3.125, 2) == 3.12
    assert official_round(12.125) == 12.13  # exactly representable half: away from zero
    assert official_round(2.675) == 2.67  # the float is 2.67499999...: rounds down in both Pythons
    assert official_round(100 * 1.9 / 3) == 63.33
    assert official_round(0.0) == 0.0 and official_round(100.0) == 100.0


def test_vqa_accuracy_with_one_human_answer_is_zero():
    # The official leave-one-out leaves no other human to agree with: single-answer data needs exact match.
    assert vqa_accuracy({1: "yes"}, [ann(1, ["yes"])])["overall"] == 0.0
    assert vqa_question_accuracy("circle", ["circle"]) == 0.0


def test_vqa_accuracy_per_answer_and_question_type():
    anns = [ann(1, ["yes"] * 10, "yes/no", "is the"), ann(2, ["no"] * 10, "yes/no", "is the"),
            ann(3, ["2"] * 10, "number", "how many"), ann(4, ["red"] * 1 + ["blue"] * 9, "other", "what color is")]
    result = vqa_accuracy({1: "yes", 2: "yes", 3: "2", "4": "red"}, anns)  # ids compare as strings
    assert result["overall"] == pytest.approx(100 * (1 + 0 + 1 + 0.3) / 4)
    assert result["per_answer_type"] == pytest.approx({"yes/no": 50.0, "number": 100.0, "other": 30.0})
    assert result["per_question_type"] == pytest.approx({"is the": 50.0, "how many": 100.0, "what color is": 30.0})
    # Ten identical "2": a predicted "two" is compared raw and scores 0.
    assert vqa_accuracy({3: "two"}, [anns[2]])["overall"] == 0.0
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


def test_exact_match_normalises_both_sides_not_the_official_way():
    # One known answer: both sides get the full normalisation, whichever side carries the formatting.
    gold = {1: "Two", 2: "yes", 3: "The Circle.", 4: "dont know"}
    preds = {1: "2", 2: "Yes!", 3: "circle", 4: "don't know"}
    assert exact_match_accuracy(preds, gold)["overall"] == 100.0
    assert exact_match_accuracy(preds, gold, normalize=False)["overall"] == 0.0  # strings as given
    assert exact_match_accuracy({1: "3"}, {1: "Two"})["overall"] == 0.0
    # The official rule on the same one-answer data would score everything 0 (nobody left after leaving one out).
    one = [{"question_id": q, "answers": [a]} for q, a in gold.items()]
    assert vqa_accuracy(preds, one)["overall"] == 0.0
    with pytest.raises(DataError, match="exactly one answer"):
        exact_match_accuracy({1: "2"}, [VQAExample(1, "i", "q", ["2", "3"])])


def test_soft_accuracy_scores_the_label():
    examples = [VQAExample(1, "i", "q", [], label={"2": 0.3, "3": 1.0}),
                VQAExample(2, "i", "q", [], label={"no": 1.0, "yes": 0.6})]
    assert soft_accuracy({1: "2", 2: "maybe"}, examples)["overall"] == pytest.approx(15.0)  # (0.3 + 0) / 2


def test_soft_accuracy_looks_the_prediction_up_as_given():
    # LXMERT's label keys are already normalised answers; LXMERT's evaluator looks the prediction up as is.
    examples = [VQAExample(1, "i", "q", [], "number", label={"2": 0.3, "3": 1.0}),
                VQAExample(2, "i", "q", [], "yes/no", label={"yes": 1.0}),
                VQAExample(3, "i", "q", [], "other", label={"t shirt": 0.9, "shirt": 0.3})]
    assert soft_accuracy({1: "3", 2: "yes", 3: "t shirt"}, examples)["per_answer_type"] == {
        "number": 100.0, "yes/no": 100.0, "other": 90.0}
    # Unnormalised predictions are not found, as in LXMERT: "three", "Yes.", "t-shirt" all score 0.
    assert soft_accuracy({1: "three", 2: "Yes.", 3: "t-shirt"}, examples)["overall"] == 0.0
    with pytest.raises(DataError, match="no 'label'"):
        soft_accuracy({1: "3"}, [VQAExample(1, "i", "q", ["3"] * 10)])


def test_answer_scores_lxmert_and_official_rules_count_unknown_answers():
    vocab = AnswerVocab(["yes", "no", "2"])
    answers = ["yes"] * 4 + ["no"] + ["maybe"] * 2 + ["2"] * 3
    scores, unknown = answer_scores(answers, vocab, rule="lxmert")  # min(1, 0.3 * count): 4 → 1, 1 → 0.3, 3 → 0.9
    assert scores == pytest.approx({0: 1.0, 1: 0.3, 2: 0.9}) and unknown == 2  # "maybe" twice is not in the table
    scores, unknown = answer_scores(answers, vocab, rule="official")  # min(1, count / 3)
    assert scores == pytest.approx({0: 1.0, 1: 1 / 3, 2: 1.0}) and unknown == 2
    scores, unknown = answer_scores(["Two", "2", "yes"], vocab)  # normalised: "2" twice (0.6), "yes" once (0.3)
    assert scores == pytest.approx({2: 0.6, 0: 0.3}) and unknown == 0
    assert answer_scores(["Two"], vocab) == ({2: 1.0}, 0)  # exactly one given answer is known: 1.0
    with pytest.raises(DataError, match="lxmert"):
        answer_scores(answers, vocab, rule="bogus")


def test_answer_vocab_min_count_order_and_round_trip(tmp_path):
    # Each question's distinct normalised answers count once: cat in q1 and q3, dog in q2 ("Dog.") and q4.
    questions = [["cat"], ["Dog."], ["cat", "cat"], ["dog"], ["bird"], ["Two", "2"], ["bird"], ["ant"]]
    vocab = AnswerVocab.from_questions(questions, min_count=2)
    assert vocab.answers == ["bird", "cat", "dog"]  # 2 questions each: ties alphabetical; "2" and "ant" dropped
    assert len(vocab) == 3 and vocab.encode("cat") == 1 and vocab.encode("2") is None and "dog" in vocab
    assert vocab.stats["dropped_answers"] == 2 and vocab.stats["occurrences_kept"] == 6
    with pytest.raises(DataError, match="answer_min_count"):
        AnswerVocab.from_questions(questions, min_count=0)
    counted = AnswerVocab.build(["b", "x", "c", "x", "b", "X.", "d", "d"], min_count=2)  # every occurrence counts
    assert counted.answers == ["x", "b", "d"]  # "X." normalises to "x": 3 times; then ties alphabetical
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
