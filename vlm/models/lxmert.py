"""LXMERT: Learning Cross-Modality Encoder Representations from Transformers (Tan & Bansal, EMNLP 2019).

Dual stream: BERT language layers over the words, object-relationship layers over the regions, then cross-modality
layers in which one shared cross-attention module attends text→regions and regions→text before per-stream
self-attention and FFN. The pooled output is ``tanh(W h_[CLS])`` of the final text stream.
"""

from __future__ import annotations

import torch
from torch import nn

from vlm.batch import Batch, EncoderOutput
from vlm.config import ModelConfig
from vlm.layers import CrossModalLayer, Pooler, RegionEncoder, TextEmbeddings, TransformerLayer, key_padding_bias


class LxmertEncoder(nn.Module):
    """The LXMERT encoder: ``Batch`` → :class:`EncoderOutput`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.region_encoder = RegionEncoder(cfg)
        self.text_layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.l_layers))
        self.region_layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.r_layers))
        self.cross_layers = nn.ModuleList(CrossModalLayer(cfg) for _ in range(cfg.x_layers))
        self.pooler = Pooler(cfg)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text stream after the language layers only (before any cross-modality layer): ``[B, T, H]``."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        bias = key_padding_bias(attention_mask, x.dtype)
        for layer in self.text_layers:
            x = layer(x, bias)
        return x

    def forward(self, batch: Batch, output_attentions: bool = False, output_hidden_states: bool = False
                ) -> EncoderOutput:
        """Encode ``batch``. ``output_attentions``: also each cross-modality layer's text→region cross-attention;
        ``output_hidden_states``: also the states after every layer (see :class:`EncoderOutput`)."""
        cfg = self.config
        batch.check(cfg.visual_feat_dim, cfg.visual_pos_dim, cfg.vocab_size, cfg.type_vocab_size)
        texts: list[torch.Tensor] = []
        regions: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        text = self.embeddings(batch.input_ids, batch.token_type_ids)  # (B, T, H)
        text_bias = key_padding_bias(batch.attention_mask, text.dtype)  # (B, 1, 1, T)
        for layer in self.text_layers:
            text = layer(text, text_bias)
            texts.append(text)

        region = self.region_encoder(batch.region_feats, batch.region_boxes, batch.region_mask)  # (B, K, H)
        region_bias = key_padding_bias(batch.region_mask, region.dtype)  # (B, 1, 1, K)
        for layer in self.region_layers:
            region = layer(region, region_bias)
            regions.append(region)

        for layer in self.cross_layers:
            if output_attentions:
                text, region, attention = layer(text, text_bias, region, region_bias, output_attentions=True)
                attentions.append(attention)  # (B, nh, T, K)
            else:
                text, region = layer(text, text_bias, region, region_bias)
            texts.append(text)
            regions.append(region)
        return EncoderOutput(text_states=text, region_states=region, pooled=self.pooler(text),
                             attentions=tuple(attentions) if output_attentions else None,
                             text_hidden_states=tuple(texts) if output_hidden_states else None,
                             region_hidden_states=tuple(regions) if output_hidden_states else None)
