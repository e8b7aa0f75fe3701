"""VQA metrics and results files: the official VQA v2 accuracy, exact match, LXMERT's soft score, and the official
results format.

The metric is the one of Antol et al. 2015 / Goyal et al. 2017 as computed by the official evaluation,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` on the master branch of github.com/GT-Vision-Lab/VQA at commit
a013f00 ("Fixed processing answers bug"): a predicted answer scores ``min(1, #other humans that gave it / 3)``,
averaged over leaving out each of the (ten) human answers in turn, with answer normalisation applied to both sides
only when the humans disagree (see :func:`vqa_question_accuracy`). The data side (examples, answer normalisation, the
answer table, soft training targets, readers) is :mod:`vlm.data.vqa`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from vlm.data.vqa import (
    PathLike,
    QuestionId,
    VQAExample,
    annotation_field,
    normalize_answer,
    process_digit_article,
    process_punctuation,
)
from vlm.data.vqa import human_answers as _answer_texts
from vlm.errors import DataError
from vlm.io import json_field, read_json, write_text

__all__ = ["exact_match_accuracy", "load_results", "official_round", "soft_accuracy", "vqa_accuracy",
           "vqa_question_accuracy", "write_results"]


# --------------------------------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------------------------------


def _sum_in_order(values: Iterable[float]) -> float:
    # The official tool runs on Python 2, whose sum() adds floats one after the other. Python 3.12+ sum() uses
    # compensated summation, which can differ in the last bit, so the running total is kept by hand.
    total = 0.0
    for v in values:
        total += v
    return total


def _mean_percent(values: Sequence[float]) -> float:
    # As the official tool: 100 times the in-order sum, then divided by the count (not the mean times 100).
    return 100 * _sum_in_order(values) / len(values)


def official_round(value: float, ndigits: int = 2) -> float:
    """Round a score as the official tool reports it: ``round(value, 2)`` under Python 2, i.e. the float's exact
    binary value rounded half *away from zero* to ``ndigits`` decimals.

    Python 3's ``round`` rounds exact halves to even instead, so it disagrees on values such as 12.125 (exactly
    representable): the official report says 12.13, ``round(12.125, 2)`` gives 12.12.
    """
    quantum = Decimal(1).scaleb(-ndigits)
    return float(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP))


def _clean_whitespace(text: str) -> str:
    # Done to the prediction and to every human answer in both branches.
    return text.replace("\n", " ").replace("\t", " ").strip()


def _normalise_both_sides(text: str) -> str:
    # The differing-humans branch: the punctuation step, then the digit/article step (no second whitespace pass).
    return process_digit_article(process_punctuation(text))


def _question_accuracy(prediction: str, raw_answers: Sequence[Any], texts: Sequence[str],
                       cache: dict[str, str]) -> float:
    """The per-question score; ``texts`` are the answer strings of ``raw_answers`` (already checked); ``cache`` keeps
    normalised strings across questions (the same few answers recur)."""

    def normalised(text: str) -> str:
        out = cache.get(text)
        if out is None:
            out = cache[text] = _normalise_both_sides(text)
        return out

    pred = _clean_whitespace(prediction)
    answers = [_clean_whitespace(t) for t in texts]
    if len(set(answers)) > 1:
        answers = [normalised(a) for a in answers]
        pred = normalised(pred)
    # The official leave-one-out drops every answer *dict* equal to the held-out one (all fields compared, the
    # answer as normalised above). Real annotations carry a distinct answer_id, so that is just the held-out human;
    # dicts without one that are equal are all dropped together. A plain string is one human, dropped alone.
    keys = [{**a, "answer": t} if isinstance(a, Mapping) else None for a, t in zip(raw_answers, answers)]
    matching = [j for j, a in enumerate(answers) if a == pred]
    credits = []
    for i, held in enumerate(keys):
        dropped = sum(1 for j in matching if j == i or (held is not None and keys[j] is not None and keys[j] == held))
        credits.append(min(1.0, (len(matching) - dropped) / 3.0))
    return _sum_in_order(credits) / len(credits)


def vqa_question_accuracy(prediction: str, human_answers: Sequence[str | Mapping[str, Any]]) -> float:
    """The official accuracy of one prediction against one question's human answers, in [0, 1].

    This is what the official ``vqaEval.py`` (GT-Vision-Lab/VQA master, commit a013f00) computes per question:

    1. Always, on both sides: newlines and tabs become spaces and the ends are stripped. Nothing else yet.
    2. If the human answers, so cleaned, are *not all identical*: every human answer and the prediction go through
       the punctuation step (:func:`vlm.data.vqa.process_punctuation`) and then the digit/article step
       (:func:`vlm.data.vqa.process_digit_article`: lower-case, number words to digits, articles dropped,
       contractions repaired). If they *are* all identical, neither side is changed further: ten ``"Yes"`` match only
       a prediction ``"Yes"`` (not ``"yes"`` or ``"yes."``).
    3. For each human answer in turn: leave it out (and, for answer dicts, every other dict equal to it), count the
       remaining answers equal to the prediction (exact, case-sensitive string equality), credit
       ``min(1, count / 3)``.
    4. The score is the mean of those credits (summed in order). With ten humans of whom m match: 0, 0.3, 0.6,
       0.9, 1 for m = 0, 1, 2, 3, 4+. A single human answer always scores 0 (no other human is left).

    Args:
        prediction: the predicted answer string.
        human_answers: the human answers, as strings (each string one human) or VQA v2 answer dicts
            (``{"answer": ..., "answer_confidence": ..., "answer_id": ...}``; compared as whole dicts in step 3).

    Raises:
        DataError: a non-string prediction, an empty list, an answer that is not a string or a dict with one.
    """
    if not isinstance(prediction, str):
        raise DataError(f"prediction: expected an answer string, got {prediction!r}")
    texts = _answer_texts({"answers": human_answers}, "human_answers")
    return _question_accuracy(prediction, list(human_answers), texts, {})


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
    """Mean scores in percent overall and per answer/question type (types that are None are left out), each as the
    official tool computes it before rounding: 100 * (in-order sum of the per-question scores) / count."""
    by_answer: dict[str, list[float]] = {}
    by_question: dict[str, list[float]] = {}
    for acc, answer_type, question_type in scores:
        if answer_type is not None:
            by_answer.setdefault(answer_type, []).append(acc)
        if question_type is not None:
            by_question.setdefault(question_type, []).append(acc)
    out: dict[str, Any] = {
        "overall": _mean_percent([s[0] for s in scores]),
        "per_answer_type": {k: _mean_percent(v) for k, v in by_answer.items()},
    }
    if by_question:
        out["per_question_type"] = {k: _mean_percent(v) for k, v in by_question.items()}
    out["n"] = len(scores)
    out["n_ignored_predictions"] = n_ignored
    return out


def _iter_annotations(annotations: Sequence[Any]) -> Iterable[tuple[int, str, QuestionId]]:
    if not annotations:
        raise DataError("no annotated questions to evaluate")
    seen: set[str] = set()
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        qid = annotation_field(ann, "question_id")
        if qid is None:
            raise DataError(f"{where}: missing field 'question_id'")
        if str(qid) in seen:
            raise DataError(f"{where}: question_id {qid!r} appears twice")
        seen.add(str(qid))
        yield i, where, qid


def vqa_accuracy(predictions: Mapping[QuestionId, str], annotations: Sequence[Any]) -> dict[str, Any]:
    """The official VQA v2 accuracy, in percent, as computed by ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
    on the master branch of github.com/GT-Vision-Lab/VQA at commit a013f00 ("Fixed processing answers bug").

    Per question (:func:`vqa_question_accuracy`): both the prediction and the human answers always have newlines and
    tabs turned into spaces and their ends stripped. When the human answers are then not all identical, *both* sides
    also go through the punctuation step and the digit/article step (lower-case, number words to digits, articles
    dropped, contractions repaired); when they are all identical, *neither* side is normalised further, so ten
    ``"Yes"`` give a prediction ``"Yes"`` 1 and ``"yes"`` 0. (The older Python 3 branch ``feature/update_style``,
    which vlm followed before, always normalised the prediction and only punctuation-processed the humans.) The
    prediction then scores ``min(1, matches among the other answers / 3)`` for each human answer left out in turn,
    averaged: with ten humans 1 match gives 0.3, 2 give 0.6, 3 give 0.9, 4 or more give 1. Answer dicts are left out
    as the official code does, by dict equality (every equal dict goes, which with the distinct ``answer_id`` of real
    annotations is just the one); plain-string answers and :class:`VQAExample` answers are one human each.

    ``overall`` and each ``per_answer_type`` / ``per_question_type`` entry is ``100 * sum / count`` over the
    per-question scores (summed in annotation order), the official figures *before* the tool's final
    ``round(x, 2)``; :func:`official_round` gives the reported numbers exactly (Python 2 rounding, halves away from
    zero). Differences from the official script, all on inputs it does not accept: a missing prediction or an
    annotation without answers raises :class:`DataError` (the script crashes), predictions for unannotated questions
    are counted rather than rejected, questions without a type are left out of that type's table, and the inputs are
    not modified (the script rewrites the annotation dicts in place).

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
    cache: dict[str, str] = {}
    for i, where, qid in _iter_annotations(annotations):
        pred = _take_prediction(preds, qid, where)
        texts = _answer_texts(annotations[i], where)
        acc = _question_accuracy(pred, list(annotation_field(annotations[i], "answers")), texts, cache)
        scores.append((acc, annotation_field(annotations[i], "answer_type"),
                       annotation_field(annotations[i], "question_type")))
    return _summarise(scores, n_ignored=len(preds) - len(scores))


def exact_match_accuracy(predictions: Mapping[QuestionId, str],
                         answers: Mapping[QuestionId, str] | Sequence[VQAExample],
                         normalize: bool = True) -> dict[str, Any]:
    """Accuracy in percent for single-answer data such as easy-VQA: a prediction is right when it equals the answer.

    This is not the official VQA rule, and deliberately so: with one human answer the official leave-one-out leaves
    no other human to agree with, so every prediction would score 0 (:func:`vqa_accuracy` does compute that), and its
    "all answers identical" branch would compare raw strings. Here one answer is the known truth, and with
    ``normalize`` (the default) *both* sides go through the same full normalisation, :func:`normalize_answer`
    (whitespace, punctuation, lower-case, number words, articles, contractions), so ``"Yes."`` equals ``"yes"`` and
    ``"Two"`` equals ``"2"`` whichever side they are on; the answer tables vlm builds hold normalised answers, so a
    correct prediction is never lost to formatting. ``normalize=False`` compares the strings as given.

    Args:
        predictions: question_id → predicted answer.
        answers: question_id → the answer, or :class:`VQAExample` objects with exactly one answer (then per-type
            means are reported too).
        normalize: compare both sides after :func:`normalize_answer`.

    Returns:
        The same keys as :func:`vqa_accuracy` (means computed the same way).
    """
    if isinstance(answers, Mapping):
        rows = [{"question_id": q, "answers": [a]} for q, a in answers.items()]
    else:
        rows = list(answers)
    preds = _prediction_lookup(predictions)
    scores = []
    for i, where, qid in _iter_annotations(rows):
        gts = _answer_texts(rows[i], where)
        if len(gts) != 1:
            raise DataError(f"{where}: exact match needs exactly one answer per question, question_id {qid!r} has "
                            f"{len(gts)} (use vqa_accuracy for multi-human answers)")
        pred, gold = _take_prediction(preds, qid, where), gts[0]
        if normalize:
            pred, gold = normalize_answer(pred), normalize_answer(gold)
        scores.append((float(pred == gold), annotation_field(rows[i], "answer_type"),
                       annotation_field(rows[i], "question_type")))
    return _summarise(scores, n_ignored=len(preds) - len(scores))


def soft_accuracy(predictions: Mapping[QuestionId, str], examples: Sequence[VQAExample]) -> dict[str, Any]:
    """LXMERT's evaluation on its preprocessed files, in percent: the prediction's score in the example's ``label``
    (0 when absent), as LXMERT's ``VQAEvaluator.evaluate`` computes it.

    The prediction is looked up exactly as given, not normalised, as LXMERT does. LXMERT's label keys are entries of
    its answer table (``trainval_label2ans.json``), which are already in normalised form (``"t shirt"``,
    ``"don't know"``, ``"2"``, ``"to get to other side"``), the form the bottom-up-attention-vqa preprocessing gives
    (``tools/compute_softscore.py``: the official punctuation and digit/article steps, then commas removed). A
    model's prediction is an entry of that table (or of a vlm table built from those keys), so an as-is lookup finds
    it; a raw prediction (``"Two"``, ``"Yes."``) scores 0 here, as in LXMERT.

    The number is not the official accuracy, only close to it: the labels score 0.3/0.6/0.9/1 by how many humans
    gave an answer as the preprocessing counted them, not by the official branch rule (which normalises nothing when
    the ten answers are identical), and they only list answers in the answer table.

    Returns:
        The same keys as :func:`vqa_accuracy` (means computed the same way).
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
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of {{question_id, answer}} (the official results format)")
    out: dict[QuestionId, str] = {}
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        qid = json_field(row, "question_id", where, (int, str))
        if qid in out:
            raise DataError(f"{where}: question_id {qid!r} appears twice")
        out[qid] = json_field(row, "answer", where, str)
    return out
