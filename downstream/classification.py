"""Image + text classification metrics: plain functions on numpy arrays that return percentages, like the VQA metrics
(:mod:`downstream.vqa`). The data side (examples, class lists, readers) is :mod:`vlm.data.classification`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlm.errors import DataError

__all__ = ["accuracy", "classification_metrics", "macro_f1", "roc_auc"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Metrics (percentages)
# --------------------------------------------------------------------------------------------------------------------


def _check_pair(labels: np.ndarray, other: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    labels, other = np.asarray(labels), np.asarray(other)
    if labels.ndim != 1 or len(labels) != len(other):
        raise DataError(f"{name}: expected labels [N] and predictions with the same N, got shapes "
                        f"{labels.shape} and {other.shape}")
    if len(labels) == 0:
        raise DataError(f"{name}: no examples")
    return labels, other


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Share of predicted class ids equal to the labels, in percent."""
    labels, preds = _check_pair(labels, preds, "accuracy")
    return 100.0 * float(np.mean(labels == preds))


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int | None = None) -> float:
    """Unweighted mean of the per-class F1 scores, in percent.

    Args:
        num_classes: average over classes ``0..num_classes-1``; None averages over the classes that occur in the
            labels or the predictions (a class never seen on either side is left out, as scikit-learn does).
            A class with no true positives scores 0.
    """
    labels, preds = _check_pair(labels, preds, "macro_f1")
    classes = np.arange(num_classes) if num_classes is not None else np.union1d(labels, preds)
    f1s = []
    for c in classes:
        tp = float(np.sum((preds == c) & (labels == c)))
        fp = float(np.sum((preds == c) & (labels != c)))
        fn = float(np.sum((preds != c) & (labels == c)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100.0 * float(np.mean(f1s))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0  # mean of ranks s+1 .. e
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of a binary task, in percent (Mann–Whitney U with average ranks for ties, so a tie
    between a positive and a negative counts one half).

    Args:
        labels: 0/1 (or False/True) per example.
        scores: the score of the positive class per example; higher means more positive.

    Raises:
        DataError: labels other than 0/1, or only one class present (the AUC is undefined).
    """
    labels, scores = _check_pair(labels, scores, "roc_auc")
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"roc_auc: binary labels must be 0 or 1, got {sorted(set(labels.tolist()))[:5]}")
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"roc_auc: needs both classes, but all {len(labels)} labels are {int(labels[0])}")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return 100.0 * float(u / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, probs: np.ndarray,
                           groups: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and (two classes) ROC AUC, in percent.

    Args:
        labels: class ids ``[N]``.
        probs: class probabilities or scores ``[N, C]``; a vector ``[N]`` is read as the positive-class probability
            of a binary task (predicted positive at >= 0.5).
        groups: optional group name per example; adds ``per_group`` accuracy (None entries are left out).

    Returns:
        ``accuracy``, ``macro_f1``, ``n`` and, for binary tasks, ``roc_auc`` — None (with a logged warning) when the
        labels hold one class only, so an evaluation of a small split does not stop.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        preds, positive = (probs >= 0.5).astype(np.int64), probs
    elif probs.ndim == 2:
        preds = probs.argmax(axis=1)
        positive = probs[:, 1] if probs.shape[1] == 2 else None
    else:
        raise DataError(f"classification_metrics: probs must be [N] or [N, C], got shape {probs.shape}")
    out: dict[str, Any] = {"accuracy": accuracy(labels, preds), "macro_f1": macro_f1(labels, preds)}
    if positive is not None:
        if len(np.unique(labels)) < 2:
            logger.warning("roc_auc left out: all %d labels are %s", len(labels), labels[0])
            out["roc_auc"] = None
        else:
            out["roc_auc"] = roc_auc(labels, positive)
    out["n"] = len(labels)
    if groups is not None:
        if len(groups) != len(labels):
            raise DataError(f"classification_metrics: {len(groups)} groups for {len(labels)} labels")
        names = sorted({g for g in groups if g is not None})
        idx = np.asarray(list(groups), dtype=object)
        out["per_group"] = {g: accuracy(labels[idx == g], preds[idx == g]) for g in names}
    return out
