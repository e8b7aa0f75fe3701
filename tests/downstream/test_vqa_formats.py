"""VQA readers on fixtures in the official VQA v2, LXMERT and easy-VQA layouts; results files; bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from downstream.vqa import load_results, soft_accuracy, vqa_accuracy, write_results
from vlm.data.easy_vqa import EASY_VQA_COLOURS, read_easy_vqa
from vlm.data.vqa import AnswerVocab, answer_targets
from vlm.data.vqa_formats import read_lxmert_json, read_vqa_v2
from vlm.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
QUESTIONS = FIXTURES / "vqa_v2_questions.json"
ANNOTATIONS = FIXTURES / "vqa_v2_annotations.json"


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_read_vqa_v2_official_pair():
    examples = read_vqa_v2(QUESTIONS, ANNOTATIONS)
    assert [e.question_id for e in examples] == [262148000, 262148001, 393225000]
    first = examples[0]
    assert first.image_id == "262148" and first.question == "What is the man looking through?"
    assert first.answers == ["net"] * 10 and first.answer_type == "other" and first.question_type == "what is the"
    assert first.multiple_choice_answer == "net" and first.label is None
    assert examples[2].answers.count("yes") == 2


def test_read_vqa_v2_test_split_without_annotations():
    examples = read_vqa_v2(QUESTIONS)
    assert len(examples) == 3 and all(e.answers == [] and e.answer_type is None for e in examples)


def test_vqa_accuracy_on_the_official_fixture(tmp_path):
    examples = read_vqa_v2(QUESTIONS, ANNOTATIONS)
    preds = {262148000: "Net.", 262148001: "Two", 393225000: "yes."}
    # "Net.": the ten humans all wrote "net", and the official master (a013f00) normalises neither side when the ten
    # answers are identical, so "Net." != "net" → 0 (the older rule normalised the prediction and gave 1);
    # "Two" → "2": 1 human → 0.3; "yes." → "yes": 2 humans → 0.6.
    expected = {"other": 0.0, "number": 30.0, "yes/no": 60.0}
    raw_annotations = json.loads(ANNOTATIONS.read_text())["annotations"]
    for given in (examples, raw_annotations):
        result = vqa_accuracy(preds, given)
        assert result["overall"] == pytest.approx(100 * 0.9 / 3)
        assert result["per_answer_type"] == pytest.approx(expected)
        per_question_type = {"what is the": 0.0, "how many": 30.0, "is the man": 60.0}
        assert result["per_question_type"] == pytest.approx(per_question_type)
    write_results(preds, tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())[0] == {"question_id": 262148000, "answer": "Net."}
    assert load_results(tmp_path / "results.json") == preds


def test_read_lxmert_json_layout():
    examples = read_lxmert_json(FIXTURES / "lxmert_vqa.json")
    assert len(examples) == 4
    assert examples[1].image_id == "COCO_val2014_000000262148" and examples[1].question == "How many dogs are there?"
    assert examples[1].label == {"2": 0.3, "3": 1.0} and examples[1].answer_type == "number"
    assert examples[3].label is None and examples[3].answer_type is None  # a test row
    preds = {262148000: "net", 262148001: "2", 393225000: "yes"}
    assert soft_accuracy(preds, examples[:3])["overall"] == pytest.approx(100 * (1 + 0.3 + 0.6) / 3)
    vocab = AnswerVocab(["net", "3", "no"])
    targets, unknown = answer_targets(examples[2], vocab)
    assert targets.tolist() == [0.0, 0.0, 1.0] and unknown == 1  # "yes" is not in the table: counted


def test_answer_targets_use_answers_or_label():
    vocab = AnswerVocab(["3", "2", "circle"])
    official = read_vqa_v2(QUESTIONS, ANNOTATIONS)[1]  # "2" once, "3" nine times
    targets, unknown = answer_targets(official, vocab, rule="lxmert")
    assert targets.tolist() == pytest.approx([1.0, 0.3, 0.0]) and unknown == 0
    easy = next(e for e in read_easy_vqa("test") if e.answers == ["circle"])
    assert answer_targets(easy, vocab)[0].tolist() == [0.0, 0.0, 1.0]  # its label: one answer is fully right


def test_read_easy_vqa_test_split():
    examples = read_easy_vqa("test")
    assert len(examples) == 9673
    assert [e.question_id for e in examples[:3]] == [0, 1, 2]
    assert all(isinstance(e.image_id, str) for e in examples) and examples[0].image_id == "0"
    assert {e.answer_type for e in examples} == {"yes/no", "colour", "shape"}
    assert sum(e.answer_type == "yes/no" for e in examples) == 7136  # the package README's count
    # question types split the yes/no questions by what they ask about
    kinds = {(e.question_type, e.answer_type) for e in examples}
    assert kinds == {("colour yes/no", "yes/no"), ("shape yes/no", "yes/no"), ("colour", "colour"), ("shape", "shape")}
    colour_yn = [e for e in examples if e.question_type == "colour yes/no"]
    assert len(colour_yn) == 5201 and all(any(c in e.question for c in EASY_VQA_COLOURS) for e in colour_yn)
    shape = next(e for e in examples if e.answer_type == "shape")
    assert len(shape.answers) == 1 and shape.label == {shape.answers[0]: 1.0}


# -- bad input ------------------------------------------------------------------------------------------------------


def test_vqa_v2_question_with_empty_text_names_file_and_row(tmp_path):
    data = json.loads(QUESTIONS.read_text())
    data["questions"][1]["question"] = "   "
    path = write_json(tmp_path / "q.json", data)
    with pytest.raises(DataError, match=r"q\.json: questions\[1\]: field 'question': the question is empty"):
        read_vqa_v2(path)


def test_vqa_v2_missing_key_names_file_row_and_field(tmp_path):
    data = json.loads(QUESTIONS.read_text())
    del data["questions"][2]["image_id"]
    path = write_json(tmp_path / "q.json", data)
    with pytest.raises(DataError, match=r"q\.json: questions\[2\]: missing field 'image_id'"):
        read_vqa_v2(path)
    ann = json.loads(ANNOTATIONS.read_text())
    del ann["annotations"][0]["answers"]
    path = write_json(tmp_path / "a.json", ann)
    with pytest.raises(DataError, match=r"a\.json: annotations\[0\]: missing field 'answers'"):
        read_vqa_v2(QUESTIONS, path)


def test_vqa_v2_question_without_annotation_is_an_error(tmp_path):
    ann = json.loads(ANNOTATIONS.read_text())
    ann["annotations"].pop(1)
    path = write_json(tmp_path / "a.json", ann)
    with pytest.raises(DataError, match=r"vqa_v2_questions\.json: question_id 262148001 has no annotation"):
        read_vqa_v2(QUESTIONS, path)


def test_lxmert_label_must_be_a_dict_of_floats(tmp_path):
    rows = json.loads((FIXTURES / "lxmert_vqa.json").read_text())
    rows[2]["label"] = {"yes": "1"}
    path = write_json(tmp_path / "lx.json", rows)
    with pytest.raises(DataError, match=r"lx\.json: row 2: field 'label'"):
        read_lxmert_json(path)
    rows[2]["label"] = ["yes"]
    write_json(path, rows)
    with pytest.raises(DataError, match=r"lx\.json: row 2: field 'label'"):
        read_lxmert_json(path)
    rows[2]["label"] = {"yes": 1}
    del rows[0]["sent"]
    write_json(path, rows)
    with pytest.raises(DataError, match=r"lx\.json: row 0: missing field 'sent'"):
        read_lxmert_json(path)


def test_easy_vqa_bad_rows_name_file_and_row(tmp_path):
    path = write_json(tmp_path / "questions.json", [["is there a red shape?", "yes", 0], ["", "no", 0]])
    with pytest.raises(DataError, match=r"questions\.json: row 1: field 'question'"):
        read_easy_vqa("train", questions_path=path)
    write_json(path, [["what color is the shape?", "purple", 3]])
    with pytest.raises(DataError, match=r"questions\.json: row 0: field 'answer': 'purple'"):
        read_easy_vqa("train", questions_path=path)
    with pytest.raises(DataError, match="unknown easy-VQA split 'val'"):
        read_easy_vqa("val")


def test_results_file_with_repeated_question_is_an_error(tmp_path):
    path = write_json(tmp_path / "res.json", [{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}])
    with pytest.raises(DataError, match=r"res\.json: row 1: question_id 1 appears twice"):
        load_results(path)
