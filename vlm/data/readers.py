"""Data specs to examples: the one place a ``--data`` string is read, for every command.

A spec is a built-in name (:mod:`vlm.data.builtin`: ``easy-vqa``, ``sort-of-clevr``, ``scenes`` and their
``-captions`` / ``-statements``), a folder in the CLEVR v1.0 layout (:mod:`vlm.data.scenes.clevr`) or files in a
published layout. :func:`read_vqa` gives
:class:`~vlm.data.vqa.VQAExample` lists, :func:`read_classification`
:class:`~vlm.data.classification.ClassificationExample` lists with their :class:`~vlm.data.classification.ClassList`,
:func:`read_texts` (pretraining) :class:`~vlm.data.texts.TextExample` lists. A ``.json`` file's layout is told by its
content, by :func:`json_layout` alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlm.data import scenes as _scenes
from vlm.data.builtin import BUILTIN_DATA, GENERATED_WORLDS
from vlm.data.classification import (
    HATEFUL_MEMES_CLASSES,
    ClassificationExample,
    ClassList,
    jsonl_classes,
    read_hateful_memes,
    read_jsonl,
)
from vlm.data.easy_vqa import STATEMENT_CLASSES, build_statements, captions, read_easy_vqa
from vlm.data.scenes import clevr
from vlm.data.texts import TextExample, from_vqa, read_coco_captions, read_text_jsonl
from vlm.data.vqa import PathLike, VQAExample
from vlm.data.vqa_formats import read_lxmert_json, read_vqa_v2
from vlm.errors import DataError
from vlm.io import jsonl_rows, read_json

logger = logging.getLogger(__name__)

#: The built-in data of each fine-tuning task (easy-VQA's; ``vlm.data.builtin.task_data`` names the others).
BUILTIN_TASK_DATA = {"vqa": "easy-vqa", "classify": "easy-vqa-statements"}


def _generated(spec: str, cache_dir: PathLike | None) -> tuple[Path, str] | None:
    """``(folder, kind)`` of a generated world's built-in name (generated on first use), else None."""
    world, kind = BUILTIN_DATA.get(spec, (None, None))
    if world not in GENERATED_WORLDS:
        return None
    return _scenes.dataset_root(world, cache_dir), kind  # type: ignore[arg-type]


def _wrong_kind(spec: str, kind: str, wanted: str) -> DataError:
    return DataError(f"{spec}: these are {kind}, not {wanted}")


def nonempty(examples: list, spec: str) -> list:
    """``examples``, or a :class:`DataError` naming the data when there are none (an empty file is named as such,
    not blamed on the feature store later)."""
    if not examples:
        raise DataError(f"{spec}: no examples in the data (an empty file or list)")
    return examples


#: What :func:`json_layout` tells apart.
JSON_LAYOUTS = ("vqa-v2", "lxmert", "coco-captions")

_VQA_SPECS = ("easy-vqa, sort-of-clevr, scenes, a CLEVR-layout folder, QUESTIONS.json,ANNOTATIONS.json (VQA v2) or "
              "an LXMERT .json list")


def _describe(data: Any) -> str:
    if isinstance(data, list):
        return f"a list of {type(data[0]).__name__}"
    if isinstance(data, dict):
        return f"an object with keys {sorted(data)[:5]}"
    return f"a {type(data).__name__}"


def json_layout(path: PathLike) -> str:
    """The layout of a ``.json`` data file, one of :data:`JSON_LAYOUTS`, told by its content: an object with
    ``questions`` is VQA v2 questions; an object with ``annotations`` (``[{image_id, caption}]``) is COCO captions; a
    list of objects (or an empty list) is LXMERT's preprocessed VQA json. Rows are checked by the readers, not here.

    Raises:
        DataError: naming the file and the layouts expected, when it is none of them (a VQA v2 annotations file on
            its own is named as such).
    """
    data = read_json(path)
    if isinstance(data, dict) and "questions" in data:
        return "vqa-v2"
    if isinstance(data, dict) and "annotations" in data:
        rows = data["annotations"]
        first = rows[0] if isinstance(rows, list) and rows else None
        if isinstance(first, dict) and "question_id" in first and "caption" not in first:
            raise DataError(f"{path}: a VQA v2 annotations file has no questions; give it after its questions file, "
                            "as QUESTIONS.json,ANNOTATIONS.json")
        return "coco-captions"
    if isinstance(data, list) and (not data or isinstance(data[0], dict)):
        return "lxmert"
    raise DataError(f"{path}: not a known .json layout ({_describe(data)}); expected COCO captions json "
                    "({'annotations': [{image_id, caption}]}), VQA v2 questions json ({'questions': [{image_id, "
                    "question, question_id}]}) or an LXMERT json list ([{question_id, img_id, sent}])")


def read_vqa(spec: str, split: str, cache_dir: PathLike | None = None) -> list[VQAExample]:
    """``easy-vqa`` (built in), ``QUESTIONS.json,ANNOTATIONS.json`` (official VQA v2), ``QUESTIONS.json`` (VQA v2
    without answers) or an LXMERT-preprocessed ``.json`` list. ``split`` picks the split of built-in data.

    Raises:
        DataError: an unknown layout (a COCO captions file has no questions), a malformed row (named), or no
            examples at all.
    """
    return nonempty(_read_vqa(spec, split, cache_dir), spec)


def _read_vqa(spec: str, split: str, cache_dir: PathLike | None = None) -> list[VQAExample]:
    if spec == "easy-vqa":
        return read_easy_vqa(split)
    generated = _generated(spec, cache_dir)
    if generated is not None:
        if generated[1] != "questions":
            raise _wrong_kind(spec, generated[1], f"questions (VQA data must be {_VQA_SPECS})")
        return clevr.read_questions(generated[0], split)
    if clevr.is_clevr_layout(spec):
        return clevr.read_questions(spec, split)
    if "," in spec:
        q, a = spec.split(",", 1)
        return read_vqa_v2(q, a)
    path = Path(spec)
    if path.suffix != ".json":
        raise DataError(f"{spec}: VQA data must be {_VQA_SPECS}")
    return _read_vqa_json(path, json_layout(path))


def _read_vqa_json(path: Path, layout: str) -> list[VQAExample]:
    if layout == "vqa-v2":
        return read_vqa_v2(path)
    if layout == "lxmert":
        return read_lxmert_json(path)
    raise DataError(f"{path}: a COCO captions file has no questions; VQA data must be {_VQA_SPECS}")


def read_texts(spec: str, split: str = "train", cache_dir: PathLike | None = None) -> list[TextExample]:
    """Pretraining texts from ``spec``: ``easy-vqa``; ``easy-vqa-captions``; a ``.jsonl`` file of
    ``{image_id, text, answers?}``; a ``.json`` file in any layout :func:`json_layout` knows (COCO captions, VQA v2
    questions without answers, an LXMERT list); or ``QUESTIONS.json,ANNOTATIONS.json`` (VQA v2). Questions keep their
    human answers (:func:`vlm.data.texts.from_vqa`). Sources joined by ``+`` are read in turn and concatenated.

    Raises:
        DataError: an unknown format or layout, a malformed row (named), or a source without texts (named).
    """
    if "+" in spec:
        return [e for part in spec.split("+") for e in read_texts(part, split, cache_dir)]
    texts = _read_texts(spec, split, cache_dir)
    if not texts:
        raise DataError(f"{spec}: no texts in the data (an empty file or list)")
    return texts


def _read_texts(spec: str, split: str, cache_dir: PathLike | None = None) -> list[TextExample]:
    if spec == "easy-vqa-captions":
        return [TextExample(image_id, text) for image_id, text in captions(split)]
    generated = _generated(spec, cache_dir)
    if generated is not None:
        root, kind = generated
        if kind == "captions":
            return clevr.read_captions(root, split)
        if kind == "questions":
            return from_vqa(clevr.read_questions(root, split))
        raise _wrong_kind(spec, kind, "pretraining texts (questions or captions)")
    if clevr.is_clevr_layout(spec):
        return from_vqa(clevr.read_questions(spec, split))
    if spec == "easy-vqa" or "," in spec:
        return from_vqa(_read_vqa(spec, split))
    path = Path(spec)
    if path.suffix == ".jsonl":
        return read_text_jsonl(path)
    if path.suffix == ".json":
        layout = json_layout(path)
        return read_coco_captions(path) if layout == "coco-captions" else from_vqa(_read_vqa_json(path, layout))
    raise DataError(f"{spec}: unknown text format; expected a built-in name (easy-vqa, sort-of-clevr, scenes, with "
                    "-captions), a CLEVR-layout folder, a .jsonl file, a COCO captions .json, "
                    "QUESTIONS.json,ANNOTATIONS.json (VQA v2) or an LXMERT .json list")


def _is_hateful_memes(path: Path) -> bool:
    first = next(jsonl_rows(path), None)
    return first is not None and "img" in first[1]


def read_classification(spec: str, split: str, classes: ClassList | None = None,
                        cache_dir: PathLike | None = None) -> tuple[list[ClassificationExample], ClassList]:
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
    generated = _generated(spec, cache_dir)
    if generated is not None:
        if generated[1] != "statements":
            raise _wrong_kind(spec, generated[1], "statements to classify (the -statements data)")
        return nonempty(clevr.read_statements(generated[0], split), spec), clevr.STATEMENT_CLASSES
    if clevr.is_clevr_layout(spec):
        return nonempty(clevr.read_statements(spec, split), spec), clevr.STATEMENT_CLASSES
    path = Path(spec)
    if _is_hateful_memes(path):
        classes = classes or HATEFUL_MEMES_CLASSES
        return nonempty(read_hateful_memes(path, classes), spec), classes
    classes = classes or jsonl_classes(path)
    return nonempty(read_jsonl(path, classes), spec), classes
