"""``evaluate(model, data) -> dict``: predictions over a dataset and the metrics that mean the same as the published
ones (official VQA accuracy for ten-answer data, LXMERT's soft score for its files, exact match for easy-VQA;
accuracy / macro-F1 / ROC-AUC for classification), per question or answer type where the data has types.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from downstream.classification import classification_metrics
from downstream.data import ClassifyData, VQAData
from downstream.vqa import exact_match_accuracy, soft_accuracy, vqa_accuracy
from vlm.engine import distributed as D
from vlm.engine.loader import eval_batches
from vlm.errors import DataError
from vlm.precision import autocast


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: VQAData | ClassifyData, batch_size: int = 128,
                   device: str | torch.device = "cpu", precision: str = "auto", dist: D.DistInfo = D.DistInfo(),
                   transform=None) -> np.ndarray:
    """Logits ``[N, C]`` for every example of ``data`` in order (sharded over ranks, gathered on all).

    ``transform`` (a ``Batch -> Batch`` function, e.g. a modality ablation) is applied to each batch first.
    """
    was_training = model.training
    model.eval()
    rows: list[tuple[int, np.ndarray]] = []
    starts = np.arange(0, len(data), batch_size)[dist.rank::dist.world_size]
    for start, batch in zip(starts, eval_batches(data, batch_size, world_size=dist.world_size, rank=dist.rank)):
        batch = batch.to(device)
        if transform is not None:
            batch = transform(batch)
        with autocast(device, precision):
            logits = model(batch).logits
        rows.append((int(start), logits.float().cpu().numpy()))
    if D.active():
        gathered: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    model.train(was_training)
    rows.sort(key=lambda r: r[0])
    return np.concatenate([r[1] for r in rows]) if rows else np.zeros((0, 0), np.float32)


def vqa_metrics(predictions: dict, data: VQAData) -> dict[str, Any]:
    """The metric the data's answers allow: official (ten human answers), soft (LXMERT labels), or exact match."""
    examples = [e for e in data.examples if e.answers or e.label]  # test-split rows get predictions, no score
    extra = {"n_unscored": len(data.examples) - len(examples)}
    if not examples:
        return {"metric": "none", **extra}
    preds = {e.question_id: predictions[e.question_id] for e in examples}
    if all(len(e.answers) >= 2 for e in examples):
        return {"metric": "vqa_accuracy", **vqa_accuracy(preds, examples), **extra}
    if all(len(e.answers) == 1 for e in examples):
        return {"metric": "exact_match", **exact_match_accuracy(preds, examples), **extra}
    if all(e.label is not None for e in examples):
        return {"metric": "soft_accuracy", **soft_accuracy(preds, examples), **extra}
    raise DataError(f"{data.report.line('evaluation data')}: mixes questions with human answers and questions with "
                    "only soft labels; evaluate them separately")


def evaluate(model: torch.nn.Module, data: VQAData | ClassifyData, batch_size: int = 128,
             device: str | torch.device = "cpu", precision: str = "auto", dist: D.DistInfo = D.DistInfo(),
             transform=None) -> tuple[dict[str, Any], dict]:
    """Metrics (in percent) and predictions (question_id → answer, or example_id → class id) of ``model``."""
    logits = predict_logits(model, data, batch_size, device, precision, dist, transform)
    if isinstance(data, VQAData):
        best = logits.argmax(1)
        preds = {e.question_id: data.vocab.decode(int(b)) for e, b in zip(data.examples, best)}
        return vqa_metrics(preds, data), preds
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    metrics = classification_metrics(data.labels, probs, [e.group for e in data.examples]
                                     if any(e.group for e in data.examples) else None)
    preds = {e.example_id: int(p) for e, p in zip(data.examples, probs.argmax(1))}
    return {"metric": "classification", **metrics}, preds
