"""Building models from presets and model folders: the one builder (:func:`create_model`), the weights loader
(:func:`from_pretrained`) and the reader that returns a model with its labels, features record and text length
(:func:`load_model_folder`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model

from vlm.config import ModelConfig, apply_dict, model_config
from vlm.errors import CheckpointError
from vlm.models.folder.files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    FolderInfo,
    check_folder,
    describe,
    is_model_folder,
    model_task,
    read_config,
    text_len_of,
)
from vlm.models.tasks import VLMModel, model_class

logger = logging.getLogger(__name__)


def build_model(cfg: ModelConfig, task: str) -> VLMModel:
    """The task model of ``task`` for ``cfg``, initialised (the one place a model class is built from a config)."""
    return model_class(model_task(task))(cfg)


def count_parameters(info: FolderInfo) -> int:
    """The parameter count of a folder's model, without reading or allocating its weights (meta device)."""
    with torch.device("meta"):
        return build_model(info.config, info.task).num_parameters()


def load_weights(model: torch.nn.Module, folder: str | Path, *, strict: bool = True) -> tuple[list[str], list[str]]:
    """Load ``folder/model.safetensors`` into ``model``; returns ``(missing, unexpected)`` keys.

    Raises:
        CheckpointError: an unreadable file, tensors of the wrong shape, or (``strict``) any missing or unexpected key.
    """
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as e:  # truncated or foreign file, or tensors of the wrong shape
        raise CheckpointError(f"{path}: cannot load the weights into a {getattr(model, 'task', '')!r} model: "
                              f"{str(e).splitlines()[0][:300]}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path}: weights do not match a {getattr(model, 'task', '')!r} model; missing: "
                              f"{sorted(missing)}; unexpected: {sorted(unexpected)}")
    return list(missing), list(unexpected)


def from_pretrained(directory: str | Path, task: str | None = None, strict: bool | None = None, **overrides: Any
                    ) -> VLMModel:
    """Load a model folder's weights into its model (``model.save_pretrained`` writes one).

    Args:
        directory: folder with ``config.json`` and ``model.safetensors``.
        task: build this task's model instead of the saved one (e.g. a pretraining checkpoint as ``vqa``): the
            encoder's weights load and the heads that the checkpoint lacks start from a fresh init (logged by name).
        strict: fail on any missing or unexpected weight. Defaults to True when ``task`` is the saved task.
        **overrides: model config fields to change (e.g. ``num_answers=13``, dropout).
    """
    directory = Path(directory)
    saved_task, cfg, _ = read_config(directory)
    if not (directory / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{directory}: not a vlm checkpoint (expected {CONFIG_NAME} and {WEIGHTS_NAME}; "
                              "save one with model.save_pretrained(dir))")
    if overrides:
        apply_dict(cfg, overrides, prefix="model.")
    task = model_task(task) if task else saved_task
    strict = (task == saved_task) if strict is None else strict
    model = build_model(cfg, task)
    missing, unexpected = load_weights(model, directory, strict=strict)
    if missing:
        logger.info("%s: newly initialised (not in the checkpoint): %s", directory, ", ".join(sorted(missing)))
    if unexpected:
        logger.info("%s: unused checkpoint weights: %s", directory, ", ".join(sorted(unexpected)))
    return model


def create_model(preset_or_folder: str | Path, task: str = "encoder", *, labels: Sequence[str] | None = None,
                 **overrides: Any) -> VLMModel:
    """A task model from a preset (``lxmert-mini``, or a model YAML) or a model folder.

    From a preset, the model is initialised (the text side from ``text_init`` when the config names one). From a
    folder, the folder's model config (with ``overrides``) builds the task's model and the encoder's weights are
    copied; for ``vqa`` with ``labels``, the answer head's rows of the answers the folder's table shares are carried
    over by answer (``resize_answer_head``); other heads start fresh. A folder of the same task without ``labels``
    loads whole, heads included (:func:`from_pretrained`).

    Args:
        preset_or_folder: a preset name, a model YAML, or a model folder.
        task: ``encoder``, ``pretraining``, ``vqa``, ``classification`` (``classify`` is accepted).
        labels: the new head's labels in row order: answers (vqa) or classes (classification); they set the head size
            unless ``num_answers``/``num_labels`` is given (a classifier has at least 2 outputs).
        **overrides: model config fields, e.g. ``x_layers=3``, ``num_answers=13``, ``text_init="all-minilm-l6-v2"``.
    """
    task = model_task(task)
    overrides = dict(overrides)
    if labels is not None:
        overrides.setdefault("num_answers" if task in ("vqa", "pretraining") else "num_labels", len(labels))
    folder = Path(preset_or_folder)
    if not is_model_folder(folder):
        is_yaml = folder.suffix in (".yaml", ".yml", ".json") and folder.is_file()
        if not is_yaml and (folder.exists() or "/" in str(preset_or_folder)):
            raise CheckpointError(f"{preset_or_folder}: not a model folder (no {CONFIG_NAME}) and not a model preset")
        return _from_preset(str(preset_or_folder), task, overrides)
    info = describe(folder)
    if task == info.task and labels is None:
        return from_pretrained(folder, **overrides)
    return _from_folder(folder, info, task, overrides, labels)


def _from_preset(name: str, task: str, overrides: dict[str, Any]) -> VLMModel:
    from vlm.models.text_init import load_text_weights

    cfg = model_config(name, overrides)
    model = build_model(cfg, task)
    if cfg.text_init:
        load_text_weights(model, cfg.text_init)
    return model


def _from_folder(folder: Path, info: FolderInfo, task: str, overrides: dict[str, Any],
                 labels: Sequence[str] | None) -> VLMModel:
    src = from_pretrained(folder)
    cfg = dataclasses.replace(src.config)
    text_init = overrides.pop("text_init", None)  # the folder already has its text side
    if text_init:
        logger.info("ignoring text_init=%s: the text side comes from %s", text_init, folder)
    apply_dict(cfg, {**overrides, "text_init": None}, prefix="model.")
    model = build_model(cfg, task)
    model.encoder.load_state_dict(src.encoder.state_dict())
    if task == "vqa" and labels is not None and getattr(src, "answer", None) is not None and info.labels:
        carried = src.resize_answer_head(list(labels), info.labels)
        model.answer.load_state_dict(src.answer.state_dict())
        logger.warning("answer head: %d of %d answers carried over from the QA head of %s", carried, len(labels),
                       folder)
    return model


@dataclass
class LoadedModel:
    """A model folder loaded for use: the model (eval mode, on its device) with its labels, features record and
    text length.

    Attributes:
        folder: The model folder.
        model: The model.
        labels: The head's labels in row order (answers or classes; class ids as names for a classifier saved without
            ``classes.json``); empty for models without a label head.
        features: The folder's ``features.json`` record ({} when it has none).
        max_text_len: The text length the model was trained with: inference truncates to it.
        info: What :func:`describe` read.
    """

    folder: Path
    model: VLMModel
    labels: list[str]
    features: dict[str, Any]
    max_text_len: int
    info: FolderInfo

    @property
    def task(self) -> str:
        return self.model.task


def load_model_folder(folder: str | Path, *, tasks: Sequence[str] | None = None,
                      device: str | torch.device = "cpu", need_labels: bool = True,
                      need_features: bool = False) -> LoadedModel:
    """A model folder loaded with its labels (a classifier without ``classes.json`` gets its class ids as names),
    features record and text length, after :func:`check_folder`'s checks (same arguments)."""
    info = check_folder(folder, tasks=tasks, need_labels=need_labels, need_features=need_features)
    labels = info.labels
    if labels is None and info.task == "classification":
        labels = [str(i) for i in range(info.config.num_labels)]
    model = from_pretrained(info.path).eval().to(device)
    return LoadedModel(folder=info.path, model=model, labels=list(labels or []), features=info.features or {},
                       max_text_len=text_len_of(info), info=info)
