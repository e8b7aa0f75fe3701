"""Data specs to examples: the one place a ``--data`` string is read, for every command.

A spec is a built-in name (``easy-vqa``, ``easy-vqa-statements``; :func:`vlm.data.easy_vqa.is_builtin`) or files in a
published layout. :func:`read_vqa` gives :class:`~vlm.data.vqa.VQAExample` lists, :func:`read_classification`
:class:`~vlm.data.classification.ClassificationExample` lists with their :class:`~vlm.data.classification.ClassList`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlm.data.classification import (HATEFUL_MEMES_CLASSES, ClassificationExample, ClassList, jsonl_classes,
                                     read_hateful_memes, read_jsonl)
from vlm.data.easy_vqa import STATEMENT_CLASSES, build_statements, read_easy_vqa
from vlm.data.vqa import VQAExample, read_lxmert_json, read_vqa_v2
from vlm.errors import DataError
from vlm.io import jsonl_rows, read_json

logger = logging.getLogger(__name__)

#: The built-in data of each fine-tuning task.
BUILTIN_TASK_DATA = {"vqa": "easy-vqa", "classify": "easy-vqa-statements"}


def nonempty(examples: list, spec: str) -> list:
    """``examples``, or a :class:`DataError` naming the data when there are none (an empty file is named as such,
    not blamed on the feature store later)."""
    if not examples:
        raise DataError(f"{spec}: no examples in the data (an empty file or list)")
    return examples


def read_vqa(spec: str, split: str) -> list[VQAExample]:
    """``easy-vqa`` (built in), ``QUESTIONS.json,ANNOTATIONS.json`` (official VQA v2), ``QUESTIONS.json`` (VQA v2
    without answers) or an LXMERT-preprocessed ``.json`` list. ``split`` picks the split of built-in data.

    Raises:
        DataError: an unknown layout, a malformed row (named), or no examples at all.
    """
    return nonempty(_read_vqa(spec, split), spec)


def _read_vqa(spec: str, split: str) -> list[VQAExample]:
    if spec == "easy-vqa":
        return read_easy_vqa(split)
    if "," in spec:
        q, a = spec.split(",", 1)
        return read_vqa_v2(q, a)
    path = Path(spec)
    if path.suffix != ".json":
        raise DataError(f"{spec}: VQA data must be easy-vqa, QUESTIONS.json,ANNOTATIONS.json (VQA v2) or an "
                        "LXMERT .json list")
    head = read_json(path)
    return read_vqa_v2(path) if isinstance(head, dict) else read_lxmert_json(path)


def _is_hateful_memes(path: Path) -> bool:
    first = next(jsonl_rows(path), None)
    return first is not None and "img" in first[1]


def read_classification(spec: str, split: str, classes: ClassList | None = None
                        ) -> tuple[list[ClassificationExample], ClassList]:
    """``easy-vqa-statements`` (built in), a JSONL of ``{image_id, text, label}`` or the Hateful Memes layout
    (``{id, img, label, text}``, recognised by its ``img`` field), with the class list the labels were encoded with.

    Args:
        classes: encode labels with this list (a held-out file must use the training file's); None: the layout's
            own (``false``/``true`` for statements, ``0``/``1`` for Hateful Memes) or the one the file's labels give.
    """
    if spec == "easy-vqa-statements":
        examples, report = build_statements(split)
        logger.info("easy-vqa-statements %s: %s", split, report.as_dict())
        return examples, STATEMENT_CLASSES
    path = Path(spec)
    if _is_hateful_memes(path):
        classes = classes or HATEFUL_MEMES_CLASSES
        return nonempty(read_hateful_memes(path, classes), spec), classes
    classes = classes or jsonl_classes(path)
    return nonempty(read_jsonl(path, classes), spec), classes
