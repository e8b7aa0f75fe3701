"""Fine-tuning datasets: VQA questions or classification texts joined to a feature store, as engine batch sources.

``batch(indices, epoch)`` returns a :class:`vlm.Batch` with ``answer_targets`` (VQA: soft scores over the answer
table) or ``labels`` (classification). No randomness: the engine's plan decides the order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vlm.batch import Batch
from vlm.data.classification import ClassificationExample
from vlm.data.collate import TokenTable, collate, join_to_store, read_samples, regions_of
from vlm.data.vqa import AnswerVocab, VQAExample, answer_targets
from vlm.errors import DataError

logger = logging.getLogger(__name__)


class _Joined:
    """Texts joined to a store, tokenised once; region padding per batch."""

    def __init__(self, texts: list[str], image_ids: list[str], store: Any, tokenizer: Any, max_text_len: int,
                 name: str) -> None:
        keep, self.report = join_to_store(image_ids, store, name)
        self.keep = keep
        self.store = store
        self.image_ids = [image_ids[i] for i in keep]
        self.tokens = TokenTable([texts[i] for i in keep], tokenizer, max_text_len)
        self.report.count_truncated(self.tokens, name)
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.keep)

    def example_images(self) -> list[str]:
        """The image id of each example (a streamed plan reads them in its own order)."""
        return self.image_ids

    def _batch(self, indices: np.ndarray, store: Mapping[str, Any] | None = None, **targets: Any) -> Batch:
        ids, mask = self.tokens.pad(indices, self.pad_id)
        samples = read_samples(self.store if store is None else store, [self.image_ids[i] for i in indices])
        return collate(ids, mask, [regions_of(s) for s in samples], **targets)


class VQAData(_Joined):
    """VQA examples joined to a store; targets are soft scores over ``vocab`` (kept as sparse rows)."""

    def __init__(self, examples: list[VQAExample], store: Any, tokenizer: Any, vocab: AnswerVocab,
                 max_text_len: int = 40, rule: str = "lxmert", name: str = "vqa", with_targets: bool = True) -> None:
        for n, e in enumerate(examples):
            if not e.question.strip():
                raise DataError(f"{name}: question {n} (question_id {e.question_id!r}) is empty")
        self.unlabelled = 0
        if with_targets:  # test-split rows (no answers, no label) cannot be trained on: counted and reported
            labelled = [e for e in examples if e.answers or e.label]
            self.unlabelled = len(examples) - len(labelled)
            if self.unlabelled:
                logger.warning("%s: %d question(s) without answers or label skipped for training (e.g. question_id "
                               "%r)", name, self.unlabelled,
                               next(e.question_id for e in examples if not (e.answers or e.label)))
            examples = labelled
        super().__init__([e.question for e in examples], [e.image_id for e in examples], store, tokenizer,
                         max_text_len, name)
        self.examples = [examples[i] for i in self.keep]
        self.vocab = vocab
        self.unknown_answers = 0
        idx, val, offsets = [], [], [0]
        if with_targets:
            for e in self.examples:
                target, unknown = answer_targets(e, vocab, rule)
                nz = np.flatnonzero(target)
                idx.append(nz)
                val.append(target[nz])
                offsets.append(offsets[-1] + len(nz))
                self.unknown_answers += int(unknown > 0 and not len(nz))
            if self.unknown_answers:
                logger.warning("%s: %d of %d questions have no answer in the %d-answer table (trained with all-zero "
                               "targets, scored 0 by the metric)", name, self.unknown_answers, len(self.examples),
                               len(vocab))
        self.with_targets = with_targets
        self.t_idx = np.concatenate(idx) if idx else np.zeros(0, np.int64)
        self.t_val = np.concatenate(val).astype(np.float32) if val else np.zeros(0, np.float32)
        self.t_off = np.asarray(offsets, dtype=np.int64)

    def batch(self, indices: np.ndarray, epoch: int, store: Mapping[str, Any] | None = None) -> Batch:
        """Examples ``indices``; ``store``: where their features are (default: the data's store)."""
        indices = np.asarray(indices, dtype=np.int64)
        targets = None
        if self.with_targets:
            targets = torch.zeros(len(indices), len(self.vocab))
            for r, i in enumerate(indices):
                s, e = self.t_off[i], self.t_off[i + 1]
                targets[r, torch.from_numpy(self.t_idx[s:e])] = torch.from_numpy(self.t_val[s:e])
        return self._batch(indices, store, answer_targets=targets)


class ClassifyData(_Joined):
    """Classification examples joined to a store; ``labels`` are class ids."""

    def __init__(self, examples: list[ClassificationExample], store: Any, tokenizer: Any, num_labels: int,
                 max_text_len: int = 40, name: str = "classify", with_targets: bool = True) -> None:
        for n, e in enumerate(examples):
            if with_targets and e.label is None:
                raise DataError(f"{name}: example {e.example_id!r} (row {n + 1}) has no label")
            if e.label is not None and not 0 <= e.label < num_labels:
                raise DataError(f"{name}: example {e.example_id!r} has label {e.label}, outside the {num_labels} "
                                "classes")
        super().__init__([e.text for e in examples], [e.image_id for e in examples], store, tokenizer,
                         max_text_len, name)
        self.examples = [examples[i] for i in self.keep]
        self.labels = np.array([e.label if e.label is not None else -1 for e in self.examples], dtype=np.int64)
        self.with_targets = with_targets

    def batch(self, indices: np.ndarray, epoch: int, store: Mapping[str, Any] | None = None) -> Batch:
        """Examples ``indices``; ``store``: where their features are (default: the data's store)."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = torch.from_numpy(self.labels[indices]) if self.with_targets else None
        return self._batch(indices, store, labels=labels)
