"""Single-stream vision-and-language BERT (what the product card calls "vilbert").

One BERT stack over ``[CLS] [IMG] v1..vK [SEP] w1..wN [SEP]`` (the layout of VisualBERT / UNITER-style single-stream
models; Lu et al. 2019's ViLBERT is two-stream with co-attention). Text tokens are embedded exactly as BERT does and keep
BERT's position ids, so any BERT checkpoint loads and, with no regions, reproduces BERT. The region side — ``[IMG]``,
the regions (LXMERT's feature+box encoder) and a region ``[SEP]`` — gets the token type ``region_token_type`` and its
own LayerNorm; it carries no position embedding (boxes give the geometry). A sample without regions also masks its
``[IMG]`` and region ``[SEP]``.
"""

from __future__ import annotations

import torch
from torch import nn

from vlm.batch import Batch, EncoderOutput
from vlm.config import ModelConfig
from vlm.layers import Pooler, RegionEncoder, TextEmbeddings, TransformerLayer, key_padding_bias


class SingleStreamEncoder(nn.Module):
    """Single-stream encoder: ``Batch`` → :class:`EncoderOutput`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = TextEmbeddings(cfg)
        self.region_encoder = RegionEncoder(cfg)
        self.img_token = nn.Parameter(torch.zeros(cfg.hidden_size))  # learned [IMG] embedding
        self.region_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.pooler = Pooler(cfg)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word

    def init_own_weights(self, std: float) -> None:
        """The learned ``[IMG]`` embedding (a bare parameter, outside the modules that ``init_weights`` visits)."""
        nn.init.normal_(self.img_token, std=std)

    def _region_side(self, feats: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[IMG] v1..vK [SEP]`` embedded: ``[B, K+2, H]``."""
        emb = self.embeddings
        regions = self.region_encoder(feats, boxes, mask)  # (B, K, H)
        b, _, h = regions.shape
        img = self.img_token.to(regions.dtype).expand(b, 1, h)
        sep = emb.word.weight[self.config.sep_token_id].to(regions.dtype).expand(b, 1, h)
        x = torch.cat([img, regions, sep], dim=1) + emb.token_type.weight[self.config.region_token_type]
        return emb.drop(self.region_norm(x))

    def forward(self, batch: Batch, output_attentions: bool = False, output_hidden_states: bool = False
                ) -> EncoderOutput:
        """Encode ``batch``. ``output_attentions``: also each layer's attention of the text tokens over the regions,
        renormalised over the regions; ``output_hidden_states``: also the text and region states after every layer
        (see :class:`EncoderOutput`)."""
        cfg = self.config
        batch.check(cfg.visual_feat_dim, cfg.visual_pos_dim, cfg.vocab_size, cfg.type_vocab_size)
        k = batch.region_feats.shape[1]
        text = self.embeddings(batch.input_ids, batch.token_type_ids)  # (B, T, H)
        region = self._region_side(batch.region_feats, batch.region_boxes, batch.region_mask)  # (B, K+2, H)
        x = torch.cat([text[:, :1], region, text[:, 1:]], dim=1)  # [CLS] [IMG] v.. [SEP] w.. [SEP]

        rmask = batch.region_mask.to(batch.attention_mask.dtype)
        has = rmask.amax(dim=1, keepdim=True) if k else rmask.new_zeros(rmask.shape[0], 1)
        am = batch.attention_mask
        mask = torch.cat([am[:, :1], has, rmask, has, am[:, 1:]], dim=1)  # (B, T+K+2)
        bias = key_padding_bias(mask, x.dtype)
        texts: list[torch.Tensor] = []
        regions: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        masses: list[torch.Tensor] = []
        for layer in self.layers:
            if output_attentions:
                x, probs = layer(x, bias, output_attentions=True)  # (B, nh, S, S)
                rows = torch.cat([probs[:, :, :1], probs[:, :, k + 3 :]], dim=2)[..., 2 : k + 2]  # text → v1..vK
                mass = rows.sum(-1)  # (B, nh, T)
                attentions.append(rows / mass.clamp_min(1e-12).unsqueeze(-1))
                masses.append(mass)
            else:
                x = layer(x, bias)
            if output_hidden_states:
                texts.append(torch.cat([x[:, :1], x[:, k + 3 :]], dim=1))
                regions.append(x[:, 2 : k + 2])
        text_states = torch.cat([x[:, :1], x[:, k + 3 :]], dim=1)
        return EncoderOutput(text_states=text_states, region_states=x[:, 2 : k + 2], pooled=self.pooler(x),
                             attentions=tuple(attentions) if output_attentions else None,
                             region_attention_mass=tuple(masses) if output_attentions else None,
                             text_hidden_states=tuple(texts) if output_hidden_states else None,
                             region_hidden_states=tuple(regions) if output_hidden_states else None)
