"""easy-VQA (the ``easy-vqa`` package): its questions, each image's colour and shape, and the texts built from them.

easy-VQA is vlm's built-in data (DESIGN §7): 4,000 train and 1,000 test images, each one shape (circle, rectangle or
triangle) in one of eight colours, and 38,575 / 9,673 questions with one answer each. This module reads it and builds
the other built-in texts from it:

* :func:`read_easy_vqa`: the questions as :class:`vlm.data.vqa.VQAExample` (``easy-vqa``);
* :func:`read_image_attributes`: each image's colour and shape, read off its own questions;
* :func:`captions`: ``easy-vqa-captions``, :data:`CAPTION_TEMPLATES` filled with each image's colour and shape (the
  stand-in for the COCO/Visual Genome captions LXMERT pretrains on);
* :func:`build_statements`: ``easy-vqa-statements``, true and false statements about each image, balanced so that
  neither modality decides them alone (a classification task);

Reading the attributes: an answer that is a colour or shape word names it; the colour in ``"what is the red shape?"``
and the shape in ``"what color is the circle?"`` are presupposed; and a yes/no question about one colour or shape names
it when the answer says it is there (``"is there a red shape?" → yes``, ``"is there not a circle?" → no``). Answers
that rule values out name the value left when all others are ruled out (one of eight colours, one of three shapes), and
expose conflicts. Images whose colour or shape cannot be read, or whose evidence conflicts, are counted in the report
and left out.

Statements: every usable image gets five pairs, one true and one false of each type:

* ``colour`` — "the shape is {colour}": true when it is the image's colour;
* ``negated colour`` — "the shape is not {colour}": true when it is not;
* ``shape`` — "there is a {shape}": true when it is the image's shape;
* ``negated shape`` — "there is no {shape}": true when it is not;
* ``colour+shape`` — "there is a {colour} {shape}": true when both are the image's.

The false statements of the plain types and the true statements of the negated types name a value the image does
not have. Those values are a random derangement of the multiset of the images' own values: over the split each colour,
shape or pair is named wrongly exactly as often as it is some image's own value. Hence every statement string
is true exactly as often as false, and every image has as many true as false statements: a text-only or an image-only
predictor cannot beat 50% (:func:`ceilings` measures it), while image and text together decide every label.
Labels: 1 = true, 0 = false (:data:`STATEMENT_CLASSES`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vlm.data.classification import ClassificationExample, ClassList
from vlm.data.vqa import PathLike, VQAExample
from vlm.errors import DataError
from vlm.io import read_json

logger = logging.getLogger(__name__)

#: Caption templates of ``easy-vqa-captions``: every image gets one of each.
CAPTION_TEMPLATES = ("a {colour} {shape}", "the {shape} is {colour}", "this image shows a {colour} {shape}")


#: The splits of the easy-vqa package.
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


def easy_vqa_question_kind(question: str, answer: str) -> str | None:
    """The question type easy-VQA's evaluation reports: ``colour``, ``shape``, or a yes/no question split by what
    it asks about — ``colour yes/no`` (it names a colour: "is the shape red?") or ``shape yes/no`` ("is there a
    circle?").
    The two yes/no kinds behave differently: a colour yes/no question needs the image's colour, and its question-only
    prior is what a model that ignores the image falls back to."""
    kind = easy_vqa_question_type(answer)
    if kind == "yes/no":
        words = question.lower().replace("?", " ").split()
        return "colour yes/no" if any(c in words for c in EASY_VQA_COLOURS) else "shape yes/no"
    return kind


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
    rows = read_json(path)
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
                              answer_type=qtype, question_type=easy_vqa_question_kind(question, answer),
                              label={answer: 1.0},
                              multiple_choice_answer=answer))
    return out



#: Class 0 = the statement is false for the image, 1 = true.
STATEMENT_CLASSES = ClassList(["false", "true"])

#: Statement type → template, in the order each image's statements are made.
STATEMENT_TYPES: dict[str, str] = {
    "colour": "the shape is {colour}",
    "negated colour": "the shape is not {colour}",
    "shape": "there is a {shape}",
    "negated shape": "there is no {shape}",
    "colour+shape": "there is a {colour} {shape}",
}

_WORD = re.compile(r"[a-z]+")
_NEGATION = frozenset({"not", "no"})


@dataclass
class StatementReport:
    """What :func:`build_statements` read and made.

    Attributes:
        split: ``train`` or ``test``.
        questions: questions read.
        images: distinct images among them.
        images_used: images with a colour and a shape (each gives 10 statements).
        no_colour: images whose colour could not be read off their questions (left out).
        no_shape: images whose shape could not be read off their questions (left out).
        conflicting: images whose questions disagree about the colour or the shape (left out).
        unparsed_yes_no: yes/no questions naming not exactly one colour or shape word (not used).
        by_elimination: colours or shapes known only because every other value was answered absent.
        statements: statements made.
        true: statements labelled true.
        per_type: statements per type.
    """

    split: str
    questions: int = 0
    images: int = 0
    images_used: int = 0
    no_colour: int = 0
    no_shape: int = 0
    conflicting: int = 0
    unparsed_yes_no: int = 0
    by_elimination: int = 0
    statements: int = 0
    true: int = 0
    per_type: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Evidence:
    present: dict[str, set[str]] = field(default_factory=lambda: {"colour": set(), "shape": set()})
    absent: dict[str, set[str]] = field(default_factory=lambda: {"colour": set(), "shape": set()})


def _attribute(word: str) -> str | None:
    if word in EASY_VQA_COLOURS:
        return "colour"
    if word in EASY_VQA_SHAPES:
        return "shape"
    return None


def read_image_attributes(questions: Sequence[VQAExample]) -> tuple[dict[str, tuple[str, str]], StatementReport]:
    """Colour and shape of each image from its easy-VQA questions.

    Returns:
        ``({image_id: (colour, shape)}, report)`` for the images whose colour and shape are known and consistent; the
        report counts the others (``no_colour``, ``no_shape``, ``conflicting``) and the unparsed yes/no questions.
    """
    report = StatementReport(split="", questions=len(questions))
    evidence: dict[str, _Evidence] = defaultdict(_Evidence)
    for q in questions:
        ev = evidence[q.image_id]
        answer = q.answers[0]
        words = _WORD.findall(q.question.lower())
        named = [(w, _attribute(w)) for w in words if _attribute(w) is not None]
        if answer in ("yes", "no"):
            if len(named) != 1:
                report.unparsed_yes_no += 1
                continue
            (word, kind), = named
            negated = any(w in _NEGATION for w in words)
            is_there = (answer == "yes") != negated
            (ev.present if is_there else ev.absent)[kind].add(word)
        else:
            kind = _attribute(answer)
            if kind is None:  # read_easy_vqa only lets easy-VQA answers through
                raise DataError(f"question {q.question_id!r}: answer {answer!r} is not an easy-VQA answer")
            ev.present[kind].add(answer)
            # "what is the red shape?" presupposes red; "what color is the circle?" presupposes a circle.
            for word, named_kind in named:
                if named_kind != kind:
                    ev.present[named_kind].add(word)
    report.images = len(evidence)
    out: dict[str, tuple[str, str]] = {}
    for image_id, ev in evidence.items():
        colours, shapes = ev.present["colour"], ev.present["shape"]
        if len(colours) > 1 or len(shapes) > 1 or colours & ev.absent["colour"] or shapes & ev.absent["shape"]:
            report.conflicting += 1
            continue
        # One colour of eight and one shape of three: all others ruled out by "no" answers names the remaining one.
        for kind, values, known in (("colour", EASY_VQA_COLOURS, colours), ("shape", EASY_VQA_SHAPES, shapes)):
            left = set(values) - ev.absent[kind]
            if not known and len(left) == 1:
                known.update(left)
                report.by_elimination += 1
        report.no_colour += not colours
        report.no_shape += not shapes
        if colours and shapes:
            out[image_id] = (next(iter(colours)), next(iter(shapes)))
    report.images_used = len(out)
    return out, report


T = TypeVar("T", bound=Hashable)


def _derangement(values: Sequence[T], rng: np.random.Generator, what: str) -> list[T]:
    """A shuffle of ``values`` (same multiset) in which no position keeps a value equal to its own.

    Raises:
        DataError: one value fills more than half the positions, so no such shuffle exists.
    """
    n = len(values)
    top, top_count = Counter(values).most_common(1)[0] if n else (None, 0)
    if 2 * top_count > n:
        raise DataError(f"easy-vqa-statements: {top_count} of {n} images have {what} {top!r}; the statements cannot "
                        "be balanced when one value covers more than half the images")
    perm = [values[i] for i in rng.permutation(n)]
    for i in range(n):
        if perm[i] != values[i]:
            continue
        # Swap with a position j whose value can move to i and whose own value differs from perm[i]; one pass fixes all.
        start = int(rng.integers(n))
        for k in range(n):
            j = (start + k) % n
            if perm[j] != values[i] and perm[i] != values[j]:
                perm[i], perm[j] = perm[j], perm[i]
                break
        else:  # pragma: no cover - cannot happen when no value covers more than half
            raise DataError(f"easy-vqa-statements: no balanced assignment of {what} found")
    return perm


def build_statements(split: str, seed: int = 0, questions: Sequence[VQAExample] | None = None
                     ) -> tuple[list[ClassificationExample], StatementReport]:
    """Make the ``easy-vqa-statements`` examples of one split, deterministically for a given seed.

    Args:
        split: ``"train"`` or ``"test"`` (the easy-VQA split whose images and questions are used).
        seed: draws which wrong colour/shape each image's false statements name.
        questions: the split's questions (default: :func:`read_easy_vqa` of ``split``).

    Returns:
        ``(examples, report)``. Examples come image by image (image ids ascending); each has ``label`` 1 (true) or 0
        (false), ``group`` the statement type, ``example_id`` ``"<image_id>-<k>"``.
    """
    if split not in EASY_VQA_SPLITS:
        raise DataError(f"unknown easy-VQA split {split!r}: expected one of {', '.join(EASY_VQA_SPLITS)}")
    attributes, report = read_image_attributes(read_easy_vqa(split) if questions is None else questions)
    report.split = split
    if report.no_colour or report.no_shape or report.conflicting:
        logger.warning("easy-vqa-statements %s: left out %d images without a colour, %d without a shape, %d with "
                       "conflicting answers", split, report.no_colour, report.no_shape, report.conflicting)
    image_ids = sorted(attributes, key=lambda i: (len(i), i))  # numeric order for the integer ids of easy-VQA
    colours = [attributes[i][0] for i in image_ids]
    shapes = [attributes[i][1] for i in image_ids]
    rng = np.random.default_rng([seed, EASY_VQA_SPLITS.index(split)])
    other_colour = _derangement(colours, rng, "colour")
    other_shape = _derangement(shapes, rng, "shape")
    other_pair = _derangement(list(zip(colours, shapes)), rng, "colour and shape")
    examples: list[ClassificationExample] = []
    for n, image_id in enumerate(image_ids):
        colour, shape = colours[n], shapes[n]
        made = [  # (type, text, label)
            ("colour", f"the shape is {colour}", 1),
            ("colour", f"the shape is {other_colour[n]}", 0),
            ("negated colour", f"the shape is not {other_colour[n]}", 1),
            ("negated colour", f"the shape is not {colour}", 0),
            ("shape", f"there is a {shape}", 1),
            ("shape", f"there is a {other_shape[n]}", 0),
            ("negated shape", f"there is no {other_shape[n]}", 1),
            ("negated shape", f"there is no {shape}", 0),
            ("colour+shape", f"there is a {colour} {shape}", 1),
            ("colour+shape", "there is a {} {}".format(*other_pair[n]), 0),
        ]
        for pos, k in enumerate(rng.permutation(len(made))):  # no fixed true/false position within an image
            kind, text, label = made[k]
            examples.append(ClassificationExample(example_id=f"{image_id}-{pos}", image_id=image_id, text=text,
                                                  label=label, group=kind))
    report.statements = len(examples)
    report.true = sum(ex.label for ex in examples)  # type: ignore[misc]
    report.per_type = dict(Counter(ex.group for ex in examples))  # type: ignore[arg-type]
    return examples, report


def _majority_share(groups: dict[Any, Counter]) -> float:
    total = sum(sum(c.values()) for c in groups.values())
    return 100.0 * sum(max(c.values()) for c in groups.values()) / total


def ceilings(examples: Sequence[ClassificationExample]) -> dict[str, float]:
    """The best accuracy, in percent, of predictors that see one modality, measured on ``examples`` themselves.

    ``text_only``: the majority label of each statement string, scored on the same examples (an upper bound for any
    text-only model); ``image_only``: the majority label of each image; ``majority``: one label for everything.
    """
    if not examples:
        raise DataError("ceilings: no examples")
    by_text: dict[str, Counter] = defaultdict(Counter)
    by_image: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for ex in examples:
        if ex.label is None:
            raise DataError(f"ceilings: example {ex.example_id!r} has no label")
        by_text[ex.text][ex.label] += 1
        by_image[ex.image_id][ex.label] += 1
        overall[ex.label] += 1
    return {"text_only": _majority_share(by_text), "image_only": _majority_share(by_image),
            "majority": _majority_share({None: overall})}


def captions(split: str, questions: Sequence[VQAExample] | None = None) -> list[tuple[str, str]]:
    """``easy-vqa-captions``: ``(image_id, caption)`` pairs, :data:`CAPTION_TEMPLATES` filled with each image's colour
    and shape as told by its own answers (images whose colour or shape cannot be read are counted in
    :func:`read_image_attributes`' report, logged, and get no caption), image by image in id order."""
    attributes, report = read_image_attributes(read_easy_vqa(split) if questions is None else questions)
    missing = report.images - report.images_used
    if missing:
        logger.info("easy-vqa-captions %s: %d of %d images have no caption (colour or shape not told by their "
                    "answers: %d without a colour, %d without a shape, %d conflicting)", split, missing,
                    report.images, report.no_colour, report.no_shape, report.conflicting)
    ids = sorted(attributes, key=lambda i: (len(i), i))
    return [(i, t.format(colour=attributes[i][0], shape=attributes[i][1])) for i in ids for t in CAPTION_TEMPLATES]
