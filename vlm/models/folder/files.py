"""Reading and writing a model folder without building a model: its files' names, the task vocabulary,
:func:`describe` (task, arch, config, text length, labels, features record) and the writer (the layout is in
:mod:`vlm.models.folder`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_model

from vlm.config import COMMAND_TASKS, ConfigError, DataConfig, ModelConfig, apply_dict, load_yaml, model_config
from vlm.data.classification import ClassList
from vlm.data.vqa import AnswerVocab
from vlm.errors import CheckpointError, DataError
from vlm.io import atomic_write, published_dir, read_json, write_text
from vlm.models.tasks import TASKS, VLMModel

logger = logging.getLogger(__name__)

FORMAT = "vlm/2"  # the folder format: vlm/1 had no max_text_len
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ANSWERS_NAME = "answers.json"
CLASSES_NAME = "classes.json"
FEATURES_NAME = "features.json"

#: Model tasks that answer (image, text) pairs with a label head: ``vlm predict``, ``serve``, ``evaluate``.
ANSWERING_TASKS = ("vqa", "classification")


def model_task(name: str) -> str:
    """The model task for a task name of the command line or the API (``classify`` → ``classification``).

    Raises:
        ConfigError: not a task name.
    """
    task = COMMAND_TASKS.get(name, name)
    if task not in TASKS:
        raise ConfigError(f"unknown task {name!r}; expected one of {', '.join(sorted({*TASKS, *COMMAND_TASKS}))}")
    return task


def command_task(task: str) -> str:
    """The command-line name of a model task (``classification`` → ``classify``)."""
    return {v: k for k, v in COMMAND_TASKS.items()}.get(task, task)


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a model folder (it has a ``config.json``)."""
    return (Path(path) / CONFIG_NAME).is_file()


def resolve_folder(path: str) -> str:
    """A model preset or folder as given; a run folder (``config.yaml`` and ``model/``, no ``config.json``) is taken
    as its ``model/`` folder, with a note."""
    p = Path(path)
    if not is_model_folder(p) and is_model_folder(p / "model"):
        logger.warning("%s is a run folder: using its model, %s", path, p / "model")
        return str(p / "model")
    return path


@dataclass
class FolderInfo:
    """What a model folder holds, read without its weights (:func:`describe`).

    Attributes:
        path: The folder.
        task: The model task (``encoder``, ``pretraining``, ``vqa``, ``classification``).
        config: The model config.
        format: The folder format (``vlm/1``: no recorded text length; ``vlm/2``).
        max_text_len: The text length the model was trained with (recorded, or the fallback below).
        text_len_source: Where ``max_text_len`` comes from: ``"recorded"``, the run config's path, or ``"default"``.
        labels: The head's labels in row order (answers or classes), or None when the folder has none.
        features: The ``features.json`` record, or None.
    """

    path: Path
    task: str
    config: ModelConfig
    format: str
    max_text_len: int
    text_len_source: str
    labels: list[str] | None = None
    features: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def head_size(self) -> int | None:
        """Rows of the label head: answers (vqa, pretraining with QA) or classes; None without a head."""
        if self.task == "classification":
            return self.config.num_labels
        if self.task == "vqa" or (self.task == "pretraining" and self.config.num_answers > 0):
            return self.config.num_answers
        return None


def read_config(folder: Path) -> tuple[str, ModelConfig, dict[str, Any]]:
    """``(task, model config, the whole config.json)`` of a model folder.

    Raises:
        CheckpointError: no ``config.json``, or one that is not a vlm config (the message names the file and key).
    """
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a vlm checkpoint (no {CONFIG_NAME}; a model folder holds {CONFIG_NAME} "
                              f"and {WEIGHTS_NAME}: model.save_pretrained(dir) or vlm finetune writes one)")
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise KeyError("top level is not an object")
        task, model_dict = meta["task"], meta["model"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as e:
        raise CheckpointError(f"{path}: not a vlm config (expected keys 'task' and 'model'): {e}") from None
    if task not in TASKS:
        raise CheckpointError(f"{path}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if not isinstance(model_dict, dict):
        raise CheckpointError(f"{path}: 'model' is not an object of model config fields")
    cfg = ModelConfig()
    if "classifier_head" not in model_dict:
        cfg.classifier_head = "linear"  # written before the field existed: the classifier was BERT's linear one
    try:
        apply_dict(cfg, model_dict, prefix="model.")
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return task, cfg, meta


def _run_config_text_len(folder: Path) -> tuple[int, str] | None:
    """``data.max_text_len`` of the run a folder belongs to: ``run_config.yaml`` inside a checkpoint, or the run's
    ``config.yaml`` beside a ``model/`` folder."""
    for path in (folder / "run_config.yaml", folder.parent / "config.yaml"):
        if path.is_file():
            try:
                value = (load_yaml(path).get("data") or {}).get("max_text_len")
            except (ConfigError, AttributeError):
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value >= 3:
                return value, str(path)
    return None


def _text_len(folder: Path, meta: dict[str, Any]) -> tuple[int, str]:
    value = meta.get("max_text_len")
    if value is not None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 3:
            raise CheckpointError(f"{folder / CONFIG_NAME}: max_text_len: expected an integer >= 3, got {value!r}")
        return value, "recorded"
    return _run_config_text_len(folder) or (DataConfig().max_text_len, "default")


def read_labels(folder: Path, task: str, head_size: int | None) -> list[str] | None:
    """The labels of the folder's head in row order (``answers.json`` or ``classes.json``), checked against the
    head's size; None when the folder has no label file.

    Raises:
        DataError: a label file that does not fit the head.
    """
    if task == "classification":
        path = folder / CLASSES_NAME
        labels = ClassList.load(path).names if path.is_file() else None
    else:
        path = folder / ANSWERS_NAME
        labels = AnswerVocab.load(path).answers if path.is_file() and head_size else None
    if labels is not None and len(labels) != head_size:
        what = "classes for a classifier" if task == "classification" else "answers for an answer head"
        raise DataError(f"{path}: {len(labels)} {what} of {head_size}; the file does not belong to these weights")
    return labels


def read_features(folder: Path) -> dict[str, Any] | None:
    """The folder's ``features.json`` record (how its training features were made), or None when it has none.

    Raises:
        DataError: a file that is not a JSON object.
    """
    path = Path(folder) / FEATURES_NAME
    if not path.is_file():
        return None
    info = read_json(path)
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object (the feature extraction record)")
    return info


def describe(folder: str | Path) -> FolderInfo:
    """What a model folder holds, without loading its weights (``vlm describe FOLDER``).

    Raises:
        CheckpointError: not a model folder, or an unreadable ``config.json``.
        DataError: label or features files that do not fit.
    """
    folder = Path(folder)
    task, cfg, meta = read_config(folder)
    max_len, source = _text_len(folder, meta)
    info = FolderInfo(path=folder, task=task, config=cfg, format=str(meta.get("format", "vlm/1")),
                      max_text_len=max_len, text_len_source=source, features=read_features(folder),
                      files=sorted(p.name for p in folder.iterdir() if p.is_file()))
    info.labels = read_labels(folder, task, info.head_size)
    return info


def text_len_of(info: FolderInfo) -> int:
    """The folder's text length, with a warning when the folder did not record it."""
    if info.text_len_source != "recorded":
        where = ("the default of data.max_text_len" if info.text_len_source == "default"
                 else f"data.max_text_len of {info.text_len_source}")
        logger.warning("%s records no text length (written before vlm recorded it, or by save_pretrained without "
                       "max_text_len): truncating texts to %d tokens, %s", info.path, info.max_text_len, where)
    return info.max_text_len


def check_folder(folder: str | Path, *, tasks: Sequence[str] | None = None, need_labels: bool = True,
                 need_features: bool = False) -> FolderInfo:
    """What :func:`describe` reads, checked for use without reading the weights (cheap: a command fails before it
    loads anything).

    Args:
        tasks: the model tasks the caller accepts (None: any).
        need_labels: a vqa folder without ``answers.json`` is refused.
        need_features: a folder without a ``features.json`` naming a backend is refused (to extract new images).

    Raises:
        CheckpointError, DataError: one line naming the folder and what is missing or does not fit.
    """
    folder = Path(folder)
    info = describe(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}; expected a model folder with {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME}")
    if tasks is not None and info.task not in tasks:
        raise DataError(f"{folder}: a {info.task!r} model folder; expected a fine-tuned "
                        f"{' or '.join(repr(t) for t in tasks)} model folder")
    if info.labels is None and need_labels and info.task == "vqa":
        raise DataError(f"{folder}: no {ANSWERS_NAME} (the answer table of the head); re-run vlm finetune")
    if need_features and not (info.features or {}).get("backend"):
        raise DataError(f"{folder}: no {FEATURES_NAME} naming an extraction backend; re-run vlm finetune")
    return info


def write_model_files(model: VLMModel, directory: str | Path, *, max_text_len: int | None = None) -> Path:
    """``config.json`` (format, task, model config, text length) and ``model.safetensors`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT, "task": model.task, "model": model.config.to_dict()}
    if max_text_len is not None:
        meta["max_text_len"] = int(max_text_len)
    write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
    with atomic_write(directory / WEIGHTS_NAME) as tmp:
        save_model(model, str(tmp), metadata={"task": model.task, "format": FORMAT})
    return directory


def save_model_folder(folder: str | Path, model: VLMModel, *, max_text_len: int,
                      answers: AnswerVocab | None = None, classes: ClassList | None = None,
                      features: dict[str, Any] | None = None) -> Path:
    """A whole model folder, published atomically (written aside, then renamed into place): weights and config
    with the text length the model was trained with, the answer table or class list, the features record."""
    folder = Path(folder)
    with published_dir(folder) as tmp:
        write_model_files(model, tmp, max_text_len=max_text_len)
        if answers is not None:
            answers.save(tmp / ANSWERS_NAME)
        if classes is not None:
            classes.save(tmp / CLASSES_NAME)
        if features is not None:
            write_text(tmp / FEATURES_NAME, json.dumps(features, indent=2, default=str) + "\n")
    return folder


def arch_of(preset_or_folder: str | Path) -> str:
    """The architecture of a model preset or model folder (a folder's is read without its weights)."""
    if is_model_folder(preset_or_folder):
        return describe(preset_or_folder).arch
    return model_config(str(preset_or_folder)).arch
