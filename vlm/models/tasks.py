"""Task models: an encoder plus the heads of one task (reading and writing model folders: :mod:`vlm.models.folder`).

``task`` names: ``encoder`` (no heads), ``pretraining`` (MLM, masked-region, matching and optional QA heads),
``vqa`` (answer head, soft-score BCE) and ``classification`` (``[CLS]`` classifier, cross-entropy). Every task model
keeps its encoder under ``.encoder`` so weights move between tasks by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlm.batch import Batch, EncoderOutput
from vlm.config import ConfigError, ModelConfig
from vlm.errors import DataError
from vlm.heads import AnswerHead, ClassifierHead, MaskedLMHead, MatchingHead, RegionHeads
from vlm.layers import init_weights
from vlm.models.lxmert import LxmertEncoder
from vlm.models.single_stream import SingleStreamEncoder

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Architecture:
    """What differs between architectures, in one place: every switch on ``arch`` goes through this registry."""

    encoder: Callable[[ModelConfig], nn.Module]  # the encoder class
    depth: Callable[[ModelConfig], str]  # the layer counts, as ``vlm models`` and ``vlm describe`` print them
    text_stack: str  # the encoder's BERT stack over the words (what a BERT's layers load into)
    text_depth: Callable[[ModelConfig], int]  # its number of layers
    cross_init: bool = False  # ``model.cross_init="text"`` copies text layers into region/cross layers


#: The model registry: architecture name (``model.arch``) → its parts.
ARCHITECTURES: dict[str, Architecture] = {
    "lxmert": Architecture(LxmertEncoder, lambda c: f"{c.l_layers}L/{c.r_layers}R/{c.x_layers}X", "text_layers",
                           lambda c: c.l_layers, cross_init=True),
    "vilbert": Architecture(SingleStreamEncoder, lambda c: str(c.num_layers), "layers", lambda c: c.num_layers),
}


def architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The encoder named by ``cfg.arch``."""
    cfg.validate()
    return architecture(cfg.arch).encoder(cfg)


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
    encoder_output: EncoderOutput | None = None  # with output_attentions / output_hidden_states: attentions, states


@dataclass
class QuestionAnsweringOutput:
    logits: torch.Tensor  # (B, num_answers)
    pooled: torch.Tensor
    loss: torch.Tensor | None = None  # soft-score BCE × num_answers when batch.answer_targets is given
    encoder_output: EncoderOutput | None = None  # with output_attentions / output_hidden_states: attentions, states


@dataclass
class ClassificationOutput:
    logits: torch.Tensor  # (B, num_labels)
    pooled: torch.Tensor
    loss: torch.Tensor | None = None  # cross-entropy when batch.labels is given
    encoder_output: EncoderOutput | None = None  # with output_attentions / output_hidden_states: attentions, states


class VLMModel(nn.Module):
    """Base of the task models: config, weight init, checkpoint I/O."""

    task: str = ""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.encoder = build_encoder(cfg)

    def init_weights(self) -> None:
        self.apply(lambda m: init_weights(m, self.config.initializer_range))
        init_own = getattr(self.encoder, "init_own_weights", None)  # parameters that are not in a module's weights
        if init_own is not None:
            init_own(self.config.initializer_range)

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path, *, max_text_len: int | None = None) -> Path:
        """Write ``config.json`` (task, model config and, when given, the text length the model was trained with)
        and ``model.safetensors`` (no pickle) into ``directory``: :func:`vlm.models.folder.write_model_files`."""
        from vlm.models.folder.files import write_model_files  # the folder owner builds models from this module

        return write_model_files(self, directory, max_text_len=max_text_len)

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

    def forward(self, batch: Batch, output_attentions: bool = False, output_hidden_states: bool = False
                ) -> EncoderOutput:
        return self.encoder(batch, output_attentions=output_attentions, output_hidden_states=output_hidden_states)


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

    def forward(self, batch: Batch, output_attentions: bool = False, output_hidden_states: bool = False
                ) -> PreTrainingOutput:
        """Encoder + every head. With ``batch.mlm_labels`` set, the vocabulary decoder runs only at the labelled
        positions (``mlm_logits`` is then ``[N, vocab]`` in row-major order of ``mlm_labels != -100``): the decoder is
        the largest matmul of the model and 85% of text positions carry no MLM target. ``output_attentions`` /
        ``output_hidden_states``: also the encoder's output with them, as ``encoder_output``."""
        enc = self.encoder(batch, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        text = enc.text_states if batch.mlm_labels is None else enc.text_states[batch.mlm_labels != -100]
        return PreTrainingOutput(
            text_states=enc.text_states,
            region_states=enc.region_states,
            pooled=enc.pooled,
            mlm_logits=self.mlm(text),
            matched_logits=self.matching(enc.pooled),
            region_outputs=self.regions(enc.region_states),
            answer_logits=self.answer(enc.pooled) if self.answer is not None else None,
            encoder_output=enc if output_attentions or output_hidden_states else None,
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

    def forward(self, batch: Batch, output_attentions: bool = False, output_hidden_states: bool = False
                ) -> QuestionAnsweringOutput:
        """Answer logits (and the loss with ``batch.answer_targets``); ``output_attentions`` /
        ``output_hidden_states``: also the encoder's output with them, as ``encoder_output``."""
        enc = self.encoder(batch, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        pooled = enc.pooled
        logits = self.answer(pooled)
        loss = None
        if batch.answer_targets is not None:
            targets = batch.answer_targets.to(logits.dtype)  # [B, num_answers] soft scores (checked by Batch.check)
            if targets.shape != logits.shape:
                raise DataError(f"Batch.answer_targets: shape {tuple(targets.shape)} but the model has "
                                f"{logits.shape[1]} answers")
            loss = F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[1]
        return QuestionAnsweringOutput(logits=logits, pooled=pooled, loss=loss,
                                       encoder_output=enc if output_attentions or output_hidden_states else None)


class VLMForClassification(VLMModel):
    """Encoder + ``[CLS]`` classifier over ``num_labels``; cross-entropy loss."""

    task = "classification"

    def __init__(self, cfg: ModelConfig):
        if cfg.num_labels < 2:
            raise ConfigError("task 'classification' needs model.num_labels >= 2")
        super().__init__(cfg)
        self.classifier = ClassifierHead(cfg, cfg.num_labels)
        self.init_weights()

    def forward(self, batch: Batch, output_attentions: bool = False, output_hidden_states: bool = False
                ) -> ClassificationOutput:
        """Class logits (and the loss with ``batch.labels``); ``output_attentions`` / ``output_hidden_states``: also
        the encoder's output with them, as ``encoder_output``."""
        enc = self.encoder(batch, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        pooled = enc.pooled
        logits = self.classifier(pooled)
        loss = F.cross_entropy(logits, batch.labels) if batch.labels is not None else None
        return ClassificationOutput(logits=logits, pooled=pooled, loss=loss,
                                    encoder_output=enc if output_attentions or output_hidden_states else None)


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
