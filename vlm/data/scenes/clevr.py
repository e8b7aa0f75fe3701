"""Read a folder in the CLEVR v1.0 layout — the real CLEVR, or a world vlm generated — into vlm's example types.

The layout (Johnson et al. 2017)::

    <root>/images/<split>/<stem>.png
    <root>/questions/<prefix>_<split>_questions.json   {"info", "questions": [{image_index, image_filename, split,
                                                        question, answer?, question_family_index, program?, ...}]}
    <root>/scenes/<prefix>_<split>_scenes.json         {"info", "scenes": [{image_index, image_filename, objects}]}

Image ids are the images' file stems (``CLEVR_train_000000``), which is what ``vlm extract --source
<root>/images/<split>`` names them. A question's family is its ``family`` field (generated worlds) or the last
function of its ``program`` mapped onto CLEVR's five question types (``exist``, ``count``, ``compare_integer``,
``query_attribute``, ``compare_attribute``); :class:`~vlm.data.vqa.VQAExample` carries the family in
``answer_type`` and its group in ``question_type``, so evaluation reports accuracy per family and per group.
Generated worlds add ``captions/`` and ``statements/`` files of the same shape. The real CLEVR's test split has no
answers: asked for ``test``, a folder whose test questions have none reads ``val`` instead (logged).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlm.data.classification import ClassificationExample, ClassList
from vlm.data.texts import TextExample
from vlm.data.vqa import VQAExample
from vlm.errors import DataError
from vlm.io import json_field, read_json

logger = logging.getLogger(__name__)

#: Class 0 = the statement is false for the image, 1 = true.
STATEMENT_CLASSES = ClassList(["false", "true"])

#: CLEVR program functions → question type (the five types of the CLEVR paper).
_CLEVR_TYPES = {
    "exist": "exist", "count": "count", "equal_integer": "compare_integer", "less_than": "compare_integer",
    "greater_than": "compare_integer", "query_color": "query_attribute", "query_shape": "query_attribute",
    "query_size": "query_attribute", "query_material": "query_attribute", "equal_color": "compare_attribute",
    "equal_shape": "compare_attribute", "equal_size": "compare_attribute", "equal_material": "compare_attribute",
}

KINDS = ("questions", "scenes", "captions", "statements")


def is_clevr_layout(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a ``questions/`` or ``statements/`` folder (the CLEVR layout)."""
    p = Path(path)
    return p.is_dir() and ((p / "questions").is_dir() or (p / "statements").is_dir() or (p / "captions").is_dir())


def split_file(root: Path, kind: str, split: str) -> Path:
    """``<root>/<kind>/*_<split>_<kind>.json`` (exactly one).

    Raises:
        DataError: none or several, naming the folder and the pattern.
    """
    found = sorted((root / kind).glob(f"*_{split}_{kind}.json"))
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({', '.join(f.name for f in found)})"
        raise DataError(f"{root / kind}: {what} matching *_{split}_{kind}.json (the CLEVR v1.0 layout)")
    return found[0]


def _rows(root: Path, kind: str, split: str) -> tuple[Path, list[dict[str, Any]]]:
    path = split_file(root, kind, split)
    data = read_json(path)
    rows = data.get(kind) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected an object with a {kind!r} list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: {kind}[{i}]: expected an object, got {type(row).__name__}")
    return path, rows


def _image_id(row: dict[str, Any], where: str) -> str:
    name = json_field(row, "image_filename", where, str)
    return Path(name).stem


def _family(row: dict[str, Any], where: str) -> tuple[str | None, str | None]:
    if isinstance(row.get("family"), str):
        return row["family"], row.get("group") if isinstance(row.get("group"), str) else None
    program = row.get("program")
    if isinstance(program, list) and program and isinstance(program[-1], dict):
        fn = program[-1].get("function", program[-1].get("type"))
        kind = _CLEVR_TYPES.get(fn) if isinstance(fn, str) else None
        return kind, kind
    return None, None


def _answered_split(root: Path, split: str) -> str:
    if split != "test":
        return split
    try:
        _, rows = _rows(root, "questions", "test")
    except DataError:
        rows = []
    if rows and all("answer" in r for r in rows):
        return split
    if (root / "questions").is_dir() and list((root / "questions").glob("*_val_questions.json")):
        logger.info("%s: the test questions have no answers; reading val as the held-out split", root)
        return "val"
    return split


def read_questions(root: str | Path, split: str) -> list[VQAExample]:
    """The questions of ``split`` as VQA examples (no answers when the file has none).

    Raises:
        DataError: a missing file or field, named with the file and row.
    """
    root = Path(root)
    path, rows = _rows(root, "questions", _answered_split(root, split))
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: questions[{i}]"
        question = json_field(row, "question", where, str)
        if not question.strip():
            raise DataError(f"{where}: field 'question' is empty")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, (str, int, bool)):
            raise DataError(f"{where}: field 'answer': expected a string, got {answer!r}")
        answer = None if answer is None else str(answer).lower() if not isinstance(answer, str) else answer
        family, group = _family(row, where)
        qid = row.get("question_index", i)
        out.append(VQAExample(question_id=qid if isinstance(qid, int) else i, image_id=_image_id(row, where),
                              question=question, answers=[answer] if answer is not None else [],
                              answer_type=family, question_type=group,
                              label={answer: 1.0} if answer is not None else None,
                              multiple_choice_answer=answer))
    return out


def read_captions(root: str | Path, split: str) -> list[TextExample]:
    """The captions of a generated world's ``split``."""
    root = Path(root)
    path, rows = _rows(root, "captions", split)
    return [TextExample(_image_id(r, f"{path}: captions[{i}]"), json_field(r, "caption", f"{path}: captions[{i}]",
                                                                             str)) for i, r in enumerate(rows)]


def read_statements(root: str | Path, split: str) -> list[ClassificationExample]:
    """The true/false statements of a generated world's ``split`` (label 1 = true, :data:`STATEMENT_CLASSES`;
    ``group`` is the statement's family)."""
    root = Path(root)
    path, rows = _rows(root, "statements", split)
    out = []
    for i, r in enumerate(rows):
        where = f"{path}: statements[{i}]"
        label = r.get("label")
        if not isinstance(label, bool):
            raise DataError(f"{where}: field 'label': expected true or false, got {label!r}")
        out.append(ClassificationExample(example_id=str(i), image_id=_image_id(r, where),
                                         text=json_field(r, "statement", where, str), label=int(label),
                                         group=r.get("family") if isinstance(r.get("family"), str) else None))
    return out


def read_scenes(root: str | Path, split: str) -> dict[str, list[dict[str, Any]]]:
    """Each image's objects (image id → the scene's ``objects`` list)."""
    root = Path(root)
    path, rows = _rows(root, "scenes", split)
    return {_image_id(r, f"{path}: scenes[{i}]"): r.get("objects") or [] for i, r in enumerate(rows)}


def images_dir(root: str | Path, split: str) -> Path:
    """``<root>/images/<split>``: the folder ``vlm extract --source`` reads."""
    return Path(root) / "images" / split
