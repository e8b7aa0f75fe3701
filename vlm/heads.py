"""Every head of DESIGN §3 in one place, reused by pretraining and fine-tuning.

Shapes follow LXMERT's published heads so that ``LxmertForPreTraining`` weights load one-to-one: the masked-LM decoder
is tied to the word embeddings, the masked-region heads share one transform, the answer head is a 2-layer GeLU MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from vlm.config import ModelConfig
from vlm.layers import activation


class PredictionTransform(nn.Module):
    """Dense → activation → LayerNorm, before a prediction decoder."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class MaskedLMHead(nn.Module):
    """Masked language modelling over the vocabulary; the decoder weight is the word-embedding matrix."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = PredictionTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, text_states: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` → logits ``[..., vocab]``."""
        return self.decoder(self.transform(text_states)) + self.bias


class RegionHeads(nn.Module):
    """Masked-region heads on region states: object labels, attribute labels, feature regression.

    Which of the three exist is set by ``visual_obj_loss``, ``visual_attr_loss`` and ``visual_feat_loss``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sizes = {}
        if cfg.visual_obj_loss:
            sizes["obj"] = cfg.num_object_labels
        if cfg.visual_attr_loss:
            sizes["attr"] = cfg.num_attr_labels
        if cfg.visual_feat_loss:
            sizes["feat"] = cfg.visual_feat_dim
        self.transform = PredictionTransform(cfg)
        self.decoders = nn.ModuleDict({k: nn.Linear(cfg.hidden_size, n) for k, n in sizes.items()})

    def forward(self, region_states: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.transform(region_states)
        return {k: dec(h) for k, dec in self.decoders.items()}


class MatchingHead(nn.Module):
    """Cross-modality matching: is this text about this image? Logits ``[B, 2]`` (index 1 = matched)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.linear = nn.Linear(cfg.hidden_size, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)


class AnswerHead(nn.Module):
    """Image QA over an answer table: Linear(H, 2H) → GeLU → LayerNorm → Linear(2H, num_answers)."""

    def __init__(self, cfg: ModelConfig, num_answers: int):
        super().__init__()
        h = cfg.hidden_size
        self.fc1 = nn.Linear(h, 2 * h)
        self.norm = nn.LayerNorm(2 * h, eps=cfg.layer_norm_eps)
        self.fc2 = nn.Linear(2 * h, num_answers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(nn.functional.gelu(self.fc1(pooled))))


class ClassifierHead(nn.Module):
    """The ``[CLS]`` classifier over ``num_labels``, by ``cfg.classifier_head``.

    ``"mlp"`` (default): LXMERT's NLVR2 head, Linear(H, 2H) → GeLU → LayerNorm → Linear(2H, num_labels) (as MMF's
    classifiers, a hidden layer): a label that depends on *how* text and image relate ("the shape is red") is an XOR of
    what the pooled vector holds about each, which a linear read-out cannot express. ``"linear"``: BERT's sequence
    classifier, dropout → Linear(H, num_labels).
    """

    def __init__(self, cfg: ModelConfig, num_labels: int):
        super().__init__()
        h = cfg.hidden_size
        self.kind = cfg.classifier_head
        if self.kind == "linear":
            self.drop = nn.Dropout(cfg.hidden_dropout_prob)
            self.linear = nn.Linear(h, num_labels)
        else:
            self.fc1 = nn.Linear(h, 2 * h)
            self.norm = nn.LayerNorm(2 * h, eps=cfg.layer_norm_eps)
            self.fc2 = nn.Linear(2 * h, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return self.linear(self.drop(pooled))
        return self.fc2(self.norm(nn.functional.gelu(self.fc1(pooled))))
