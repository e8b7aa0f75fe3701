"""Pretraining objectives: one small module per loss, in a registry, each switched on and weighted from config.

Every objective reads the pretraining model's :class:`~vlm.models.tasks.PreTrainingOutput` and the targets in the
:class:`vlm.Batch`, and is shared by both architectures (DESIGN §3; the set follows LXMERT, Tan & Bansal 2019):

=================  ===============================================  ==========================================
name               loss                                             predicted items (``count``)
=================  ===============================================  ==========================================
``mlm``            cross-entropy over the vocabulary                masked tokens
``region_feat``    smooth-L1 to the original region feature         masked regions
``region_obj``     cross-entropy to the detector's object label,    masked regions
                   weighted by the detector's confidence
``region_attr``    same for attribute labels                        masked regions
``matching``       cross-entropy: is the text about this image?     pairs
``qa``             BCE on soft answer scores × number of answers    matched pairs whose text is a question
=================  ===============================================  ==========================================

Losses are means over the predicted items of the batch; ``count`` lets :class:`~pretraining.task.PretrainTask`
renormalise them across ranks. Losses are computed in fp32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretraining.masking import IGNORE
from vlm.batch import Batch
from vlm.config import ConfigError
from vlm.models.tasks import PreTrainingOutput

OBJECTIVES: dict[str, type["Objective"]] = {}


def register(name: str):
    def wrap(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return wrap


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0  # a zero that keeps the graph (DDP needs every used parameter to get a gradient)


class Objective(nn.Module):
    """One pretraining loss: ``forward(outputs, batch) -> loss``; ``count`` and ``accuracy`` for logging."""

    name = ""

    def count(self, batch: Batch) -> torch.Tensor:
        """Number of predicted items in ``batch`` (float scalar)."""
        raise NotImplementedError

    def forward(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def accuracy(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor | None:
        """``tensor([correct, total])`` or None when accuracy does not apply."""
        return None


@register("mlm")
class MaskedLM(Objective):
    def count(self, batch: Batch) -> torch.Tensor:
        return (batch.mlm_labels != IGNORE).sum().float()

    def _pairs(self, outputs: PreTrainingOutput, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        sel = batch.mlm_labels != IGNORE
        logits = outputs.mlm_logits
        if logits.dim() == 3:  # full (B, T, V) logits
            logits = logits[sel]
        return logits.float(), batch.mlm_labels[sel]

    def forward(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        logits, target = self._pairs(outputs, batch)
        return F.cross_entropy(logits, target) if target.numel() else _zero(outputs.mlm_logits)

    @torch.no_grad()
    def accuracy(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        logits, target = self._pairs(outputs, batch)
        return torch.stack([(logits.argmax(-1) == target).sum().float(), target.new_tensor(target.numel(), dtype=torch.float32)])


def _region_sel(batch: Batch) -> torch.Tensor:
    if not batch.region_labels or "mask" not in batch.region_labels:
        raise ValueError("masked region objectives need batch.region_labels['mask'] (the pretraining collator "
                         "sets it)")
    return batch.region_labels["mask"].bool()


@register("region_feat")
class MaskedRegionFeature(Objective):
    def count(self, batch: Batch) -> torch.Tensor:
        return _region_sel(batch).sum().float()

    def forward(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        sel = _region_sel(batch)
        pred = outputs.region_outputs["feat"]
        if not sel.any():
            return _zero(pred)
        target = batch.region_labels["feat"][sel].float()  # (N, D) original features
        return F.smooth_l1_loss(pred[sel].float(), target)


class _MaskedRegionLabel(Objective):
    kind = ""

    def count(self, batch: Batch) -> torch.Tensor:
        return _region_sel(batch).sum().float()

    def forward(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        sel = _region_sel(batch)
        logits = outputs.region_outputs[self.kind]
        if not sel.any():
            return _zero(logits)
        ce = F.cross_entropy(logits[sel].float(), batch.region_labels[self.kind][sel].long(), reduction="none")
        return (ce * batch.region_labels[f"{self.kind}_conf"][sel].float()).mean()

    @torch.no_grad()
    def accuracy(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        sel = _region_sel(batch)
        pred = outputs.region_outputs[self.kind][sel].argmax(-1)
        target = batch.region_labels[self.kind][sel].long()
        return torch.stack([(pred == target).sum().float(), target.new_tensor(target.numel(), dtype=torch.float32)])


@register("region_obj")
class MaskedRegionObject(_MaskedRegionLabel):
    kind = "obj"


@register("region_attr")
class MaskedRegionAttribute(_MaskedRegionLabel):
    kind = "attr"


@register("matching")
class Matching(Objective):
    """Cross-modality matching: does the text belong to the image? Rows with ``matched == -100`` are not scored."""

    def count(self, batch: Batch) -> torch.Tensor:
        return (batch.matched != IGNORE).sum().float()

    def forward(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        if not (batch.matched != IGNORE).any():
            return _zero(outputs.matched_logits)
        return F.cross_entropy(outputs.matched_logits.float(), batch.matched.long(), ignore_index=IGNORE)

    @torch.no_grad()
    def accuracy(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        scored = batch.matched != IGNORE
        correct = ((outputs.matched_logits.argmax(-1) == batch.matched.long()) & scored).sum().float()
        return torch.stack([correct, scored.sum().float()])

    @torch.no_grad()
    def accuracy_by_kind(self, outputs: PreTrainingOutput, batch: Batch, kinds: list[str]) -> dict[str, torch.Tensor]:
        """``{kind: [correct, count]}`` over scored rows, per pair kind (``batch.match_kind`` codes index ``kinds``)."""
        if batch.match_kind is None:
            return {}
        scored = batch.matched != IGNORE
        right = (outputs.matched_logits.argmax(-1) == batch.matched.long()) & scored
        return {name: torch.stack([(right & (batch.match_kind == code)).sum().float(),
                                   (scored & (batch.match_kind == code)).sum().float()])
                for code, name in enumerate(kinds)}


@register("qa")
class ImageQA(Objective):
    def _rows(self, batch: Batch) -> torch.Tensor:
        if batch.answer_targets is None:
            raise ValueError("the qa objective needs batch.answer_targets")
        if batch.has_answer is None:
            return torch.ones(batch.answer_targets.shape[0], dtype=torch.bool, device=batch.answer_targets.device)
        return batch.has_answer.bool()

    def count(self, batch: Batch) -> torch.Tensor:
        return self._rows(batch).sum().float()

    def forward(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        if outputs.answer_logits is None:
            raise ConfigError("the qa objective needs a model with a QA head (model.num_answers > 0)")
        rows = self._rows(batch)
        if not rows.any():
            return _zero(outputs.answer_logits)
        logits = outputs.answer_logits[rows].float()
        return F.binary_cross_entropy_with_logits(logits, batch.answer_targets[rows].float()) * logits.shape[1]

    @torch.no_grad()
    def accuracy(self, outputs: PreTrainingOutput, batch: Batch) -> torch.Tensor:
        """VQA-style score: the soft target of the arg-max answer, summed over question rows."""
        rows = self._rows(batch)
        logits, targets = outputs.answer_logits[rows], batch.answer_targets[rows].float()
        score = targets.gather(1, logits.argmax(-1, keepdim=True)).sum()
        return torch.stack([score, rows.sum().float()])


def build_objectives(weights: dict[str, float]) -> dict[str, tuple[Objective, float]]:
    """Objectives with a positive weight, by name; an unknown name is a ValueError listing the registry."""
    out = {}
    for name, w in weights.items():
        if name not in OBJECTIVES:
            raise ConfigError(f"unknown pretraining objective {name!r}; known: {', '.join(OBJECTIVES)}")
        if w > 0:
            out[name] = (OBJECTIVES[name](), float(w))
    return out
