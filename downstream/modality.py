"""Removing a modality from a :class:`vlm.Batch`: the one pair of transforms behind both kinds of modality ablation
(test-time removal from a fused model, and unimodal baselines trained with the modality absent from the start).

* :func:`text_only` removes every region: each sample gets one all-zero region with a zero box, masked out. The
  model then receives the same image input for every sample, so no image information can reach it. (The single stream
  also masks its ``[IMG]`` and region ``[SEP]`` for such a sample, which makes it exactly BERT.)
* :func:`image_only` removes the text but ``[CLS]`` and ``[SEP]``: every sample's text is ``[CLS] [SEP]``.

They act on the batch, not on flags inside the models, so any model and any head gets the same treatment.
"""

from __future__ import annotations

import dataclasses

import torch

from vlm.batch import Batch
from vlm.config import ConfigError


def text_only(batch: Batch) -> Batch:
    """The batch with no image information: one zero region per sample, masked."""
    b, _, d = batch.region_feats.shape
    feats = batch.region_feats.new_zeros(b, 1, d)
    return dataclasses.replace(batch, region_feats=feats, region_boxes=batch.region_boxes.new_zeros(b, 1, 4),
                               region_mask=batch.region_mask.new_zeros(b, 1), region_labels=None)


def image_only(batch: Batch) -> Batch:
    """The batch with no question information: each text is ``[CLS] [SEP]`` (taken from the sample's own first and
    last real tokens)."""
    ids, am = batch.input_ids, batch.attention_mask
    last = am.sum(1).clamp_min(1) - 1  # index of each row's final real token ([SEP])
    rows = torch.arange(ids.shape[0], device=ids.device)
    new_ids = torch.stack([ids[:, 0], ids[rows, last]], dim=1)
    ones = torch.ones_like(new_ids)
    return dataclasses.replace(batch, input_ids=new_ids, attention_mask=ones,
                               token_type_ids=torch.zeros_like(new_ids), mlm_labels=None)


#: The modality registry: name → ``Batch`` transform (None: both modalities).
TRANSFORMS = {"fused": None, "text": text_only, "image": image_only}
MODALITIES = tuple(TRANSFORMS)


def transform_for(modality: str):
    """The transform of a modality name (checked when the config loads; a direct caller gets a ConfigError)."""
    if modality not in TRANSFORMS:
        raise ConfigError(f"modality: expected one of {', '.join(TRANSFORMS)}, got {modality!r}")
    return TRANSFORMS[modality]


class TransformedSource:
    """A batch source whose batches go through ``transform`` (a trained unimodal baseline's training data)."""

    def __init__(self, source, transform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def example_images(self) -> list[str]:
        return self.source.example_images()

    def batch(self, indices, epoch: int, **kwargs) -> Batch:
        return self.transform(self.source.batch(indices, epoch, **kwargs))
