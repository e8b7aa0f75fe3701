"""The per-question VQA accuracy against hand-checked cases of the official rule.

The reference is ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` on the master branch of GT-Vision-Lab/VQA,
commit a013f00 ("Fixed processing answers bug"). Each case below was worked out by hand from that file's rules, not
by running any code: both sides always lose newlines/tabs and outer whitespace; only when the (cleaned) human answers
are not all identical do both sides go through the punctuation step and then the digit/article step; the prediction
then earns ``min(1, matches among the other answers / 3)`` per human left out, averaged. With ten humans of whom m
match (matching answers listed first, so the float mean is exactly the decimal): m = 0, 1, 2, 3, 4+ give 0, 0.3,
0.6, 0.9, 1.
"""

from __future__ import annotations

import pytest

from downstream.vqa import vqa_accuracy, vqa_question_accuracy
from vlm.data.vqa import VQAExample
from vlm.errors import DataError

P40 = "." * 40

# (prediction, human answers (each string one human), expected score, why)
CASES = [
    # --- all ten answers identical: nothing but newline/tab/strip on either side, exact case-sensitive compare
    ("Yes", ["Yes"] * 10, 1.0, "identical humans: raw 'Yes' == raw 'Yes', 9 others match for every human"),
    ("yes", ["Yes"] * 10, 0.0, "identical humans: no lower-casing, 'yes' != 'Yes'"),
    ("Yes", ["yes"] * 10, 0.0, "identical humans: the prediction is not lower-cased either"),
    ("yes.", ["yes"] * 10, 0.0, "identical humans: no punctuation step on the prediction"),
    ("yes", ["yes."] * 10, 0.0, "identical humans: the humans keep their period"),
    ("two", ["2"] * 10, 0.0, "identical humans: no number-word mapping"),
    ("2", ["two"] * 10, 0.0, "identical humans: no number-word mapping on the humans"),
    ("dog", ["the dog"] * 10, 0.0, "identical humans: articles kept"),
    ("don't know", ["dont know"] * 10, 0.0, "identical humans: no contraction repair"),
    ("1000", ["1,000"] * 10, 0.0, "identical humans: the digit comma is kept"),
    ("t-shirt", ["t-shirt"] * 10, 1.0, "identical humans: hyphen untouched on both sides, equal"),
    ("  yes\n", ["yes"] * 10, 1.0, "the prediction is always stripped, even in the identical branch"),
    ("yes", ["yes"] * 9 + ["\tyes "], 1.0, "humans are stripped before the identical test: still identical, all match"),
    ("YES", ["yes"] * 9 + ["yes\n"], 0.0, "stripping makes them identical, so 'YES' is never lower-cased"),
    ("red car", ["red\tcar"] * 10, 1.0, "a tab becomes a space on the humans"),
    ("red car", ["red  car"] * 10, 0.0, "two spaces are not collapsed (that is the digit/article step's split)"),
    ("yes", ["yes"], 0.0, "one human: leaving it out leaves nobody to agree"),
    # --- human answers differ: punctuation, then digit/article, on every human answer and on the prediction
    ("2", ["Two"] * 3 + ["three"] * 7, 0.9, "'Two' -> '2' on the humans: 3 match"),
    ("YES", ["Yes"] * 9 + ["yes"], 1.0, "case alone makes them differ; all lower-cased: 10 match"),
    ("yes", ["Yes."] * 3 + ["no"] * 7, 0.9, "'Yes.' loses its period and is lower-cased: 3 match"),
    ("Yes?", ["yes!"] * 4 + ["no"] * 6, 1.0, "'!' and '?' become spaces, dropped by the split: 4 match"),
    ("The Dog", ["a dog"] * 2 + ["cat"] * 8, 0.6, "articles dropped on both sides: 'dog', 2 match"),
    ("the", ["a"] * 2 + ["b"] * 8, 0.6, "an article alone becomes '' on both sides: 2 match"),
    ("", ["a"] * 2 + ["b"] * 8, 0.6, "an empty prediction equals the emptied 'a' answers: 2 match"),
    ("don't know", ["dont know"] + ["no"] * 9, 0.3, "'dont' repaired to \"don't\" on the human: 1 match"),
    ("dont know", ["don't know"] + ["no"] * 9, 0.3, "'dont' repaired on the prediction: 1 match"),
    ("zero", ["none"] * 4 + ["0"] * 6, 1.0, "'none' and 'zero' both map to '0': 10 match"),
    ("0", ["none"] + ["nothing"] * 9, 0.3, "'none' maps to '0': 1 match"),
    ("10", ["ten"] * 3 + ["many"] * 7, 0.9, "'ten' maps to '10': 3 match"),
    ("2 dogs", ["two dogs"] * 3 + ["dogs"] * 7, 0.9, "number words are mapped word by word: 3 match"),
    ("i'm", ["Im"] * 2 + ["me"] * 8, 0.0, "the table's 'Im' key is never hit after lower-casing: 'im' != \"i'm\""),
    ("im", ["Im"] * 2 + ["me"] * 8, 0.6, "'Im' just becomes 'im': 2 match"),
    ("somebodyd", ["somebody'd"] * 3 + ["someone"] * 7, 0.9, "the table maps \"somebody'd\" to 'somebodyd'"),
    ("dogs", ["dog's"] * 3 + ["dog"] * 7, 0.0, "the apostrophe is not in the punctuation list: \"dog's\" stays"),
    ("12:30", ["12:30"] * 3 + ["noon"] * 7, 0.9, "the colon is not in the list: kept on both sides"),
    ("black white", ["black-white"] * 2 + ["gray"] * 8, 0.6, "a hyphen touching no space becomes a space"),
    ("blackwhite", ["black-white"] * 2 + ["gray"] * 8, 0.0, "... so it is not simply deleted"),
    ("black white", ["black - white"] * 3 + ["gray"] * 7, 0.9, "a hyphen next to a space is deleted, spaces collapse"),
    ("tshirt jeans", ["t-shirt -jeans"] + ["shirt"] * 9, 0.3, "one ' -' anywhere deletes every '-' in the text"),
    ('"stop"', ["stop"] * 3 + ["go"] * 7, 0.9, "quotes touching no space become spaces on the prediction"),
    ("1000", ["1,000"] * 3 + ["lots"] * 7, 0.9, "a comma between digits: every listed mark is deleted: '1000'"),
    ("1 000", ["1,000"] * 3 + ["lots"] * 7, 0.0, "... deleted, not turned into a space"),
    ("redblue 12", ["red/blue 1,2"] + ["red"] * 9, 0.3, "a digit comma anywhere deletes the '/' too"),
    ("red blue 12", ["red/blue 1,2"] + ["red"] * 9, 0.0, "... so the '/' does not become a space"),
    ("3.5", ["3.5"] * 2 + ["3"] * 8, 0.6, "a period before a digit is kept"),
    ("3", ["3."] * 3 + ["4"] * 7, 0.9, "a period after a digit (not before one) is deleted"),
    (".5", [".5"] * 3 + ["half"] * 7, 0.9, "a leading period before a digit is kept"),
    ("5", [".5"] * 3 + ["half"] * 7, 0.0, "... so '.5' never equals '5'"),
    ("2.5", ["2.5."] * 3 + ["3"] * 7, 0.9, "only the period not before a digit goes"),
    ("ok", ["o.k."] * 3 + ["fine"] * 7, 0.9, "periods between letters are deleted"),
    ("yes", ["yes" + P40] * 3 + ["no"] * 7, 0.0, "at most 32 periods are deleted: the humans keep 8"),
    ("yes" + P40, ["yes" + P40] * 3 + ["no"] * 7, 0.9, "... and so does the prediction: 3 match"),
    ("1\u0663", ["1.\u0663"] * 3 + ["x"] * 7, 0.9, "Python 2's \\d is ASCII: '\u0663' is no digit, the period goes"),
    ("\u0661 \u0662", ["\u0661,\u0662"] * 3 + ["x"] * 7, 0.9, "no ASCII digit comma: the comma becomes a space"),
    ("red car", ["red  car"] * 3 + ["car"] * 7, 0.9, "the digit/article split collapses the two spaces"),
    ("Red Car", ["red\ncar"] * 3 + ["car"] * 7, 0.9, "newline to space, then lower-cased: 3 match"),
    ("\tYes \n", ["yes"] * 3 + ["no"] * 7, 0.9, "prediction stripped, then lower-cased: 3 match"),
    ("yes", ["YES"] + ["yes"] * 2 + ["no"] * 7, 0.9, "'YES' is lower-cased with the others: 3 match"),
    ("yes", ["yes"] * 9 + ["no"], 1.0, "9 match: every human left out leaves at least 8"),
    ("no", ["yes"] * 9 + ["no"], 0.3, "1 match: 0 when the 'no' is left out, 1/3 for the 9 others"),
    ("maybe", ["yes"] * 5 + ["no"] * 5, 0.0, "nobody said it"),
]


def _dicts(answers, ids=True):
    return [{"answer": a, "answer_confidence": "yes", **({"answer_id": i + 1} if ids else {})}
            for i, a in enumerate(answers)]


@pytest.mark.parametrize("prediction, answers, expected, why", CASES, ids=[c[3][:60] for c in CASES])
def test_question_accuracy_matches_the_official_rule(prediction, answers, expected, why):
    assert vqa_question_accuracy(prediction, answers) == expected, why
    # The same human answers as official answer dicts (distinct answer_ids) and as a VQAExample score the same.
    assert vqa_question_accuracy(prediction, _dicts(answers)) == expected, why
    example = VQAExample(7, "img", "q?", list(answers), "other", "what is")
    result = vqa_accuracy({7: prediction}, [example])
    assert result["overall"] == 100 * expected and result["per_answer_type"] == {"other": 100 * expected}


DICT_CASES = [
    ("yes", [{"answer": "yes"} for _ in range(10)], 0.0,
     "ten equal dicts: leaving one out drops all ten, no other left to match"),
    ("cat", _dicts(["cat"] * 3 + ["dog"] * 7, ids=False), 0.7,
     "equal dicts go together: a cat left out drops all 3 cats (0); a dog drops the dogs, 3 cats remain (1)"),
    ("2", _dicts(["Two", "2", "two"] + ["three"] * 7, ids=False), 0.7,
     "normalised to '2', the first three dicts become equal and leave together, as in the case above"),
    ("cat", _dicts(["cat"] * 3 + ["dog"] * 7), 0.9, "distinct answer_ids: one human at a time, 3 match"),
    ("cat", [{"answer": "cat", "answer_confidence": "yes"}, {"answer": "cat", "answer_confidence": "maybe"}]
     + [{"answer": "dog", "answer_confidence": "yes"} for _ in range(8)],
     (1 / 3 + 1 / 3 + 2 / 3 + 2 / 3 + 2 / 3 + 2 / 3 + 2 / 3 + 2 / 3 + 2 / 3 + 2 / 3) / 10,
     "confidences differ, so each cat leaves alone (1 cat left: 1/3); each dog drops all dogs (2 cats: 2/3)"),
]


@pytest.mark.parametrize("prediction, answers, expected, why", DICT_CASES, ids=[c[3][:60] for c in DICT_CASES])
def test_leave_one_out_compares_whole_answer_dicts(prediction, answers, expected, why):
    assert vqa_question_accuracy(prediction, answers) == expected, why
    annotation = {"question_id": 1, "answers": answers, "answer_type": "other"}
    assert vqa_accuracy({1: prediction}, [annotation])["overall"] == 100 * expected


def test_the_mean_adds_the_credits_in_answer_order():
    # 3 of 10 say "cat", the third one last: credits 2/3, 2/3, 1 x 7, 2/3, added left to right as the official
    # (Python 2) sum does, which lands one bit below 0.9.
    answers = ["cat", "cat"] + ["dog"] * 7 + ["cat"]
    expected = (2 / 3 + 2 / 3 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 2 / 3) / 10
    assert vqa_question_accuracy("cat", answers) == expected
    assert expected == pytest.approx(0.9) and expected != 0.9


def test_inputs_are_not_modified():
    # The official script rewrites the annotation dicts in place; vlm leaves them as given.
    answers = _dicts(["Two"] * 3 + ["three"] * 7)
    annotation = {"question_id": 1, "answers": answers}
    before = [dict(a) for a in answers]
    assert vqa_accuracy({1: "2"}, [annotation])["overall"] == 90.0
    assert vqa_accuracy({1: "2"}, [annotation])["overall"] == 90.0
    assert answers == before


@pytest.mark.parametrize("prediction, answers", [
    ("yes", []), (3, ["3"]), ("yes", [None]), ("yes", [{"text": "yes"}]), ("yes", "yes"),
])
def test_bad_arguments_raise_data_error(prediction, answers):
    with pytest.raises(DataError):
        vqa_question_accuracy(prediction, answers)
