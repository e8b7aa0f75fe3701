"""The one way texts and regions become a :class:`vlm.Batch`, used by every dataset, ``vlm predict``/``serve``, the
demo and the bench scripts: texts tokenised once into flat arrays (truncated and counted), texts joined to a feature
store with a counted report, padding of texts and regions to the longest in the batch, and :func:`collate` /
:func:`make_batch` that assemble the batch.

The store is anything with ``__contains__`` and ``__getitem__(image_id) -> {"feats", "boxes", "meta"}`` (a
``features.FeatureStore``); this module does not import ``features``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlm.batch import Batch
from vlm.errors import DataError

logger = logging.getLogger(__name__)


def truncate(ids: list[int], max_len: int) -> list[int]:
    """A tokenised text cut to ``max_len`` tokens keeping its closing ``[SEP]``: what a BERT tokenizer's
    ``truncation=True, max_length=max_len`` gives for one sequence."""
    return ids if len(ids) <= max_len else ids[:max_len - 1] + ids[-1:]


class TokenTable:
    """Many texts tokenised in one call and kept as one flat int64 array + offsets (no per-text Python objects).

    Texts longer than ``max_len`` tokens (``[CLS]``/``[SEP]`` included) are truncated to it and counted
    (``truncated``), never cut without a word: the datasets log the count and put it in their report.
    """

    def __init__(self, texts: list[str], tokenizer: Any, max_len: int) -> None:
        if max_len < 3:
            raise DataError(f"max_text_len={max_len}: a text needs at least 3 tokens ([CLS], a word, [SEP])")
        full = tokenizer(texts)["input_ids"]
        self.max_len = max_len
        self.truncated = sum(len(x) > max_len for x in full)
        enc = [truncate(x, max_len) for x in full] if self.truncated else full
        self.lengths = np.fromiter((len(x) for x in enc), dtype=np.int64, count=len(enc))
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.tokens = np.fromiter((t for x in enc for t in x), dtype=np.int64, count=int(self.lengths.sum()))

    def __len__(self) -> int:
        return len(self.lengths)

    def get(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def pad(self, rows: np.ndarray, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids [B, T], attention_mask [B, T])`` of texts ``rows`` padded to the longest of them."""
        lens = self.lengths[rows]
        t = int(lens.max())
        ids = np.full((len(rows), t), pad_id, dtype=np.int64)
        for r, i in enumerate(rows):
            ids[r, :lens[r]] = self.get(int(i))
        return ids, (np.arange(t)[None, :] < lens[:, None]).astype(np.int64)


@dataclass
class JoinReport:
    """What happened when texts were joined to a feature store."""

    texts: int = 0  # texts read
    kept: int = 0  # texts whose image is in the store
    missing_image: int = 0  # texts skipped: image not in the store
    missing_examples: list[str] = field(default_factory=list)  # first few missing image ids
    images: int = 0  # distinct images used
    truncated: int = 0  # kept texts longer than max_text_len tokens, truncated to it
    max_text_len: int = 0  # the token limit the texts were cut to

    def count_truncated(self, table: TokenTable, name: str) -> None:
        """Record (and log, when any) how many of the kept texts ``table`` truncated."""
        self.truncated, self.max_text_len = table.truncated, table.max_len
        if table.truncated:
            logger.warning("%s: %d of %d texts are longer than max_text_len=%d tokens and were truncated to it "
                           "(data.max_text_len raises the limit)", name, table.truncated, len(table), table.max_len)

    def line(self, name: str) -> str:
        text = f"{name}: {self.kept} of {self.texts} texts over {self.images} images"
        if self.missing_image:
            text += (f"; {self.missing_image} skipped because their image is not in the feature store "
                     f"(e.g. {', '.join(self.missing_examples)})")
        return text


def join_to_store(image_ids: list[str], store: Any, name: str) -> tuple[np.ndarray, JoinReport]:
    """Indices of the texts whose image is in ``store``; the others are counted, a few listed, and logged.

    Raises:
        DataError: when no text has its image in the store.
    """
    report = JoinReport(texts=len(image_ids))
    keep = []
    for i, img in enumerate(image_ids):
        if img in store:
            keep.append(i)
        else:
            report.missing_image += 1
            if len(report.missing_examples) < 5 and img not in report.missing_examples:
                report.missing_examples.append(img)
    if not keep:
        raise DataError(f"{name}: none of the {len(image_ids)} texts has its image in the feature store "
                        f"{getattr(store, 'directory', store)} (e.g. image ids {image_ids[:3]})")
    report.kept = len(keep)
    report.images = len({image_ids[i] for i in keep})
    (logger.warning if report.missing_image else logger.info)(report.line(name))
    return np.asarray(keep, dtype=np.int64), report


def read_samples(store: Any, image_ids: list[str]) -> list[dict[str, Any]]:
    """The store samples of a batch's images; a store that can (``prefetch``) is first told all of them, so that
    their reads queue on the disk together instead of one after another."""
    if hasattr(store, "prefetch"):
        store.prefetch(image_ids)
    return [store[image] for image in image_ids]


def regions_of(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The real regions of a store sample (``meta["num_valid"]`` drops a detector's padding boxes)."""
    k = int(sample["meta"].get("num_valid", sample["feats"].shape[0]))
    return sample["feats"][:k], sample["boxes"][:k]


def pad_regions(regions: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(feats [B, K, D] float32, boxes [B, K, 4], region_mask [B, K])`` padded to the most regions in the batch."""
    ks = np.array([f.shape[0] for f, _ in regions])
    k, d = int(ks.max()), regions[0][0].shape[1]
    feats = np.empty((len(regions), k, d), dtype=np.float32)  # only the padding is zeroed: one pass over the rest
    boxes = np.zeros((len(regions), k, 4), dtype=np.float32)
    for r, (f, b) in enumerate(regions):
        feats[r, :f.shape[0]], boxes[r, :f.shape[0]] = f, b
        feats[r, f.shape[0]:] = 0
    return feats, boxes, (np.arange(k)[None, :] < ks[:, None]).astype(np.int64)


def collate(ids: np.ndarray, mask: np.ndarray, regions: list[tuple[np.ndarray, np.ndarray]], **targets: Any
            ) -> Batch:
    """One :class:`Batch` from padded texts (``ids``, ``mask`` ``[B, T]``, e.g. :meth:`TokenTable.pad`) and the
    regions ``(feats [K, D], boxes [K, 4])`` of each text's image (padded here); token types are 0; ``targets`` are
    Batch fields (``answer_targets``, ``labels``, ...)."""
    feats, boxes, region_mask = pad_regions(regions)
    return Batch(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.zeros(ids.shape, dtype=torch.long), region_feats=torch.from_numpy(feats),
                 region_boxes=torch.from_numpy(boxes), region_mask=torch.from_numpy(region_mask), **targets)


def make_batch(tokenizer: Any, texts: list[str], samples: list[dict[str, Any]], max_text_len: int
               ) -> tuple[Batch, TokenTable]:
    """Texts and the store samples (``{"feats", "boxes", "meta"}``) of their images as one padded :class:`Batch`,
    texts truncated to ``max_text_len`` tokens; the :class:`TokenTable` says how many were truncated."""
    table = TokenTable(texts, tokenizer, max_text_len)
    ids, mask = table.pad(np.arange(len(texts)), tokenizer.pad_token_id or 0)
    return collate(ids, mask, [regions_of(s) for s in samples]), table
