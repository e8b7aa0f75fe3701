"""Pretraining texts: the text example type and the readers of the text-only layouts.

A :class:`TextExample` is one text (a caption, or a question with its given answers) about one image. Its sources
(read by :func:`vlm.data.readers.read_texts`, the one reader of a pretraining ``--data`` spec):

* ``easy-vqa`` and VQA layouts (official VQA v2, LXMERT's json list): questions, through :func:`from_vqa`;
* ``easy-vqa-captions`` (built in): captions of the easy-VQA images (:func:`vlm.data.easy_vqa.captions`);
* COCO captions (:func:`read_coco_captions`): ``{"annotations": [{image_id, caption}]}``;
* JSONL (:func:`read_text_jsonl`): one ``{"image_id", "text", "answers"?}`` per line.

Malformed rows raise :class:`vlm.errors.DataError` naming the file, the row and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm.data.vqa import PathLike, VQAExample
from vlm.errors import DataError
from vlm.io import jsonl_rows, read_json


@dataclass
class TextExample:
    """One text about one image; ``answers`` holds the given answers when the text is a question."""

    image_id: str
    text: str
    answers: list[str] | None = None


def _text(value: Any, where: str, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {field_name!r} must be a non-empty string, got {value!r}")
    return value


def from_vqa(examples: list[VQAExample]) -> list[TextExample]:
    """Questions as texts: each keeps its image and its human answers (None when it has none: test splits, LXMERT's
    json, whose soft ``label`` is not carried over)."""
    return [TextExample(e.image_id, e.question, list(e.answers) or None) for e in examples]


def read_text_jsonl(path: PathLike) -> list[TextExample]:
    """One ``{"image_id", "text", "answers"?}`` object a line."""
    out = []
    for where, row in jsonl_rows(path):
        if "image_id" not in row:
            raise DataError(f"{where}: expected an object with 'image_id' and 'text', got {str(row)[:80]!r}")
        answers = row.get("answers")
        if answers is not None and not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
            raise DataError(f"{where}: 'answers' must be a list of strings, got {answers!r}")
        out.append(TextExample(str(row["image_id"]), _text(row.get("text"), where, "text"), answers or None))
    return out


def read_coco_captions(path: PathLike) -> list[TextExample]:
    """COCO captions json: ``{"annotations": [{image_id, caption}]}``."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: expected COCO captions json with an 'annotations' list")
    out = []
    for n, row in enumerate(data["annotations"]):
        where = f"{path}, annotations[{n}]"
        if not isinstance(row, dict) or "image_id" not in row:
            raise DataError(f"{where}: expected {{'image_id', 'caption'}}, got {row!r:.80}")
        out.append(TextExample(str(row["image_id"]), _text(row.get("caption"), where, "caption")))
    return out
