"""``PretrainTask``: the pretraining model wrapped with its objectives (open_clip's ``TrainingTask`` shape).

Where the loss is computed, and why: here, not in ``VLMForPreTraining``. The model's forward is the same for every mix
of objectives and returns one dataclass, ``PreTrainingOutput``; which objectives run, with which weights, and how
their means are normalised across ranks are training-time choices that belong next to the loop. ``PretrainTask``
fills that same dataclass's ``loss``, ``losses`` and ``accuracy`` fields, so the output contract stays one type.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pretraining.objectives import Objective
from vlm.batch import Batch
from vlm.config import ConfigError
from vlm.models.tasks import PreTrainingOutput, VLMForPreTraining


class PretrainTask(nn.Module):
    """``forward(batch)`` → ``PreTrainingOutput`` with ``loss = Σ weight × objective``.

    Args:
        model: the pretraining model (its heads must match the objectives: ``qa`` needs ``num_answers > 0``).
        objectives: ``{name: (objective, weight)}`` (see :func:`pretraining.objectives.build_objectives`).
        count_reducer: under DDP, the mean over ranks of a tensor of counts. Each objective's batch mean is then
            rescaled by ``local count / mean count``, so that DDP's gradient averaging yields the mean over every
            rank's items (2 ranks × b reach the same weights as 1 rank × 2b, also for token-level losses).
        match_kinds: names of the pair kinds (``Batch.match_kind`` codes); the matching accuracy is then also
            reported per kind (``matching/<kind>``: true pairs, random negatives, each word group's hard negatives).
    """

    def __init__(self, model: VLMForPreTraining, objectives: dict[str, tuple[Objective, float]],
                 count_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 match_kinds: list[str] | None = None) -> None:
        super().__init__()
        if not objectives:
            raise ConfigError("PretrainTask needs at least one objective with a positive weight")
        self.model = model
        self.objectives = nn.ModuleDict({k: obj for k, (obj, _) in objectives.items()})
        self.weights = {k: w for k, (_, w) in objectives.items()}
        self.count_reducer = count_reducer
        self.match_kinds = list(match_kinds or [])  # names of Batch.match_kind codes: per-kind matching accuracy

    def save_pretrained(self, directory):
        return self.model.save_pretrained(directory)

    def forward(self, batch: Batch) -> PreTrainingOutput:
        out = self.model(batch)
        names = list(self.objectives)
        losses = {n: self.objectives[n](out, batch) for n in names}
        if self.count_reducer is not None and self.training:
            local = torch.stack([self.objectives[n].count(batch).to(out.pooled.device) for n in names])
            mean = self.count_reducer(local)
            scale = torch.where(mean > 0, local / mean.clamp_min(1e-12), torch.zeros_like(local))
            losses = {n: losses[n] * scale[i] for i, n in enumerate(names)}
        out.losses = losses
        out.loss = sum(self.weights[n] * losses[n] for n in names)
        with torch.no_grad():
            for n in names:
                acc = self.objectives[n].accuracy(out, batch)
                if acc is not None:
                    out.accuracy[n] = acc.to(torch.float64)
            if "matching" in self.objectives and self.match_kinds:
                by_kind = self.objectives["matching"].accuracy_by_kind(out, batch, self.match_kinds)
                out.accuracy.update({f"matching/{k}": v.to(torch.float64) for k, v in by_kind.items()})
        return out
