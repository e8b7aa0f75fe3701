"""Reading the text→region attention that the encoders return with ``output_attentions=True``.

The same code for every architecture: it reads only :attr:`~vlm.batch.EncoderOutput.attentions` and
:attr:`~vlm.batch.EncoderOutput.region_attention_mass`, never the layers.
"""

from __future__ import annotations

from typing import Any

import torch

from vlm.batch import EncoderOutput


def _encoder_output(output: Any) -> EncoderOutput:
    """``output`` itself, or the ``encoder_output`` of a task model's output."""
    enc = output if isinstance(output, EncoderOutput) else getattr(output, "encoder_output", None)
    if not isinstance(enc, EncoderOutput) and not hasattr(output, "encoder_output"):
        raise ValueError(f"expected an EncoderOutput or a task output carrying one, got {type(output).__name__}")
    if enc is None or enc.attentions is None:
        raise ValueError("the output holds no attentions: run the model with output_attentions=True")
    if not enc.attentions:
        raise ValueError("the model has no layer in which text attends to regions")
    return enc


def region_attention(output: Any, layer: int = -1) -> torch.Tensor:
    """Head-averaged attention of every text query over the regions in ``layer``: ``[B, T, K]``, float32.

    Where a layer's text queries also attend to other tokens (the single stream), the heads are weighted by the
    share of their attention that went to the regions: the result is the head-averaged attention row restricted to
    the regions and renormalised over them. Where they attend to regions only (LXMERT's cross-attention), it is the
    plain mean over heads. Rows sum to 1 for samples with real regions; padded regions get ~0.

    Args:
        output: an :class:`~vlm.batch.EncoderOutput`, or a task output with ``encoder_output``, computed with
            ``output_attentions=True``.
        layer: which entry of ``attentions`` (LXMERT: cross-modality layer; single stream: layer); -1 the last.

    Raises:
        ValueError: no attentions in ``output``, or the model has no layer in which text attends to regions.
    """
    enc = _encoder_output(output)
    probs = enc.attentions[layer]  # (B, nh, T, K)
    if enc.region_attention_mass is None:
        return probs.mean(1)
    mass = enc.region_attention_mass[layer].unsqueeze(-1)  # (B, nh, T, 1)
    return (probs * mass).sum(1) / mass.sum(1).clamp_min(1e-12)


def cls_region_attention(output: Any, layer: int = -1) -> torch.Tensor:
    """``[B, K]``: the head-averaged attention of ``[CLS]`` (query 0) over the regions in ``layer`` (see
    :func:`region_attention`); what ``vlm predict`` draws for the last layer."""
    return region_attention(output, layer)[:, 0]


__all__ = ["cls_region_attention", "region_attention"]
