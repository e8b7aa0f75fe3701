"""Task models: an encoder plus the heads of one task, with ``save_pretrained`` / ``from_pretrained``.

``task`` names: ``encoder`` (no heads), ``pretraining`` (MLM, masked-region, matching and optional QA heads),
``vqa`` (answer head, soft-score BCE) and ``classification`` (``[CLS]`` classifier, cross-entropy). Every task model
keeps its encoder under ``.encoder`` so weights move between tasks by name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from vlm.batch import Batch, EncoderOutput
from vlm.config import ConfigError, ModelConfig, apply_dict
from vlm.errors import CheckpointError, DataError
from vlm.heads import AnswerHead, ClassifierHead, MaskedLMHead, MatchingHead, RegionHeads
from vlm.io import atomic_write, write_text
from vlm.layers import init_weights
from vlm.models.lxmert import LxmertEncoder
from vlm.models.single_stream import SingleStreamEncoder

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The encoder named by ``cfg.arch``."""
    cfg.validate()
    return LxmertEncoder(cfg) if cfg.arch == "lxmert" else SingleStreamEncoder(cfg)


@dataclass
class PreTrainingOutput:
    """Outputs of :class:`VLMForPreTraining`; ``loss`` is set by the pretraining objectives, not the model."""

    text_states: torch.Tensor
    region_states: torch.Tensor
    pooled: torch.Tensor
    mlm_logits: torch.Tensor  # (B, T, vocab); (N, vocab) at the N positions with mlm_labels != -100 when given
    matched_logits: torch.Tensor  # (B, 2)
    region_outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # obj (B,K,n_obj), attr, feat (B,K,D)
    answer_logits: torch.Tensor | None = None  # (B, num_answers) when the model has a QA head
    loss: torch.Tensor | None = None  # weighted sum of the objectives (set by pretraining.PretrainTask)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # per objective (set by PretrainTask)
    accuracy: dict[str, torch.Tensor] = field(default_factory=dict)  # per objective: tensor([correct, total])


@dataclass
class QuestionAnsweringOutput:
    logits: torch.Tensor  # (B, num_answers)
    pooled: torch.Tensor
    loss: torch.Tensor | None = None  # soft-score BCE × num_answers when batch.answer_targets is given


@dataclass
class ClassificationOutput:
    logits: torch.Tensor  # (B, num_labels)
    pooled: torch.Tensor
    loss: torch.Tensor | None = None  # cross-entropy when batch.labels is given


class VLMModel(nn.Module):
    """Base of the task models: config, weight init, checkpoint I/O."""

    task: str = ""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.encoder = build_encoder(cfg)

    def init_weights(self) -> None:
        self.apply(lambda m: init_weights(m, self.config.initializer_range))
        enc = self.encoder
        if isinstance(enc, SingleStreamEncoder):
            nn.init.normal_(enc.img_token, std=self.config.initializer_range)

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (task + model config) and ``model.safetensors`` (no pickle) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"task": self.task, "model": self.config.to_dict(), "format": "vlm/1"}
        write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
        with atomic_write(directory / WEIGHTS_NAME) as tmp:
            save_model(self, str(tmp), metadata={"task": self.task, "format": "vlm/1"})
        return directory

    def resize_answer_head(self, answers: Sequence[str], old_answers: Sequence[str]) -> int:
        """Give the QA head the answer table ``answers`` (transformers' ``resize_num_qa_labels``, by name).

        The hidden layer is kept; the output row of each answer that is in ``old_answers`` (the table this head was
        trained on) is carried over by answer name, the rows of new answers start from the model's initialisation.

        Args:
            answers: the new answer table, in id order.
            old_answers: the head's current answer table, in id order (one per output row).

        Returns:
            How many rows were carried over.

        Raises:
            ConfigError: the model has no answer head.
            DataError: ``old_answers`` does not have one answer per output row of the head.
        """
        old = getattr(self, "answer", None)
        if old is None:
            raise ConfigError(f"a {self.task!r} model without an answer head cannot be given an answer table")
        if len(old_answers) != old.fc2.out_features:
            raise DataError(f"the answer table has {len(old_answers)} answers but the answer head has "
                            f"{old.fc2.out_features} outputs")
        new = AnswerHead(self.config, len(answers))
        new.apply(lambda m: init_weights(m, self.config.initializer_range))
        new.to(device=old.fc2.weight.device, dtype=old.fc2.weight.dtype)
        new.fc1.load_state_dict(old.fc1.state_dict())
        new.norm.load_state_dict(old.norm.state_dict())
        row_of = {a: j for j, a in enumerate(old_answers)}
        pairs = [(i, row_of[a]) for i, a in enumerate(answers) if a in row_of]
        if pairs:
            dst, src = (torch.tensor(x) for x in zip(*pairs))
            with torch.no_grad():
                new.fc2.weight[dst] = old.fc2.weight[src]
                new.fc2.bias[dst] = old.fc2.bias[src]
        self.answer = new
        self.config.num_answers = len(answers)
        return len(pairs)


class VLMEncoderModel(VLMModel):
    """The bare encoder: ``Batch`` → :class:`EncoderOutput`."""

    task = "encoder"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.init_weights()

    def forward(self, batch: Batch) -> EncoderOutput:
        return self.encoder(batch)


class VLMForPreTraining(VLMModel):
    """Encoder + masked LM + masked-region heads + matching head (+ QA head when ``num_answers > 0``)."""

    task = "pretraining"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.mlm = MaskedLMHead(cfg, self.encoder.word_embeddings)
        self.regions = RegionHeads(cfg)
        self.matching = MatchingHead(cfg)
        self.answer = AnswerHead(cfg, cfg.num_answers) if cfg.num_answers > 0 else None
        self.init_weights()
        self.mlm.decoder.weight = self.encoder.word_embeddings.weight  # keep tied after init

    def forward(self, batch: Batch) -> PreTrainingOutput:
        """Encoder + every head. With ``batch.mlm_labels`` set, the vocabulary decoder runs only at the labelled
        positions (``mlm_logits`` is then ``[N, vocab]`` in row-major order of ``mlm_labels != -100``): the decoder is
        the largest matmul of the model and 85% of text positions carry no MLM target."""
        enc = self.encoder(batch)
        text = enc.text_states if batch.mlm_labels is None else enc.text_states[batch.mlm_labels != -100]
        return PreTrainingOutput(
            text_states=enc.text_states,
            region_states=enc.region_states,
            pooled=enc.pooled,
            mlm_logits=self.mlm(text),
            matched_logits=self.matching(enc.pooled),
            region_outputs=self.regions(enc.region_states),
            answer_logits=self.answer(enc.pooled) if self.answer is not None else None,
        )


class VLMForQuestionAnswering(VLMModel):
    """Encoder + answer head over ``num_answers``; loss is BCE on soft scores scaled by the number of answers."""

    task = "vqa"

    def __init__(self, cfg: ModelConfig):
        if cfg.num_answers <= 0:
            raise ConfigError("task 'vqa' needs model.num_answers > 0 (the size of the answer table)")
        super().__init__(cfg)
        self.answer = AnswerHead(cfg, cfg.num_answers)
        self.init_weights()

    def forward(self, batch: Batch) -> QuestionAnsweringOutput:
        pooled = self.encoder(batch).pooled
        logits = self.answer(pooled)
        loss = None
        if batch.answer_targets is not None:
            targets = batch.answer_targets.to(logits.dtype)  # [B, num_answers] soft scores (checked by Batch.check)
            if targets.shape != logits.shape:
                raise DataError(f"Batch.answer_targets: shape {tuple(targets.shape)} but the model has "
                                f"{logits.shape[1]} answers")
            loss = F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[1]
        return QuestionAnsweringOutput(logits=logits, pooled=pooled, loss=loss)


class VLMForClassification(VLMModel):
    """Encoder + ``[CLS]`` classifier over ``num_labels``; cross-entropy loss."""

    task = "classification"

    def __init__(self, cfg: ModelConfig):
        if cfg.num_labels < 2:
            raise ConfigError("task 'classification' needs model.num_labels >= 2")
        super().__init__(cfg)
        self.classifier = ClassifierHead(cfg, cfg.num_labels)
        self.init_weights()

    def forward(self, batch: Batch) -> ClassificationOutput:
        pooled = self.encoder(batch).pooled
        logits = self.classifier(pooled)
        loss = F.cross_entropy(logits, batch.labels) if batch.labels is not None else None
        return ClassificationOutput(logits=logits, pooled=pooled, loss=loss)


TASKS: dict[str, type[VLMModel]] = {
    "encoder": VLMEncoderModel,
    "pretraining": VLMForPreTraining,
    "vqa": VLMForQuestionAnswering,
    "classification": VLMForClassification,
}


def model_class(task: str) -> type[VLMModel]:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return TASKS[task]


def from_pretrained(directory: str | Path, task: str | None = None, strict: bool | None = None, **overrides) -> VLMModel:
    """Load a model written by ``save_pretrained``.

    Args:
        directory: folder with ``config.json`` and ``model.safetensors``.
        task: build this task's model instead of the saved one (e.g. a pretraining checkpoint as ``vqa``): the
            encoder's weights load and the heads that the checkpoint lacks start from a fresh init (logged by name).
        strict: fail on any missing or unexpected weight. Defaults to True when ``task`` is the saved task.
        **overrides: model config fields to change (e.g. ``num_answers=13``, dropout).
    """
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.exists() or not w_path.exists():
        raise CheckpointError(
            f"{directory}: not a vlm checkpoint (expected {CONFIG_NAME} and {WEIGHTS_NAME}; "
            "save one with model.save_pretrained(dir))"
        )
    try:
        meta = json.loads(cfg_path.read_text())
        if not isinstance(meta, dict):
            raise KeyError("top level is not an object")
        saved_task, model_dict = meta["task"], meta["model"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ConfigError(f"{cfg_path}: not a vlm config (expected keys 'task' and 'model'): {e}") from None
    cfg = ModelConfig()
    if isinstance(model_dict, dict) and "classifier_head" not in model_dict:
        cfg.classifier_head = "linear"  # written before the field existed: the classifier was BERT's linear one
    apply_dict(cfg, model_dict, prefix="model.")
    if overrides:
        apply_dict(cfg, overrides, prefix="model.")
    task = task or saved_task
    strict = (task == saved_task) if strict is None else strict
    model = model_class(task)(cfg)
    try:
        missing, unexpected = load_model(model, str(w_path), strict=False)
    except Exception as e:  # truncated or foreign file, or tensors of the wrong shape
        raise CheckpointError(f"{w_path}: cannot load the weights into a {task!r} model: "
                              f"{str(e).splitlines()[0][:300]}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{w_path}: weights do not match a {task!r} model; missing: {sorted(missing)}; "
            f"unexpected: {sorted(unexpected)}"
        )
    if missing:
        logger.info("%s: newly initialised (not in the checkpoint): %s", w_path, ", ".join(sorted(missing)))
    if unexpected:
        logger.info("%s: unused checkpoint weights: %s", w_path, ", ".join(sorted(unexpected)))
    return model
