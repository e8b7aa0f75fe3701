"""VQA data: the example type, answer normalisation, the answer table and soft scores.

Both task packages use this module, so pretraining's QA objective and fine-tuning share one answer rule:

* answers are normalised by :func:`normalize_answer` (the official evaluation's processing of a predicted answer:
  punctuation, number words to digits, articles dropped, contractions repaired) before they are counted, looked up or
  scored, so "Two", "two." and "2" are one answer, as are "a dog" and "dog";
* the answer table (:class:`AnswerVocab`) lists the normalised answers given for at least ``min_count`` questions,
  most frequent first (ties alphabetical); its one file format is ``{"answers": [...], "min_count": n, "stats": {..}}``
  (``answers.json`` in every model folder; LXMERT's ``label2ans`` list and ``ans2label`` mapping are read too);
* soft scores (:func:`answer_scores`): a text with exactly one given answer scores 1.0 for it; several human answers
  (ten in VQA v2) score ``rule(count)`` with the configured rule (:data:`SOFT_SCORE_RULES`: ``lxmert``
  ``min(1, 0.3 * count)``, the bottom-up-attention targets LXMERT uses; ``official`` ``min(1, count / 3)``); soft
  scores given by a file (LXMERT's ``label``) are used as given, keyed by their normalised answer.

The readers of the published layouts (official VQA v2, LXMERT's preprocessed json) are :mod:`vlm.data.vqa_formats`;
easy-VQA is read by :mod:`vlm.data.easy_vqa`. Malformed rows and tables raise :class:`vlm.errors.DataError` naming the
file and the field.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm.data.references import ARTICLES, CONTRACTIONS, NUMBER_WORDS, PUNCTUATION
from vlm.errors import DataError
from vlm.io import read_json, write_text

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
        question_type: VQA v2's question prefix (``what color is the``); easy-VQA: ``colour``, ``shape``,
            ``colour yes/no`` or ``shape yes/no`` (:func:`vlm.data.easy_vqa.easy_vqa_question_kind`).
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

# The official tool runs on Python 2, where these patterns (compiled without re.UNICODE) read \d as [0-9] only;
# Python 3 would also take other scripts' digits ("٣", "３"), hence re.ASCII.
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)", re.ASCII)
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a negative *lookahead* for the text "<=digit"
# (a typo for a lookbehind) and can never fail in front of a period, so the rule really is "delete a period that is not
# followed by a digit": "3.5" keeps its period, "3." and "dog." lose theirs.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)", re.ASCII)
# The official call is periodStrip.sub("", text, re.UNICODE): re.UNICODE lands in sub's positional *count* argument
# (value 32), so at most 32 periods are deleted. Kept for exact agreement (no real answer has more).
_PERIOD_MAX_DELETIONS = int(re.UNICODE)


def process_punctuation(text: str) -> str:
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


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, split on whitespace, number words to digits, articles
    dropped, contractions repaired word by word, joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the official evaluation (GT-Vision-Lab/VQA master, a013f00) normalises the
    prediction and every human answer of a question whose human answers are not all identical (when they are, it
    only replaces newlines/tabs and strips; see :func:`downstream.vqa.vqa_question_accuracy`).

    Newlines and tabs become spaces, the ends are stripped, punctuation is handled as ``processPunctuation`` does
    (see :func:`process_punctuation`), then number words become digits, articles go and contractions are repaired.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("dont know")
    "don't know"
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))



# --------------------------------------------------------------------------------------------------------------------
# Annotation fields (annotation dicts or VQAExample objects)
# --------------------------------------------------------------------------------------------------------------------


def annotation_field(ann: Any, name: str, default: Any = None) -> Any:
    """Field ``name`` of a VQA v2 annotation dict or of a :class:`VQAExample`."""
    if isinstance(ann, Mapping):
        return ann.get(name, default)
    return getattr(ann, name, default)


def human_answers(ann: Any, where: str) -> list[str]:
    """The human answer strings of an annotation (``[{answer, ...}]`` dicts or plain strings), checked.

    Raises:
        DataError: naming ``where`` when the list is missing or empty or an entry is not a string.
    """
    raw = annotation_field(ann, "answers")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise DataError(f"{where}: field 'answers': expected a non-empty list of human answers, got {raw!r}")
    out = []
    for j, a in enumerate(raw):
        a = a.get("answer") if isinstance(a, Mapping) else a
        if not isinstance(a, str):
            raise DataError(f"{where}: field 'answers[{j}]': expected an answer string, got {a!r}")
        out.append(a)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Answer table and soft targets
# --------------------------------------------------------------------------------------------------------------------


class AnswerVocab:
    """The answer table of a QA head: answer string ↔ class id.

    Build it with :meth:`build` from the answers of the training questions (normalised there, the one answer rule);
    a table read from a file is taken as written. ``stats`` records what a minimum count left out. The one file
    format is ``{"answers": [...], "min_count": n, "stats": {...}}`` (:meth:`save`); :meth:`load` also reads LXMERT's
    ``label2ans`` (a json list) and ``ans2label`` (an ``{answer: id}`` mapping).
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
    def from_questions(cls, answer_lists: Iterable[Sequence[str]], min_count: int = 1) -> AnswerVocab:
        """The table of pretraining's QA objective and of fine-tuning: :meth:`build` over each question's distinct
        normalised answers, so an answer counts once per question it is given for.

        Args:
            answer_lists: the answers of each training question (one for easy-VQA and JSONL texts, the ten human
                answers for VQA v2, the keys of a given ``label``).
            min_count: minimum number of questions an answer must be given for (the bottom-up-attention recipe
                keeps answers seen 9 times).
        """
        return cls.build((a for answers in answer_lists for a in {normalize_answer(x) for x in answers}), min_count)

    @classmethod
    def build(cls, answers: Iterable[str], min_count: int = 1) -> AnswerVocab:
        """The normalised answers seen at least ``min_count`` times, most frequent first (ties alphabetical), so ids
        are stable.

        Args:
            answers: one string per occurrence (e.g. every training question's ``multiple_choice_answer``, as the
                bottom-up-attention recipe counts); each is normalised with :func:`normalize_answer`.
            min_count: minimum number of occurrences to keep an answer.
        """
        if min_count < 1:
            raise DataError(f"answer_min_count must be >= 1, got {min_count}")
        counts = Counter(normalize_answer(a) for a in answers)
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
        """The id of ``answer`` (as written; normalise raw answers first), or None when it is not in the table."""
        return self.index.get(answer)

    def decode(self, index: int) -> str:
        return self.answers[index]

    def save(self, path: PathLike) -> None:
        """Write ``{"answers": [...], "min_count": n, "stats": {...}}`` (atomically)."""
        payload = {"answers": self.answers, "min_count": self.min_count, "stats": self.stats}
        write_text(path, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> AnswerVocab:
        """Read a file written by :meth:`save`, a plain json list of answers (LXMERT's ``label2ans``, and the model
        folders of vlm before the one format), or an ``{answer: id}`` mapping (LXMERT's ``ans2label``) whose ids are
        0..n-1."""
        data = read_json(path)
        if isinstance(data, dict) and "answers" in data:
            answers, min_count, stats = data["answers"], data.get("min_count", 1), data.get("stats")
            if isinstance(min_count, bool) or not isinstance(min_count, int):
                raise DataError(f"{path}: field 'min_count': expected an integer, got {min_count!r}")
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


#: Soft-score rules for several human answers: number of humans giving an answer → target score.
SOFT_SCORE_RULES = {"lxmert": _lxmert_rule, "official": _official_rule}


def answer_scores(answers: Sequence[str], vocab: AnswerVocab, rule: str = "lxmert") -> tuple[dict[int, float], int]:
    """Soft targets of one question from its answers, the one rule of pretraining and fine-tuning.

    Answers are normalised (:func:`normalize_answer`). Exactly one given answer scores 1.0 (easy-VQA, JSONL texts:
    the answer is known, not voted on); several (the ten human answers of VQA v2) score ``rule(count)`` per distinct
    answer.

    Args:
        answers: the question's answers.
        vocab: the answer table.
        rule: a key of :data:`SOFT_SCORE_RULES` — ``"lxmert"`` ``min(1, 0.3 * count)``, the bottom-up-attention/LXMERT
            targets (0.3, 0.6, 0.9, 1); ``"official"`` ``min(1, count / 3)``, the metric's per-answer credit.

    Returns:
        ``({answer id: score}, n_unknown)``: the scores of answers in the table and the number of answer occurrences
        that are not in it (they get no target; the caller counts them).
    """
    try:
        score = SOFT_SCORE_RULES[rule]
    except KeyError:
        raise DataError(f"soft_score_rule {rule!r}: expected one of {sorted(SOFT_SCORE_RULES)}") from None
    counts = Counter(normalize_answer(a) for a in answers)
    out: dict[int, float] = {}
    unknown = 0
    for answer, count in counts.items():
        idx = vocab.encode(answer)
        if idx is None:
            unknown += count
        else:
            out[idx] = 1.0 if len(answers) == 1 else score(count)
    return out, unknown


def label_scores(label: Mapping[str, float], vocab: AnswerVocab) -> tuple[dict[int, float], int]:
    """Targets from soft scores a file gives (LXMERT's ``label``), keyed by the normalised answer (two keys that
    normalise alike keep the higher score); returns ``({answer id: score}, n_unknown answers)``."""
    out: dict[int, float] = {}
    unknown = 0
    for answer, value in label.items():
        idx = vocab.encode(normalize_answer(answer))
        if idx is None:
            unknown += 1
        else:
            out[idx] = max(out.get(idx, 0.0), float(value))
    return out, unknown


def example_answers(example: VQAExample) -> list[str]:
    """The answers an example contributes to an answer table: its human answers, else the keys of its label."""
    return list(example.answers) or list(example.label or ())


def answer_targets(example: VQAExample, vocab: AnswerVocab, rule: str = "lxmert") -> tuple[np.ndarray, int]:
    """Dense targets of one example, a float32 vector ``[len(vocab)]``: its ``label`` when the file gives soft scores
    and no answers (LXMERT), else its answers through :func:`answer_scores`; and the number of unknown answers.

    Raises:
        DataError: the example has neither a label nor answers (a test split has nothing to train on).
    """
    if example.answers:
        scores, unknown = answer_scores(example.answers, vocab, rule)
    elif example.label is not None:
        scores, unknown = label_scores(example.label, vocab)
    else:
        raise DataError(f"question_id {example.question_id!r}: no answers and no label to make training targets from")
    target = np.zeros(len(vocab), dtype=np.float32)
    target[list(scores)] = list(scores.values())
    return target, unknown
