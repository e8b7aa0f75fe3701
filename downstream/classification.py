"""Image + text classification data and metrics: a plain JSONL layout and the Hateful Memes layout (Kiela et al. 2020).

* plain JSONL, one object a line: ``{"image_id", "text", "label"}`` (optional ``"id"``; ``label`` absent in test files);
* Hateful Memes: ``{"id", "img", "label", "text"}`` with ``img`` like ``"img/42953.png"`` (image id ``"42953"``);
  ``label`` (0 not hateful, 1 hateful) is absent in test files.

Labels are mapped to class ids through a :class:`ClassList`; a label outside it is a :class:`vlm.errors.DataError`
naming the file and line. Metrics are plain functions on numpy arrays and return percentages, like the VQA metrics.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vlm.errors import DataError
from vlm.io import write_text

__all__ = [
    "HATEFUL_MEMES_CLASSES",
    "ClassList",
    "ClassificationExample",
    "accuracy",
    "classification_metrics",
    "macro_f1",
    "read_hateful_memes",
    "read_jsonl",
    "roc_auc",
]

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
        write_text(path, json.dumps({"classes": self.names}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> ClassList:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable class list ({e})") from None
        names = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(names, list):
            raise DataError(f"{path}: expected {{\"classes\": [...]}} or a JSON list of class names")
        return cls(names)


#: Hateful Memes: label 0 is "not hateful", 1 is "hateful".
HATEFUL_MEMES_CLASSES = ClassList([0, 1])


def _jsonl_rows(path: PathLike) -> Iterator[tuple[str, dict]]:
    """``(where, object)`` for each non-blank line; ``where`` is ``"<path>: line <n>"`` (1-based)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


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


def _encode_labels(rows: list[tuple[str, dict, ClassificationExample]],
                   classes: ClassList | Sequence[Any] | None, path: PathLike) -> list[ClassificationExample]:
    if classes is None:
        names = {_label_name(r["label"]) for _, r, _ in rows if r.get("label") is not None}
        if None in names:
            where, row, _ = next((w, r, e) for w, r, e in rows if r.get("label") is not None
                                 and _label_name(r["label"]) is None)
            raise DataError(f"{where}: field 'label': expected a string or an integer, got {row['label']!r}")
        numeric = all(n.lstrip("-").isdigit() for n in names)
        classes = ClassList(sorted(names, key=int) if numeric else sorted(names))
        logger.info("%s: classes inferred from the file: %s", path, classes.names)
    elif not isinstance(classes, ClassList):
        classes = ClassList(classes)
    out = []
    for where, row, ex in rows:
        if row.get("label") is not None:
            ex.label = classes.encode(row["label"], where)
        out.append(ex)
    return out


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
    for where, row in _jsonl_rows(path):
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
    for where, row in _jsonl_rows(path):
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


# --------------------------------------------------------------------------------------------------------------------
# Metrics (percentages)
# --------------------------------------------------------------------------------------------------------------------


def _check_pair(labels: np.ndarray, other: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    labels, other = np.asarray(labels), np.asarray(other)
    if labels.ndim != 1 or len(labels) != len(other):
        raise DataError(f"{name}: expected labels [N] and predictions with the same N, got shapes "
                        f"{labels.shape} and {other.shape}")
    if len(labels) == 0:
        raise DataError(f"{name}: no examples")
    return labels, other


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Share of predicted class ids equal to the labels, in percent."""
    labels, preds = _check_pair(labels, preds, "accuracy")
    return 100.0 * float(np.mean(labels == preds))


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int | None = None) -> float:
    """Unweighted mean of the per-class F1 scores, in percent.

    Args:
        num_classes: average over classes ``0..num_classes-1``; None averages over the classes that occur in the
            labels or the predictions (a class never seen on either side is left out, as scikit-learn does).
            A class with no true positives scores 0.
    """
    labels, preds = _check_pair(labels, preds, "macro_f1")
    classes = np.arange(num_classes) if num_classes is not None else np.union1d(labels, preds)
    f1s = []
    for c in classes:
        tp = float(np.sum((preds == c) & (labels == c)))
        fp = float(np.sum((preds == c) & (labels != c)))
        fn = float(np.sum((preds != c) & (labels == c)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100.0 * float(np.mean(f1s))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0  # mean of ranks s+1 .. e
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of a binary task, in percent (Mann–Whitney U with average ranks for ties, so a tie
    between a positive and a negative counts one half).

    Args:
        labels: 0/1 (or False/True) per example.
        scores: the score of the positive class per example; higher means more positive.

    Raises:
        DataError: labels other than 0/1, or only one class present (the AUC is undefined).
    """
    labels, scores = _check_pair(labels, scores, "roc_auc")
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"roc_auc: binary labels must be 0 or 1, got {sorted(set(labels.tolist()))[:5]}")
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"roc_auc: needs both classes, but all {len(labels)} labels are {int(labels[0])}")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return 100.0 * float(u / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, probs: np.ndarray,
                           groups: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and (two classes) ROC AUC, in percent.

    Args:
        labels: class ids ``[N]``.
        probs: class probabilities or scores ``[N, C]``; a vector ``[N]`` is read as the positive-class probability
            of a binary task (predicted positive at >= 0.5).
        groups: optional group name per example; adds ``per_group`` accuracy (None entries are left out).

    Returns:
        ``accuracy``, ``macro_f1``, ``n`` and, for binary tasks, ``roc_auc`` — None (with a logged warning) when the
        labels hold one class only, so an evaluation of a small split does not stop.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        preds, positive = (probs >= 0.5).astype(np.int64), probs
    elif probs.ndim == 2:
        preds = probs.argmax(axis=1)
        positive = probs[:, 1] if probs.shape[1] == 2 else None
    else:
        raise DataError(f"classification_metrics: probs must be [N] or [N, C], got shape {probs.shape}")
    out: dict[str, Any] = {"accuracy": accuracy(labels, preds), "macro_f1": macro_f1(labels, preds)}
    if positive is not None:
        if len(np.unique(labels)) < 2:
            logger.warning("roc_auc left out: all %d labels are %s", len(labels), labels[0])
            out["roc_auc"] = None
        else:
            out["roc_auc"] = roc_auc(labels, positive)
    out["n"] = len(labels)
    if groups is not None:
        if len(groups) != len(labels):
            raise DataError(f"classification_metrics: {len(groups)} groups for {len(labels)} labels")
        names = sorted({g for g in groups if g is not None})
        idx = np.asarray(list(groups), dtype=object)
        out["per_group"] = {g: accuracy(labels[idx == g], preds[idx == g]) for g in names}
    return out
