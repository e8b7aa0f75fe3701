"""The typed batch that travels from a collator to a model, and the encoders' output contract (DESIGN §2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vlm.errors import DataError


@dataclass
class Batch:
    """One mini-batch of paired text and image regions.

    Attributes:
        input_ids: WordPiece ids ``[B, T]`` starting with ``[CLS]``.
        attention_mask: 1 for real text tokens, 0 for padding ``[B, T]``.
        token_type_ids: segment ids ``[B, T]``.
        region_feats: pooled region features ``[B, K, D]`` (float).
        region_boxes: boxes ``[B, K, 4]`` as x1, y1, x2, y2 divided by image width/height, in [0, 1].
        region_mask: 1 for real regions, 0 for padding ``[B, K]``.
        mlm_labels: masked-LM targets ``[B, T]`` (-100 where not predicted).
        region_labels: dict of masked-region targets (e.g. ``mask``, ``feat``, ``obj``, ``obj_conf``, ``attr``,
            ``attr_conf``), each ``[B, K, ...]``.
        matched: 1 where text and image belong together, 0 for a mismatched pair, -100 for a row the matching
            objective does not score (e.g. a question, when matching is applied to assertions only) ``[B]``.
        match_kind: the kind of each pair ``[B]``: 0 a true pair, 1 another image's text, 2 + g a hard negative
            made by swapping one word of word group g (see ``pretraining.data``); None when not tracked.
        answer_targets: soft answer scores ``[B, num_answers]`` in [0, 1].
        has_answer: ``[B]`` bool, rows of ``answer_targets`` that carry a target (pretraining QA: questions with
            answers in matched pairs); None means every row does.
        labels: class ids ``[B]`` for the ``[CLS]`` classifier.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    region_feats: torch.Tensor
    region_boxes: torch.Tensor
    region_mask: torch.Tensor
    mlm_labels: torch.Tensor | None = None
    region_labels: dict[str, torch.Tensor] | None = None
    matched: torch.Tensor | None = None
    match_kind: torch.Tensor | None = None
    answer_targets: torch.Tensor | None = None
    has_answer: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """Move every tensor (and those in ``region_labels``) to ``device``."""

        def move(x):
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=non_blocking)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        return Batch(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    def check(self, visual_feat_dim: int, visual_pos_dim: int, vocab_size: int | None = None,
              type_vocab_size: int | None = None) -> None:
        """Validate the batch against itself and the model; raise a :class:`~vlm.errors.DataError` naming the field.

        Checks types (tensors, integer ids, float features), shapes, id ranges (vocabulary and token-type table),
        that real regions have finite features and boxes in [0, 1] (boxes in pixels are refused), and that soft
        answer targets are ``[B, num_answers]`` floats. Cost: a few reductions, negligible next to a forward pass.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "region_labels":
                continue
            if not isinstance(value, torch.Tensor):
                hint = " (wrap it with torch.from_numpy)" if type(value).__module__ == "numpy" else ""
                raise DataError(f"Batch.{f.name}: expected a torch.Tensor, got {type(value).__name__}{hint}")
        for name in ("input_ids", "attention_mask", "token_type_ids", "region_mask"):
            if getattr(self, name).is_floating_point():
                raise DataError(f"Batch.{name}: expected integer ids/flags, got {getattr(self, name).dtype}")
        for name in ("region_feats", "region_boxes"):
            if not getattr(self, name).is_floating_point():
                raise DataError(f"Batch.{name}: expected a float tensor, got {getattr(self, name).dtype}")
        if self.input_ids.dim() != 2:
            raise DataError(f"Batch.input_ids: expected [B, T], got shape {tuple(self.input_ids.shape)}")
        b, t = self.input_ids.shape
        if t == 0:
            raise DataError("Batch.input_ids: zero-length texts (T = 0); every text needs at least [CLS]")
        for name in ("attention_mask", "token_type_ids"):
            shape = tuple(getattr(self, name).shape)
            if shape != (b, t):
                raise DataError(f"Batch.{name}: expected shape {(b, t)} like input_ids, got {shape}")
        if self.region_feats.dim() != 3 or self.region_feats.shape[0] != b:
            raise DataError(f"Batch.region_feats: expected [B={b}, K, D], got {tuple(self.region_feats.shape)}")
        k, d = self.region_feats.shape[1:]
        if d != visual_feat_dim:
            raise DataError(
                f"Batch.region_feats: feature size {d} but the model expects visual_feat_dim={visual_feat_dim} "
                f"(create the model with visual_feat_dim={d} to match these features)"
            )
        if tuple(self.region_boxes.shape) != (b, k, visual_pos_dim):
            raise DataError(
                f"Batch.region_boxes: expected shape {(b, k, visual_pos_dim)}, got {tuple(self.region_boxes.shape)}"
            )
        if tuple(self.region_mask.shape) != (b, k):
            raise DataError(f"Batch.region_mask: expected shape {(b, k)}, got {tuple(self.region_mask.shape)}")
        if vocab_size is not None:
            lo, hi = int(self.input_ids.min()), int(self.input_ids.max())
            if lo < 0 or hi >= vocab_size:
                raise DataError(f"Batch.input_ids: ids must be in [0, {vocab_size}) (the model's vocabulary), got "
                                f"values from {lo} to {hi}")
        if type_vocab_size is not None:
            lo, hi = int(self.token_type_ids.min()), int(self.token_type_ids.max())
            if lo < 0 or hi >= type_vocab_size:
                raise DataError(f"Batch.token_type_ids: must be in [0, {type_vocab_size}) (the token-type table), "
                                f"got values from {lo} to {hi}")
        if k:
            real = self.region_mask.bool()
            if not torch.isfinite(self.region_feats[real]).all():
                rows = sorted({int(i) for i in real.nonzero()[:, 0][~torch.isfinite(self.region_feats[real]).all(-1)]})
                raise DataError(f"Batch.region_feats: NaN or Inf in real (unmasked) regions of samples {rows[:10]}")
            boxes = self.region_boxes[real]
            if boxes.numel() and (not torch.isfinite(boxes).all() or boxes.min() < -0.01 or boxes.max() > 1.01):
                raise DataError(f"Batch.region_boxes: boxes must be x1, y1, x2, y2 divided by the image width/height "
                                f"(in [0, 1]); got values from {float(boxes.min()):g} to {float(boxes.max()):g}"
                                f"{' (pixels?)' if float(boxes.max()) > 2 else ''}")
        if self.answer_targets is not None:
            at = self.answer_targets
            if at.dim() != 2 or at.shape[0] != b or not at.is_floating_point():
                raise DataError(f"Batch.answer_targets: expected soft scores [B={b}, num_answers] (float), got "
                                f"{tuple(at.shape)} {at.dtype}; for class indices use one_hot(..).float() or the "
                                "classification task's labels")


@dataclass
class EncoderOutput:
    """What both encoders return; the optional fields are filled on request, as transformers' ``output_attentions``
    and ``output_hidden_states`` (``encoder(batch, output_attentions=True, output_hidden_states=True)``).

    Attributes:
        text_states: final text-stream states ``[B, T, H]`` aligned with ``input_ids``.
        region_states: final region states ``[B, K, H]`` aligned with ``region_feats``.
        pooled: the cross-modality ``[CLS]`` vector ``[B, H]`` (tanh pooler).
        attentions: with ``output_attentions``: one tensor ``[B, nh, T, K]`` (float32) per layer in which text attends
            to regions, first layer first: each text query's (``[CLS]`` and the words, in ``input_ids`` order)
            attention distribution over the regions ``v1..vK``, per head, before attention dropout. LXMERT: one per
            cross-modality layer, its text→region cross-attention (none when ``x_layers`` is 0). Single stream: one
            per layer, the text tokens' rows of the self-attention at the region tokens, renormalised over the
            regions (the share of the row the regions held is in ``region_attention_mass``). Each row sums to 1
            when the sample has a real region, and padded regions get ~0 (exactly 0 unless every region is padded).
            A sample without real regions gets no NaN: LXMERT gives its uniform ``1/K`` over the padded regions
            (what its cross-attention really does with an all-masked key set); the single stream gives all-zero
            rows (its ``[IMG]``, regions and region ``[SEP]`` are all masked, no attention reaches them). With
            ``K = 0``, ``[B, nh, T, 0]``.
        region_attention_mass: single stream, with ``output_attentions``: per entry of ``attentions``, ``[B, nh, T]``
            (float32), the share of each text query's attention (per head) that went to the regions before the
            renormalisation. None when all of it goes to the regions (LXMERT's cross-attention). Weighting the heads
            by it gives the head average of the full attention, restricted to the regions and renormalised
            (:func:`vlm.models.attention.region_attention`).
        text_hidden_states: with ``output_hidden_states``: the text states ``[B, T, H]`` after each layer, without
            the embedding output (as transformers' LXMERT ``language_hidden_states``; its BERT's ``hidden_states``
            start with the embeddings). LXMERT: after each language layer, then after each cross-modality layer;
            single stream: after each layer, the ``[CLS]`` and word positions. The last one is ``text_states``.
        region_hidden_states: with ``output_hidden_states``: the region states ``[B, K, H]`` after each layer.
            LXMERT: after each object-relationship layer, then after each cross-modality layer (as transformers'
            ``vision_hidden_states``); single stream: after each layer, the ``v1..vK`` positions. The last one is
            ``region_states``.
    """

    text_states: torch.Tensor
    region_states: torch.Tensor
    pooled: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None
    region_attention_mass: tuple[torch.Tensor, ...] | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    region_hidden_states: tuple[torch.Tensor, ...] | None = None
