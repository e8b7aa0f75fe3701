"""Image + text classification data: the example type, the class list and two published layouts.

* plain JSONL, one object a line: ``{"image_id", "text", "label"}`` (optional ``"id"``; ``label`` absent in test files);
* Hateful Memes: ``{"id", "img", "label", "text"}`` with ``img`` like ``"img/42953.png"`` (image id ``"42953"``);
  ``label`` (0 not hateful, 1 hateful) is absent in test files.

Labels are mapped to class ids through a :class:`ClassList`; a label outside it is a :class:`vlm.errors.DataError`
naming the file and line. The metrics are in :mod:`downstream.classification`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from vlm.errors import DataError
from vlm.io import jsonl_rows, read_json, write_text

__all__ = ["HATEFUL_MEMES_CLASSES", "ClassList", "ClassificationExample", "check_training_labels", "jsonl_classes",
           "read_hateful_memes", "read_jsonl"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass
class ClassificationExample:
    """One (image, text) pair to classify.

    Attributes:
        example_id: the row's id (``id`` field, else the 1-based line number), as a string.
        image_id: the image's id as a string, the key into the feature store.
        text: the text paired with the image.
        label: class id into the dataset's :class:`ClassList`; None for unlabelled (test) rows.
        group: an optional sub-population name for per-group reporting (e.g. a statement template type).
    """

    example_id: str
    image_id: str
    text: str
    label: int | None
    group: str | None = None


def _label_name(label: Any) -> str | None:
    """Labels compare as strings: 1, "1" and 1.0 are the same class; booleans and other types are not labels."""
    if isinstance(label, bool):
        return None
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if isinstance(label, (int, str)):
        return str(label)
    return None


class ClassList:
    """The ordered classes of a classification head: label ↔ class id."""

    def __init__(self, names: Iterable[Any]):
        self.names: list[str] = []
        for n in names:
            name = _label_name(n)
            if name is None:
                raise DataError(f"class list: {n!r} is not a class name (expected a string or an integer)")
            self.names.append(name)
        self.index = {n: i for i, n in enumerate(self.names)}
        if len(self.index) != len(self.names):
            raise DataError(f"class list: repeated class in {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ClassList({self.names})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassList) and other.names == self.names

    def encode(self, label: Any, where: str = "") -> int:
        """The class id of ``label``.

        Raises:
            DataError: the label is not one of the classes; ``where`` (file and row) starts the message.
        """
        idx = self.index.get(_label_name(label))  # type: ignore[arg-type]
        if idx is None:
            raise DataError(f"{where + ': ' if where else ''}field 'label': {label!r} is not one of the classes "
                            f"{self.names}")
        return idx

    def decode(self, index: int) -> str:
        return self.names[index]

    def save(self, path: PathLike) -> None:
        """Write ``{"classes": [...]}`` (atomically): ``classes.json`` of every classification model folder."""
        write_text(path, json.dumps({"classes": self.names}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> ClassList:
        """Read ``{"classes": [...]}`` (:meth:`save`) or a plain json list of class names."""
        data = read_json(path)
        names = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(names, list):
            raise DataError(f"{path}: expected {{\"classes\": [...]}} or a JSON list of class names")
        return cls(names)


#: Hateful Memes: label 0 is "not hateful", 1 is "hateful".
HATEFUL_MEMES_CLASSES = ClassList([0, 1])


def _required(row: dict, key: str, where: str, kinds: tuple[type, ...] = (str,)) -> Any:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise DataError(f"{where}: field {key!r}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def _text(row: dict, where: str) -> str:
    text = _required(row, "text", where)
    if not text.strip():
        raise DataError(f"{where}: field 'text': the text is empty")
    return text


def _infer_classes(rows: list[tuple[str, dict, ClassificationExample]], path: PathLike) -> ClassList:
    names = {_label_name(r["label"]) for _, r, _ in rows if r.get("label") is not None}
    if None in names:
        where, row, _ = next((w, r, e) for w, r, e in rows if r.get("label") is not None
                             and _label_name(r["label"]) is None)
        raise DataError(f"{where}: field 'label': expected a string or an integer, got {row['label']!r}")
    numeric = all(n.lstrip("-").isdigit() for n in names)
    classes = ClassList(sorted(names, key=int) if numeric else sorted(names))
    logger.info("%s: classes inferred from the file: %s", path, classes.names)
    return classes


def _encode_labels(rows: list[tuple[str, dict, ClassificationExample]],
                   classes: ClassList | Sequence[Any] | None, path: PathLike) -> list[ClassificationExample]:
    if classes is None:
        classes = _infer_classes(rows, path)
    elif not isinstance(classes, ClassList):
        classes = ClassList(classes)
    out = []
    for where, row, ex in rows:
        if row.get("label") is not None:
            ex.label = classes.encode(row["label"], where)
        out.append(ex)
    return out


def jsonl_classes(path: PathLike) -> ClassList:
    """The class list :func:`read_jsonl` infers from a file's labels (numeric order when every label is an integer,
    alphabetical otherwise): what a training file defines, and a held-out file must be read with."""
    return _infer_classes([(where, row, None) for where, row in jsonl_rows(path)], path)  # type: ignore[misc]


def check_training_labels(examples: Sequence[ClassificationExample], classes: ClassList, what: str) -> None:
    """Warn, naming the data, when training labels cannot teach what the user likely expects: a single class present
    (the classifier learns a constant), or integer labels whose class ids differ from their values (label ``2`` is
    class id 1 when the labels are 1 and 2; predictions and ``classes.json`` use the ids)."""
    present = sorted({e.label for e in examples if e.label is not None})
    if len(present) < 2:
        names = [classes.names[i] for i in present]
        logger.warning("%s: the training data has a single class (%s) of the %d classes %s: the classifier can only "
                       "learn to predict it", what, names[0] if names else "none", len(classes), classes.names)
    moved = [f"{n}→{i}" for i, n in enumerate(classes.names) if n.lstrip("-").isdigit() and int(n) != i]
    if moved:
        logger.warning("%s: integer labels map to other class ids than their values (%s); predictions and "
                       "classes.json use the ids", what, ", ".join(moved))


def read_jsonl(path: PathLike, classes: ClassList | Sequence[Any] | None = None) -> list[ClassificationExample]:
    """Read ``{"image_id", "text", "label"}`` lines (optional ``"id"``; a missing or null label means unlabelled).

    Args:
        path: the JSONL file.
        classes: the class list; None infers it from the file's labels (numeric order when every label is an
            integer, alphabetical otherwise) — pass it explicitly for a test or validation file so that ids agree
            with training.

    Raises:
        DataError: naming the file, the 1-based line and the field (missing image_id or text, empty text, a label
            outside ``classes``, a repeated id).
    """
    rows, seen = [], set()
    for where, row in jsonl_rows(path):
        example_id = str(_required(row, "id", where, (str, int))) if "id" in row else where.rsplit(" ", 1)[1]
        if example_id in seen:
            raise DataError(f"{where}: id {example_id!r} appears twice")
        seen.add(example_id)
        ex = ClassificationExample(example_id=example_id, image_id=str(_required(row, "image_id", where, (str, int))),
                                   text=_text(row, where), label=None)
        rows.append((where, row, ex))
    return _encode_labels(rows, classes, path)


def read_hateful_memes(path: PathLike, classes: ClassList | Sequence[Any] | None = None) -> list[ClassificationExample]:
    """Read a Hateful Memes ``.jsonl`` (``train.jsonl``, ``dev_seen.jsonl``, ``test_unseen.jsonl`` ...).

    The image id is the file stem of ``img`` (``"img/42953.png"`` → ``"42953"``), the key the feature extractor gives
    the images of the ``img/`` folder. Test files have no label: their examples have ``label=None``.

    Args:
        classes: defaults to :data:`HATEFUL_MEMES_CLASSES` (0, 1).

    Raises:
        DataError: naming the file, the 1-based line and the field (missing ``id``/``img``/``text``, a label outside
            the classes, a repeated id).
    """
    rows, seen = [], set()
    for where, row in jsonl_rows(path):
        example_id = str(_required(row, "id", where, (str, int)))
        if example_id in seen:
            raise DataError(f"{where}: id {example_id!r} appears twice")
        seen.add(example_id)
        img = _required(row, "img", where)
        image_id = PurePosixPath(img.replace("\\", "/")).stem
        if not image_id:
            raise DataError(f"{where}: field 'img': expected an image path like 'img/42953.png', got {img!r}")
        rows.append((where, row, ClassificationExample(example_id=example_id, image_id=image_id,
                                                       text=_text(row, where), label=None)))
    return _encode_labels(rows, HATEFUL_MEMES_CLASSES if classes is None else classes, path)
