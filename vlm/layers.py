"""Building blocks shared by both encoders: BERT embeddings, the region encoder, attention, FFN and layers.

Every block is post-LayerNorm, as in BERT (Devlin et al., 2019) and LXMERT (Tan & Bansal, 2019). Attention goes through
``torch.nn.functional.scaled_dot_product_attention``; self-attention uses one fused QKV projection. With
``output_attentions=True`` the attention layers also return their attention probabilities, computed on the side by
:meth:`Attention.probs` from the same queries and keys: the layer outputs stay bit-identical either way.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vlm.config import ModelConfig
from vlm.errors import DataError

_ACTS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str):
    return _ACTS[name]


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a 1/0 key mask ``[B, S]`` into an additive bias ``[B, 1, 1, S]`` for SDPA.

    Masked keys get the dtype's most negative finite value rather than ``-inf``: a query whose keys are all masked
    then attends uniformly instead of producing NaN (the same convention as BERT/LXMERT in transformers).
    """
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def _sdpa_backend(q: torch.Tensor) -> contextlib.AbstractContextManager:
    """On CPU with autograd recording, SDPA's math kernel; otherwise SDPA's own choice.

    Without dropout, SDPA picks its CPU flash kernel, whose backward is slow at these shapes: measured on 2 AVX512
    cores, lxmert-mini at batch 64 spent 61% of a bf16 training step in the flash backward (1.86 s per step against
    0.83 s with the math kernel). In inference the flash forward is the faster one (0.72 s vs 1.02 s for a batch of
    256), so it is kept there.
    """
    if q.device.type == "cpu" and q.requires_grad:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class TextEmbeddings(nn.Module):
    """BERT embeddings: word + absolute position + token type, LayerNorm, dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.max_positions = cfg.max_position_embeddings

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.max_positions:
            raise DataError(f"text of {t} tokens is longer than max_position_embeddings={self.max_positions}")
        pos = self.position.weight[:t]  # (T, H), broadcast over the batch
        x = self.word(input_ids) + pos + self.token_type(token_type_ids)
        return self.drop(self.norm(x))


class RegionEncoder(nn.Module):
    """LXMERT's object encoder: ``(LN(W_f f) + LN(W_b box)) / 2`` then dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.feat_proj = nn.Linear(cfg.visual_feat_dim, cfg.hidden_size)
        self.feat_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.box_proj = nn.Linear(cfg.visual_pos_dim, cfg.hidden_size)
        self.box_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, feats: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` ``[B, K]``: non-finite values in padding regions are zeroed first. Finite padding already has no
        effect on real outputs (masked keys get zero attention weight), but NaN × 0 is NaN; padding rows keep their
        values otherwise, so padded region outputs match transformers' LXMERT exactly."""
        dtype = self.feat_proj.weight.dtype
        if mask is not None:
            pad = ~mask.bool()[..., None]
            zero = torch.zeros((), dtype=feats.dtype, device=feats.device)
            feats = torch.where(pad & ~torch.isfinite(feats), zero, feats)
            boxes = torch.where(pad & ~torch.isfinite(boxes), zero.to(boxes.dtype), boxes)
        x = self.feat_norm(self.feat_proj(feats.to(dtype)))
        y = self.box_norm(self.box_proj(boxes.to(dtype)))
        return self.drop((x + y) * 0.5)


class Attention(nn.Module):
    """Multi-head attention with output projection, dropout, residual and post-LayerNorm.

    One fused ``qkv`` projection. Cross-attention uses ``project`` on both streams and ``attend`` with the queries of
    one and the keys/values of the other (LXMERT shares one cross-attention module for both directions, so every
    projection of both streams is needed and each stream takes one GEMM). :meth:`probs` gives the attention
    probabilities, which SDPA never materialises.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = h // cfg.num_attention_heads
        self.qkv = nn.Linear(h, 3 * h)
        self.out = nn.Linear(h, h)
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.attn_dropout = cfg.attention_probs_dropout_prob

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x`` ``[B, S, H]``, each ``[B, nh, S, hd]``, from one fused GEMM."""
        b, s, _ = x.shape
        return self.qkv(x).view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def attend(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """SDPA of ``q`` over ``k``/``v`` (``bias`` ``[B, 1, 1, S']``), output projection, residual ``x``, LayerNorm."""
        b, s, h = x.shape
        p = self.attn_dropout if self.training else 0.0
        with _sdpa_backend(q):
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, nh, S, hd)
        ctx = ctx.transpose(1, 2).reshape(b, s, h)
        return self.norm(x + self.drop(self.out(ctx)))

    @staticmethod
    def probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Attention probabilities ``softmax(q k^T / sqrt(hd) + bias)`` ``[B, nh, Sq, Sk]``, in float32 (autocast off).

        What :meth:`attend`'s SDPA computes inside, before attention dropout; a separate computation, so asking for
        it changes nothing in the layer's output. A query whose keys are all masked gets uniform weights (see
        :func:`key_padding_bias`).
        """
        with torch.autocast(q.device.type, enabled=False):
            scores = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
            if bias is not None:
                scores = scores + bias.float()
            return scores.softmax(-1)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, output_attentions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Self-attention of ``x`` ``[B, S, H]``; ``bias`` is ``[B, 1, 1, S]``. With ``output_attentions``, also the
        probabilities ``[B, nh, S, S]`` (float32, :meth:`probs`)."""
        q, k, v = self.project(x)
        out = self.attend(x, q, k, v, bias)
        return (out, self.probs(q, k, bias)) if output_attentions else out


class FeedForward(nn.Module):
    """Position-wise FFN with residual and post-LayerNorm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.fc2(self.act(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """A BERT layer: self-attention then FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.ffn = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, output_attentions: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``[B, S, H]`` → ``[B, S, H]``; with ``output_attentions``, also the self-attention ``[B, nh, S, S]``."""
        if not output_attentions:
            return self.ffn(self.attn(x, bias))
        x, probs = self.attn(x, bias, output_attentions=True)
        return self.ffn(x), probs


class CrossModalLayer(nn.Module):
    """LXMERT cross-modality layer: shared cross-attention both ways, then per-stream self-attention and FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cross = Attention(cfg)
        self.text_self = Attention(cfg)
        self.region_self = Attention(cfg)
        self.text_ffn = FeedForward(cfg)
        self.region_ffn = FeedForward(cfg)

    def forward(
        self, text: torch.Tensor, text_bias: torch.Tensor, region: torch.Tensor, region_bias: torch.Tensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """``(text, region)`` states; with ``output_attentions``, also the text→region cross-attention
        ``[B, nh, T, K]`` (float32, :meth:`Attention.probs`) as a third element."""
        qt, kt, vt = self.cross.project(text)
        qr, kr, vr = self.cross.project(region)
        t = self.cross.attend(text, qt, kr, vr, region_bias)  # text queries over regions
        r = self.cross.attend(region, qr, kt, vt, text_bias)  # region queries over text
        t = self.text_ffn(self.text_self(t, text_bias))
        r = self.region_ffn(self.region_self(r, region_bias))
        if output_attentions:
            return t, r, self.cross.probs(qt, kr, region_bias)
        return t, r


class Pooler(nn.Module):
    """``tanh(W h_[CLS] + b)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(states[:, 0]))


def init_weights(module: nn.Module, std: float) -> None:
    """BERT initialisation: normal(0, std) weights, zero biases, unit LayerNorms, zero padding embedding.

    One exception: the region feature projection's bias is normal(0, std) too. Masked-region pretraining zeroes 80%
    of the masked regions' features (LXMERT's recipe); with a zero bias, ``LN(W_f 0 + 0)`` normalises an all-zero
    vector, whose gradient is ``1 / sqrt(eps)`` = 1e6 times the upstream one: measured on lxmert-mini at init, a
    global gradient norm of 54,196 (all of it on that bias) against 116 without zeroed regions, so clipping to 1.0
    scaled every other gradient down ~500x for the first ~100 steps. A non-constant bias makes the zeroed input a
    well-conditioned constant vector.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, RegionEncoder):  # after its children (nn.Module.apply visits them first)
        nn.init.normal_(module.feat_proj.bias, std=std)


__all__ = [
    "Attention",
    "CrossModalLayer",
    "FeedForward",
    "Pooler",
    "RegionEncoder",
    "TextEmbeddings",
    "TransformerLayer",
    "init_weights",
    "key_padding_bias",
]
