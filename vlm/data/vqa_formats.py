"""Readers of the published VQA layouts: each returns :class:`~vlm.data.vqa.VQAExample` lists (easy-VQA is read by
:mod:`vlm.data.easy_vqa`).

* the official VQA v2 pair (:func:`read_vqa_v2`) — ``{"questions": [{image_id, question, question_id}]}`` and, for
  splits with answers, ``{"annotations": [{question_id, image_id, answer_type, question_type, multiple_choice_answer,
  answers: [{answer, answer_confidence, answer_id}]}]}``;
* LXMERT's preprocessed json (:func:`read_lxmert_json`) — a list of ``{question_id, img_id, sent, label: {answer:
  score}}`` with optional ``answer_type`` and ``question_type`` (``label`` is absent from test files).

Malformed rows raise :class:`vlm.errors.DataError` naming the file, the row (list index) and the field.
"""

from __future__ import annotations

import math
from typing import Any

from vlm.data.vqa import PathLike, VQAExample, human_answers
from vlm.errors import DataError
from vlm.io import json_field, read_json


def _question_text(row: Any, key: str, where: str) -> str:
    text = json_field(row, key, where, str)
    if not text.strip():
        raise DataError(f"{where}: field {key!r}: the question is empty")
    return text


def _list_in(data: Any, key: str, path: PathLike) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: expected a JSON object with a list under {key!r} (the official VQA v2 layout)")
    return data[key]


def read_vqa_v2(questions_path: PathLike, annotations_path: PathLike | None = None) -> list[VQAExample]:
    """Read an official VQA v2 questions file and, for splits with answers, its annotations file.

    Every question must have exactly one annotation and every annotation a question (the two files of one split).
    Test splits have no annotations file: their examples have no answers.

    Raises:
        DataError: naming the file, the row (``questions[i]`` / ``annotations[i]``, 0-based list index) and the field.
    """
    questions = _list_in(read_json(questions_path), "questions", questions_path)
    examples: dict[str, VQAExample] = {}
    for i, row in enumerate(questions):
        where = f"{questions_path}: questions[{i}]"
        qid = json_field(row, "question_id", where, (int, str))
        if str(qid) in examples:
            raise DataError(f"{where}: question_id {qid!r} appears twice")
        examples[str(qid)] = VQAExample(question_id=qid, image_id=str(json_field(row, "image_id", where, (int, str))),
                                        question=_question_text(row, "question", where), answers=[])
    if annotations_path is None:
        return list(examples.values())
    annotations = _list_in(read_json(annotations_path), "annotations", annotations_path)
    annotated: set[str] = set()
    for i, row in enumerate(annotations):
        where = f"{annotations_path}: annotations[{i}]"
        qid = json_field(row, "question_id", where, (int, str))
        ex = examples.get(str(qid))
        if ex is None:
            raise DataError(f"{where}: question_id {qid!r} is not in {questions_path}")
        if str(qid) in annotated:
            raise DataError(f"{where}: question_id {qid!r} is annotated twice")
        annotated.add(str(qid))
        image_id = str(json_field(row, "image_id", where, (int, str)))
        if image_id != ex.image_id:
            raise DataError(f"{where}: image_id {image_id!r} differs from the question's image_id {ex.image_id!r}")
        json_field(row, "answers", where, list)
        ex.answers = human_answers(row, where)
        for key in ("answer_type", "question_type", "multiple_choice_answer"):
            if row.get(key) is not None:
                setattr(ex, key, json_field(row, key, where, str))
    missing = [ex for key, ex in examples.items() if key not in annotated]
    if missing:
        raise DataError(f"{questions_path}: question_id {missing[0].question_id!r} has no annotation in "
                        f"{annotations_path} ({len(missing)} questions without one)")
    return list(examples.values())


def _label(row: dict, where: str) -> dict[str, float] | None:
    if "label" not in row:
        return None
    label = row["label"]
    if not isinstance(label, dict):
        raise DataError(f"{where}: field 'label': expected an object of answer → score in [0, 1], got {label!r}")
    for k, v in label.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not 0 <= v <= 1:
            raise DataError(f"{where}: field 'label': the score of answer {k!r} is {v!r}; a soft score is a number "
                            "in [0, 1]")
    return {k: float(v) for k, v in label.items()}


def read_lxmert_json(path: PathLike) -> list[VQAExample]:
    """Read LXMERT's preprocessed VQA json: ``[{question_id, img_id, sent, label?, answer_type?, question_type?}]``.

    Raises:
        DataError: naming the file, the row (0-based list index) and the field.
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of questions (LXMERT's layout), got {type(data).__name__}")
    out, seen = [], set()
    for i, row in enumerate(data):
        where = f"{path}: row {i}"
        qid = json_field(row, "question_id", where, (int, str))
        if str(qid) in seen:
            raise DataError(f"{where}: question_id {qid!r} appears twice")
        seen.add(str(qid))
        ex = VQAExample(question_id=qid, image_id=str(json_field(row, "img_id", where, (int, str))),
                        question=_question_text(row, "sent", where), answers=[], label=_label(row, where))
        for key in ("answer_type", "question_type"):
            if row.get(key) is not None:
                setattr(ex, key, json_field(row, key, where, str))
        out.append(ex)
    return out

