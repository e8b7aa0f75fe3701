"""Visual question answering data and metrics: the official VQA v2 accuracy, the answer table, soft scores, readers.

The metric is the one of Antol et al. 2015 / Goyal et al. 2017 as computed by the official ``vqaEval.py``
(github.com/GT-Vision-Lab/VQA, Python 3 master): a predicted answer scores ``min(1, #humans that gave it / 3)``,
averaged over the ten leave-one-human-out subsets of the ten human answers. Soft training targets follow the
bottom-up-attention recipe (Anderson et al. 2018) that LXMERT (Tan & Bansal 2019) uses: ``min(1, 0.3 * count)``.

Readers return :class:`VQAExample` lists for three layouts:

* the official VQA v2 pair — ``{"questions": [{image_id, question, question_id}]}`` and, for splits with answers,
  ``{"annotations": [{question_id, image_id, answer_type, question_type, multiple_choice_answer,
  answers: [{answer, answer_confidence, answer_id}]}]}``;
* LXMERT's preprocessed json — a list of ``{question_id, img_id, sent, label: {answer: score}}`` with optional
  ``answer_type`` and ``question_type`` (``label`` is absent from test files);
* easy-VQA, from the ``easy-vqa`` package (one answer per question).

Malformed rows raise :class:`vlm.errors.DataError` naming the file, the row (list index) and the field.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from downstream.references import ARTICLES, CONTRACTIONS, NUMBER_WORDS, PUNCTUATION
from vlm.errors import DataError
from vlm.io import read_json, write_text

__all__ = [
    "EASY_VQA_COLOURS",
    "EASY_VQA_SHAPES",
    "EASY_VQA_SPLITS",
    "SOFT_SCORE_RULES",
    "AnswerVocab",
    "VQAExample",
    "answer_targets",
    "easy_vqa_question_type",
    "easy_vqa_questions_path",
    "exact_match_accuracy",
    "label_scores",
    "load_results",
    "normalize_answer",
    "read_easy_vqa",
    "read_lxmert_json",
    "read_vqa_v2",
    "soft_accuracy",
    "soft_scores",
    "vqa_accuracy",
    "write_results",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
QuestionId = int | str


@dataclass
class VQAExample:
    """One question about one image.

    Attributes:
        question_id: the dataset's id (an int in VQA v2 and LXMERT files; the row index for easy-VQA).
        image_id: the image's id as a string, the key into the feature store.
        question: the question text.
        answers: the human answers (ten in VQA v2, one in easy-VQA, none in LXMERT files or test splits).
        answer_type: ``yes/no``, ``number``, ``other`` (VQA v2); ``yes/no``, ``colour``, ``shape`` (easy-VQA).
        question_type: VQA v2's question prefix (``what color is the``); easy-VQA: same as ``answer_type``.
        label: soft scores ``{answer: score}`` when the file gives them (LXMERT; easy-VQA: ``{answer: 1.0}``).
        multiple_choice_answer: VQA v2's most common human answer, when given.
    """

    question_id: QuestionId
    image_id: str
    question: str
    answers: list[str]
    answer_type: str | None = None
    question_type: str | None = None
    label: dict[str, float] | None = None
    multiple_choice_answer: str | None = None


# --------------------------------------------------------------------------------------------------------------------
# Normalisation, exactly as vqaEval.py
# --------------------------------------------------------------------------------------------------------------------

_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a negative *lookahead* for the text "<=digit"
# (a typo for a lookbehind) and can never fail in front of a period, so the rule really is "delete a period that is not
# followed by a digit": "3.5" keeps its period, "3." and "dog." lose theirs.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official call is periodStrip.sub("", text, re.UNICODE): re.UNICODE lands in sub's positional *count* argument
# (value 32), so at most 32 periods are deleted. Kept for exact agreement (no real answer has more).
_PERIOD_MAX_DELETIONS = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: each listed character is deleted when it touches a space anywhere in the
    (original) text or when the text has a comma between digits ("1,000"); otherwise it becomes a space. Then periods
    not followed by a digit are deleted."""
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if has_digit_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_MAX_DELETIONS)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, split on whitespace, number words to digits, articles
    dropped, contractions repaired word by word, joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the official evaluation normalises a *predicted* answer.

    Newlines and tabs become spaces, the ends are stripped, punctuation is handled as ``processPunctuation`` does
    (see :func:`_process_punctuation`), then number words become digits, articles go and contractions are repaired.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("dont know")
    "don't know"
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


# --------------------------------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------------------------------


def _ann_field(ann: Any, name: str, default: Any = None) -> Any:
    if isinstance(ann, Mapping):
        return ann.get(name, default)
    return getattr(ann, name, default)


def _gt_answers(ann: Any, where: str) -> list[str]:
    raw = _ann_field(ann, "answers")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise DataError(f"{where}: field 'answers': expected a non-empty list of human answers, got {raw!r}")
    out = []
    for j, a in enumerate(raw):
        a = a.get("answer") if isinstance(a, Mapping) else a
        if not isinstance(a, str):
            raise DataError(f"{where}: field 'answers[{j}]': expected an answer string, got {a!r}")
        out.append(a)
    return out


def _prediction_lookup(predictions: Mapping[QuestionId, str]) -> dict[str, str]:
    # Question ids compare as strings, so predictions keyed 42 or "42" both match question_id 42.
    return {str(k): v for k, v in predictions.items()}


def _take_prediction(preds: dict[str, str], qid: QuestionId, where: str) -> str:
    try:
        pred = preds[str(qid)]
    except KeyError:
        raise DataError(
            f"{where}: no prediction for question_id {qid!r}: the official evaluation needs an answer for every "
            "annotated question") from None
    if not isinstance(pred, str):
        raise DataError(f"prediction for question_id {qid!r}: expected an answer string, got {pred!r}")
    return pred


def _summarise(scores: list[tuple[float, str | None, str | None]], n_ignored: int) -> dict[str, Any]:
    """Mean scores in percent overall and per answer/question type (types that are None are left out)."""

    def pct(values: list[float]) -> float:
        return 100.0 * float(sum(values)) / len(values)

    by_answer: dict[str, list[float]] = {}
    by_question: dict[str, list[float]] = {}
    for acc, answer_type, question_type in scores:
        if answer_type is not None:
            by_answer.setdefault(answer_type, []).append(acc)
        if question_type is not None:
            by_question.setdefault(question_type, []).append(acc)
    out: dict[str, Any] = {
        "overall": pct([s[0] for s in scores]),
        "per_answer_type": {k: pct(v) for k, v in by_answer.items()},
    }
    if by_question:
        out["per_question_type"] = {k: pct(v) for k, v in by_question.items()}
    out["n"] = len(scores)
    out["n_ignored_predictions"] = n_ignored
    return out


def _iter_annotations(annotations: Sequence[Any]) -> Iterable[tuple[int, str, QuestionId]]:
    if not annotations:
        raise DataError("no annotated questions to evaluate")
    seen: set[str] = set()
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        qid = _ann_field(ann, "question_id")
        if qid is None:
            raise DataError(f"{where}: missing field 'question_id'")
        if str(qid) in seen:
            raise DataError(f"{where}: question_id {qid!r} appears twice")
        seen.add(str(qid))
        yield i, where, qid


def vqa_accuracy(predictions: Mapping[QuestionId, str], annotations: Sequence[Any]) -> dict[str, Any]:
    """The official VQA v2 accuracy, in percent.

    For each question the prediction is normalised with :func:`normalize_answer`. The human answers are, as in the
    official code, only run through the *punctuation* step, and only when the humans disagree (``len(set(answers)) >
    1``); they are never lower-cased or digit/article-normalised (the released annotations already are). For each of
    the n human answers the prediction scores ``min(1, matches among the other n-1 / 3)``; the question's accuracy is
    the mean of those n scores, so with ten humans 1 match gives 0.3, 2 give 0.6, 3 give 0.9 and 4 or more give 1.
    The leave-one-out removes one answer by position (the official code removes the answer dict, unique through its
    ``answer_id``).

    The official tool rounds the reported figures to 2 decimals; these are full floats (``round(x, 2)`` gives the
    official numbers). Per-type means are over per-question accuracies as in the official master branch.

    Args:
        predictions: question_id → predicted answer string.
        annotations: VQA v2 annotation dicts (``question_id``, ``answers`` as ``[{answer, ...}]`` or strings,
            optional ``answer_type`` / ``question_type``) or :class:`VQAExample` objects.

    Returns:
        ``overall``, ``per_answer_type`` (types present), ``per_question_type`` (only when annotations carry
        question types), ``n`` (questions scored) and ``n_ignored_predictions`` (predictions with no annotation).

    Raises:
        DataError: a question without a prediction (named by its id), an annotation without answers.
    """
    preds = _prediction_lookup(predictions)
    scores = []
    for i, where, qid in _iter_annotations(annotations):
        pred = normalize_answer(_take_prediction(preds, qid, where))
        gts = _gt_answers(annotations[i], where)
        if len(set(gts)) > 1:
            gts = [_process_punctuation(g) for g in gts]
        matches = sum(g == pred for g in gts)
        per_human = [min(1.0, (matches - (g == pred)) / 3.0) for g in gts]
        scores.append((float(sum(per_human)) / len(per_human), _ann_field(annotations[i], "answer_type"),
                       _ann_field(annotations[i], "question_type")))
    return _summarise(scores, n_ignored=len(preds) - len(scores))


def exact_match_accuracy(predictions: Mapping[QuestionId, str],
                         answers: Mapping[QuestionId, str] | Sequence[VQAExample],
                         normalize: bool = True) -> dict[str, Any]:
    """Accuracy in percent for single-answer data such as easy-VQA: a prediction is right when it equals the answer.

    Args:
        predictions: question_id → predicted answer.
        answers: question_id → the answer, or :class:`VQAExample` objects with exactly one answer (then per-type
            means are reported too).
        normalize: compare both sides after :func:`normalize_answer` (``"Yes."`` equals ``"yes"``).

    Returns:
        The same keys as :func:`vqa_accuracy`.
    """
    if isinstance(answers, Mapping):
        rows = [{"question_id": q, "answers": [a]} for q, a in answers.items()]
    else:
        rows = list(answers)
    preds = _prediction_lookup(predictions)
    scores = []
    for i, where, qid in _iter_annotations(rows):
        gts = _gt_answers(rows[i], where)
        if len(gts) != 1:
            raise DataError(f"{where}: exact match needs exactly one answer per question, question_id {qid!r} has "
                            f"{len(gts)} (use vqa_accuracy for multi-human answers)")
        pred, gold = _take_prediction(preds, qid, where), gts[0]
        if normalize:
            pred, gold = normalize_answer(pred), normalize_answer(gold)
        scores.append((float(pred == gold), _ann_field(rows[i], "answer_type"), _ann_field(rows[i], "question_type")))
    return _summarise(scores, n_ignored=len(preds) - len(scores))


def soft_accuracy(predictions: Mapping[QuestionId, str], examples: Sequence[VQAExample]) -> dict[str, Any]:
    """LXMERT's evaluation on its preprocessed files: the prediction's score in the example's ``label`` (0 when absent),
    in percent. It equals the official accuracy when the labels were made with the official rule from ten answers.

    Returns:
        The same keys as :func:`vqa_accuracy`.
    """
    preds = _prediction_lookup(predictions)
    scores = []
    for i, where, qid in _iter_annotations(examples):
        label = examples[i].label
        if label is None:
            raise DataError(f"{where}: question_id {qid!r} has no 'label' to score against")
        pred = _take_prediction(preds, qid, where)
        scores.append((float(label.get(pred, 0.0)), examples[i].answer_type, examples[i].question_type))
    return _summarise(scores, n_ignored=len(preds) - len(scores))


# --------------------------------------------------------------------------------------------------------------------
# Answer table and soft targets
# --------------------------------------------------------------------------------------------------------------------


class AnswerVocab:
    """The answer table of a VQA head: answer string ↔ class id.

    Build it from training answers with :meth:`build`; answers are kept exactly as given (normalise them first if the
    source is raw). ``stats`` records what a minimum count left out.
    """

    def __init__(self, answers: Sequence[str], min_count: int = 1, stats: dict[str, int] | None = None):
        self.answers: list[str] = list(answers)
        self.index: dict[str, int] = {a: i for i, a in enumerate(self.answers)}
        if len(self.index) != len(self.answers):
            dup = next(a for a, c in Counter(self.answers).items() if c > 1)
            raise DataError(f"answer table: answer {dup!r} appears more than once")
        self.min_count = min_count
        self.stats = stats or {}

    @classmethod
    def build(cls, answers: Iterable[str], min_count: int = 1) -> AnswerVocab:
        """Answers seen at least ``min_count`` times, most frequent first (ties alphabetical), so ids are stable.

        Args:
            answers: one string per occurrence (e.g. every training question's ``multiple_choice_answer``, as the
                bottom-up-attention recipe counts with ``min_count=9``; or every human answer).
            min_count: minimum number of occurrences to keep an answer.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(answers)
        kept = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
        stats = {
            "distinct_answers": len(counts), "kept_answers": len(kept), "dropped_answers": len(counts) - len(kept),
            "occurrences": sum(counts.values()), "occurrences_kept": sum(counts[a] for a in kept),
        }
        if stats["dropped_answers"]:
            logger.info("answer table: kept %d of %d answers (min count %d), covering %d of %d occurrences",
                        len(kept), len(counts), min_count, stats["occurrences_kept"], stats["occurrences"])
        return cls(kept, min_count=min_count, stats=stats)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: object) -> bool:
        return answer in self.index

    def __repr__(self) -> str:
        return f"AnswerVocab({len(self)} answers, min_count={self.min_count})"

    def encode(self, answer: str) -> int | None:
        """The id of ``answer``, or None when it is not in the table."""
        return self.index.get(answer)

    def decode(self, index: int) -> str:
        return self.answers[index]

    def save(self, path: PathLike) -> None:
        """Write ``{"answers": [...], "min_count": n, "stats": {...}}`` (atomically)."""
        payload = {"answers": self.answers, "min_count": self.min_count, "stats": self.stats}
        write_text(path, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> AnswerVocab:
        """Read a file written by :meth:`save`, a plain json list of answers (LXMERT's ``label2ans``), or an
        ``{answer: id}`` mapping (LXMERT's ``ans2label``) whose ids are 0..n-1."""
        data = _load_json(path)
        if isinstance(data, dict) and "answers" in data:
            answers, min_count, stats = data["answers"], int(data.get("min_count", 1)), data.get("stats")
        elif isinstance(data, dict):
            if sorted(data.values()) != list(range(len(data))):
                raise DataError(f"{path}: an {{answer: id}} table needs the ids 0..{len(data) - 1}, each once")
            answers, min_count, stats = sorted(data, key=data.__getitem__), 1, None
        else:
            answers, min_count, stats = data, 1, None
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{path}: expected a list of answer strings")
        return cls(answers, min_count=min_count, stats=stats)


def _official_rule(count: int) -> float:
    return min(1.0, count / 3.0)


def _lxmert_rule(count: int) -> float:
    return min(1.0, 0.3 * count)


#: Soft-score rules: number of humans giving an answer → target score.
SOFT_SCORE_RULES = {"lxmert": _lxmert_rule, "official": _official_rule}


def soft_scores(answers: Sequence[str], vocab: AnswerVocab, rule: str = "lxmert",
                normalize: bool = False) -> tuple[np.ndarray, int]:
    """Soft target vector of one question from its human answers.

    Args:
        answers: the human answers (ten in VQA v2).
        vocab: the answer table.
        rule: ``"lxmert"`` — ``min(1, 0.3 * count)``, the bottom-up-attention/LXMERT targets (0.3, 0.6, 0.9, 1);
            ``"official"`` — ``min(1, count / 3)``, the metric's own per-answer credit without leave-one-out.
        normalize: run each answer through :func:`normalize_answer` first.

    Returns:
        ``(scores, n_unknown)``: a float32 vector ``[len(vocab)]`` and the number of answer occurrences that are not in
        the table (they get no target; the caller counts them).
    """
    try:
        score = SOFT_SCORE_RULES[rule]
    except KeyError:
        raise ValueError(f"soft score rule {rule!r}: expected one of {sorted(SOFT_SCORE_RULES)}") from None
    target = np.zeros(len(vocab), dtype=np.float32)
    counts = Counter(normalize_answer(a) if normalize else a for a in answers)
    unknown = 0
    for answer, count in counts.items():
        idx = vocab.encode(answer)
        if idx is None:
            unknown += count
        else:
            target[idx] = score(count)
    return target, unknown


def label_scores(label: Mapping[str, float], vocab: AnswerVocab) -> tuple[np.ndarray, int]:
    """Target vector from given soft scores (LXMERT's ``label``); returns ``(scores, n_unknown answers)``."""
    target = np.zeros(len(vocab), dtype=np.float32)
    unknown = 0
    for answer, value in label.items():
        idx = vocab.encode(answer)
        if idx is None:
            unknown += 1
        else:
            target[idx] = value
    return target, unknown


def answer_targets(example: VQAExample, vocab: AnswerVocab, rule: str = "lxmert") -> tuple[np.ndarray, int]:
    """Targets of one example: its ``label`` when the file gives soft scores (LXMERT, easy-VQA), else its human answers
    through ``rule`` (official VQA v2).

    Raises:
        DataError: the example has neither a label nor answers (a test split has nothing to train on).
    """
    if example.label is not None:
        return label_scores(example.label, vocab)
    if example.answers:
        return soft_scores(example.answers, vocab, rule)
    raise DataError(f"question_id {example.question_id!r}: no answers and no label to make training targets from")


# --------------------------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------------------------


def _load_json(path: PathLike) -> Any:
    return read_json(path)


def _field(row: Any, key: str, where: str, kind: type | tuple[type, ...] = object) -> Any:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {key!r}: expected {expected}, got {value!r}")
    return value


def _question_text(row: Any, key: str, where: str) -> str:
    text = _field(row, key, where, str)
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
    questions = _list_in(_load_json(questions_path), "questions", questions_path)
    examples: dict[str, VQAExample] = {}
    for i, row in enumerate(questions):
        where = f"{questions_path}: questions[{i}]"
        qid = _field(row, "question_id", where, (int, str))
        if str(qid) in examples:
            raise DataError(f"{where}: question_id {qid!r} appears twice")
        examples[str(qid)] = VQAExample(question_id=qid, image_id=str(_field(row, "image_id", where, (int, str))),
                                        question=_question_text(row, "question", where), answers=[])
    if annotations_path is None:
        return list(examples.values())
    annotations = _list_in(_load_json(annotations_path), "annotations", annotations_path)
    annotated: set[str] = set()
    for i, row in enumerate(annotations):
        where = f"{annotations_path}: annotations[{i}]"
        qid = _field(row, "question_id", where, (int, str))
        ex = examples.get(str(qid))
        if ex is None:
            raise DataError(f"{where}: question_id {qid!r} is not in {questions_path}")
        if str(qid) in annotated:
            raise DataError(f"{where}: question_id {qid!r} is annotated twice")
        annotated.add(str(qid))
        image_id = str(_field(row, "image_id", where, (int, str)))
        if image_id != ex.image_id:
            raise DataError(f"{where}: image_id {image_id!r} differs from the question's image_id {ex.image_id!r}")
        _field(row, "answers", where, list)
        ex.answers = _gt_answers(row, where)
        for key in ("answer_type", "question_type", "multiple_choice_answer"):
            if row.get(key) is not None:
                setattr(ex, key, _field(row, key, where, str))
    missing = [ex for key, ex in examples.items() if key not in annotated]
    if missing:
        raise DataError(f"{questions_path}: question_id {missing[0].question_id!r} has no annotation in "
                        f"{annotations_path} ({len(missing)} questions without one)")
    return list(examples.values())


def _label(row: dict, where: str) -> dict[str, float] | None:
    if "label" not in row:
        return None
    label = row["label"]
    bad = not isinstance(label, dict) or any(
        not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        or v < 0 for k, v in label.items())
    if bad:
        raise DataError(f"{where}: field 'label': expected an object of answer → non-negative score, got {label!r}")
    return {k: float(v) for k, v in label.items()}


def read_lxmert_json(path: PathLike) -> list[VQAExample]:
    """Read LXMERT's preprocessed VQA json: ``[{question_id, img_id, sent, label?, answer_type?, question_type?}]``.

    Raises:
        DataError: naming the file, the row (0-based list index) and the field.
    """
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of questions (LXMERT's layout), got {type(data).__name__}")
    out, seen = [], set()
    for i, row in enumerate(data):
        where = f"{path}: row {i}"
        qid = _field(row, "question_id", where, (int, str))
        if str(qid) in seen:
            raise DataError(f"{where}: question_id {qid!r} appears twice")
        seen.add(str(qid))
        ex = VQAExample(question_id=qid, image_id=str(_field(row, "img_id", where, (int, str))),
                        question=_question_text(row, "sent", where), answers=[], label=_label(row, where))
        for key in ("answer_type", "question_type"):
            if row.get(key) is not None:
                setattr(ex, key, _field(row, key, where, str))
        out.append(ex)
    return out


EASY_VQA_SPLITS = ("train", "test")
EASY_VQA_COLOURS = ("red", "green", "blue", "black", "gray", "yellow", "teal", "brown")
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")


def easy_vqa_question_type(answer: str) -> str | None:
    """``yes/no``, ``colour`` or ``shape`` from an easy-VQA answer; None for anything else."""
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in EASY_VQA_COLOURS:
        return "colour"
    if answer in EASY_VQA_SHAPES:
        return "shape"
    return None


def easy_vqa_questions_path(split: str) -> Path:
    """The ``questions.json`` of an easy-VQA split inside the installed package."""
    if split not in EASY_VQA_SPLITS:
        raise DataError(f"unknown easy-VQA split {split!r}: expected one of {', '.join(EASY_VQA_SPLITS)}")
    try:
        import easy_vqa
    except ImportError:  # pragma: no cover - easy-vqa is a dependency of vlm
        raise DataError("easy-VQA needs the easy-vqa package: pip install easy-vqa") from None
    return Path(easy_vqa.__file__).parent / "data" / split / "questions.json"


def read_easy_vqa(split: str, questions_path: PathLike | None = None) -> list[VQAExample]:
    """Read an easy-VQA split: question_id is the row index in the split's ``questions.json``, image ids are the
    package's integers as strings (train and test both start at "0"), answer and question type come from the answer.

    Args:
        split: ``"train"`` or ``"test"``.
        questions_path: read this file (same layout: ``[[question, answer, image_id], ...]``) instead of the
            package's; the answers must still be easy-VQA answers.

    Raises:
        DataError: a row that is not ``[question, answer, image_id]``, an empty question, an unknown answer.
    """
    path = Path(questions_path) if questions_path is not None else easy_vqa_questions_path(split)
    rows = _load_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of [question, answer, image_id] rows")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        if not isinstance(row, list) or len(row) != 3:
            raise DataError(f"{where}: expected [question, answer, image_id], got {row!r}")
        question, answer, image_id = row
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: field 'question': expected a non-empty string, got {question!r}")
        qtype = easy_vqa_question_type(answer) if isinstance(answer, str) else None
        if qtype is None:
            raise DataError(f"{where}: field 'answer': {answer!r} is not an easy-VQA answer (yes, no, a colour "
                            f"{'/'.join(EASY_VQA_COLOURS)} or a shape {'/'.join(EASY_VQA_SHAPES)})")
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise DataError(f"{where}: field 'image_id': expected an integer, got {image_id!r}")
        out.append(VQAExample(question_id=i, image_id=str(image_id), question=question, answers=[answer],
                              answer_type=qtype, question_type=qtype, label={answer: 1.0},
                              multiple_choice_answer=answer))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Results files
# --------------------------------------------------------------------------------------------------------------------


def write_results(predictions: Mapping[QuestionId, str], path: PathLike) -> None:
    """Write predictions in the official results format ``[{"question_id": ..., "answer": ...}]`` (atomically)."""
    rows = [{"question_id": q, "answer": a} for q, a in predictions.items()]
    write_text(path, json.dumps(rows, ensure_ascii=False) + "\n")


def load_results(path: PathLike) -> dict[QuestionId, str]:
    """Read an official results file into ``{question_id: answer}``.

    Raises:
        DataError: naming the file and row for a malformed or repeated entry.
    """
    rows = _load_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of {{question_id, answer}} (the official results format)")
    out: dict[QuestionId, str] = {}
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        qid = _field(row, "question_id", where, (int, str))
        if qid in out:
            raise DataError(f"{where}: question_id {qid!r} appears twice")
        out[qid] = _field(row, "answer", where, str)
    return out
