"""Weight export to transformers.

:func:`to_transformers` runs the import rules (:mod:`vlm.convert.rules`) backwards: an LXMERT ``encoder`` /
``pretraining`` / ``vqa`` model becomes transformers' ``LxmertModel`` / ``LxmertForPreTraining`` /
``LxmertForQuestionAnswering``. What no transformers class can hold (the single stream, the ``[CLS]`` classifier,
settings LXMERT hard-codes) is refused with an :class:`ExportError` naming it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vlm.config import ConfigError
from vlm.convert.rules import IGNORED, VLM_TO_HF_ACT, canonical_key, qkv_slot, rules_for
from vlm.models.tasks import VLMModel

logger = logging.getLogger(__name__)

HF_LAYER_NORM_EPS = 1e-12  # every LayerNorm of transformers' LXMERT uses it (LxmertConfig has no field for it)
_HF_CLASSES = {"encoder": "LxmertModel", "pretraining": "LxmertForPreTraining", "vqa": "LxmertForQuestionAnswering"}


class ExportError(ConfigError):
    """A vlm model, head or setting that no transformers class can hold; the message names it and says why."""


def export_state_dict(state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                      arch: str = "lxmert") -> dict[str, torch.Tensor]:
    """Fill a transformers state dict from a vlm one by running the import rules backwards.

    Every key of ``target`` (the transformers model's own state dict: its keys and shapes) is matched against the rules
    of :func:`vlm.convert.map_state_dict`; the vlm weight the matching rule names is copied to it. A
    ``query``/``key``/``value`` key takes its third of the fused ``qkv`` (rows ``[slot * H, (slot + 1) * H)``, the slot
    the importer concatenates it into), and the tied MLM decoder takes the vlm decoder (the word-embedding matrix).
    Because both directions read one table, importing the result gives back ``state_dict`` exactly. Keys the importer
    ignores (``position_ids``) keep ``target``'s value. The tensors returned may be views of ``state_dict``'s.

    Args:
        state_dict: vlm weights (``model.state_dict()``; only the ``encoder.`` ones to export an encoder alone).
        target: the state dict of the transformers model to fill.
        arch: the vlm architecture whose rules apply (``lxmert``).

    Returns:
        A complete state dict for the transformers model.

    Raises:
        ExportError: naming the vlm weights that no transformers weight takes, the transformers weights that no rule
            or vlm weight fills, and weights whose shapes differ.
    """
    rules = rules_for(arch)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    unfilled, shape_errors = [], []
    for key, ref in target.items():
        ckey = canonical_key(key)
        if IGNORED.search(ckey):
            out[key] = ref
            continue
        for pattern, template, qkv_group in rules:
            m = pattern.match(ckey)
            if m:
                source = template.format(*m.groups())
                break
        else:
            unfilled.append(f"{key} (matches no rule)")
            continue
        if source == "@tied":
            source = "mlm.decoder.weight" if "mlm.decoder.weight" in state_dict else "encoder.embeddings.word.weight"
        if source not in state_dict:
            unfilled.append(f"{key} (from vlm {source}, which this model lacks)")
            continue
        tensor = state_dict[source]
        if qkv_group is not None:
            n = ref.shape[0]
            if tensor.shape[0] != 3 * n:
                shape_errors.append(f"{source}: vlm {tuple(tensor.shape)}, not 3 x {n} rows for {key}")
                continue
            slot = qkv_slot(m.group(qkv_group + 1))
            tensor = tensor[slot * n:(slot + 1) * n]
        if tuple(tensor.shape) != tuple(ref.shape):
            shape_errors.append(f"{key}: vlm {source} {tuple(tensor.shape)} vs transformers {tuple(ref.shape)}")
            continue
        used.add(source)
        out[key] = tensor
    unplaced = [k for k in state_dict if k not in used]
    if unfilled or unplaced or shape_errors:
        raise ExportError(
            f"weight export ({arch}): vlm weights with no transformers counterpart: {unplaced or 'none'}; "
            f"transformers weights with no vlm source: {unfilled or 'none'}; "
            f"shape mismatches: {shape_errors or 'none'}")
    return out


def _export_config(model: VLMModel, task: str) -> dict[str, Any]:
    """The ``LxmertConfig`` fields of ``model`` exported as ``task`` (inverse of :func:`vlm.convert.config_from_hf`).

    The heads that exist are read from the model's modules (they can differ from the config after e.g.
    ``resize_answer_head``), everything else from ``model.config``.
    """
    cfg = model.config
    if cfg.layer_norm_eps != HF_LAYER_NORM_EPS:
        raise ExportError(
            f"model.layer_norm_eps={cfg.layer_norm_eps:g} cannot be exported: transformers' LXMERT hard-codes "
            f"eps={HF_LAYER_NORM_EPS:g} in every LayerNorm (LxmertConfig has no such field), so its outputs would "
            "differ")
    if cfg.hidden_act not in VLM_TO_HF_ACT:
        raise ExportError(f"model.hidden_act={cfg.hidden_act!r} has no transformers equivalent "
                          f"(exportable: {', '.join(VLM_TO_HF_ACT)})")
    fields: dict[str, Any] = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_act": VLM_TO_HF_ACT[cfg.hidden_act],
        "hidden_dropout_prob": float(cfg.hidden_dropout_prob),
        "attention_probs_dropout_prob": float(cfg.attention_probs_dropout_prob),
        "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": float(cfg.initializer_range), "pad_token_id": cfg.pad_token_id,
        "l_layers": cfg.l_layers, "r_layers": cfg.r_layers, "x_layers": cfg.x_layers,
        "visual_feat_dim": cfg.visual_feat_dim, "visual_pos_dim": cfg.visual_pos_dim,
        "num_object_labels": cfg.num_object_labels, "num_attr_labels": cfg.num_attr_labels,
        "visual_obj_loss": cfg.visual_obj_loss, "visual_attr_loss": cfg.visual_attr_loss,
        "visual_feat_loss": cfg.visual_feat_loss, "num_qa_labels": cfg.num_answers, "task_qa": cfg.num_answers > 0,
        "task_obj_predict": True, "task_mask_lm": True, "task_matched": True, "tie_word_embeddings": True,
    }
    answer = getattr(model, "answer", None) if task != "encoder" else None
    if answer is not None:
        fields["num_qa_labels"] = answer.fc2.out_features
        fields["task_qa"] = True
    if task == "pretraining":
        fields["task_qa"] = answer is not None  # LxmertForPreTraining builds answer_head only when task_qa
        if answer is None:
            fields["num_qa_labels"] = 0
        decoders = model.regions.decoders  # the shared transform always exists: task_obj_predict=True
        unknown = sorted(set(decoders) - {"obj", "attr", "feat"})
        if unknown:
            raise ExportError(f"region heads {unknown} have no slot in LxmertVisualObjHead.decoder_dict "
                              "(obj, attr, feat)")
        for name, flag, size in (("obj", "visual_obj_loss", "num_object_labels"),
                                 ("attr", "visual_attr_loss", "num_attr_labels"), ("feat", "visual_feat_loss", None)):
            fields[flag] = name in decoders
            if name in decoders and size:
                fields[size] = decoders[name].out_features
        dec, emb = model.mlm.decoder.weight, model.encoder.word_embeddings.weight
        if dec is not emb and not torch.equal(dec, emb):
            raise ExportError("the MLM decoder (mlm.decoder.weight) is not tied to the word embeddings: vlm ties them "
                              "and LxmertForPreTraining ties cls.predictions.decoder to them as well, so an untied "
                              "decoder is not exported (it would not import back either)")
    if cfg.pad_token_id != 0:
        logger.warning("pad_token_id=%d: transformers' LXMERT embeddings use padding_idx=0 whatever the config says; "
                       "outputs are the same, only training would keep row 0 (not %d) fixed", cfg.pad_token_id,
                       cfg.pad_token_id)
    return fields


def to_transformers(model: VLMModel, encoder_only: bool = False) -> Any:
    """The transformers LXMERT model equivalent to a vlm LXMERT model: same weights, same outputs.

    Exported, by ``model.task``: ``encoder`` → ``LxmertModel``; ``pretraining`` → ``LxmertForPreTraining`` (masked-LM
    head tied to the word embeddings, matching head, ``obj_predict_head`` with the obj/attr/feat decoders the model
    has, and ``answer_head`` with ``task_qa=True`` only when the model has a QA head); ``vqa`` →
    ``LxmertForQuestionAnswering``. The ``LxmertConfig`` is derived from ``model.config`` (sizes, layer counts,
    region dims, vocabulary, positions, token types, dropouts, ``initializer_range``, ``pad_token_id``; ``hidden_act``
    "gelu" → "gelu", "gelu_tanh" → "gelu_new", "relu" → "relu") and from the heads present (``num_qa_labels``,
    ``num_object_labels``, ``num_attr_labels``, ``visual_*_loss``). The weights are copied by the import rules run
    backwards (:func:`export_state_dict`): vlm's fused ``qkv`` is split into query/key/value, so
    ``from_transformers(to_transformers(model))`` gives back the same state dict. The result is on the model's device
    and dtype, in eval mode, and shares no memory with ``model``.

    Same outputs, not the same training: transformers' ``LxmertEmbeddings`` declares ``padding_idx=0`` on the position
    and token-type embeddings (as the original LXMERT code does), so fine-tuning the exported model never updates their
    row 0 (the ``[CLS]`` position and the only token type used), which vlm trains; likewise a model imported with
    :func:`vlm.convert.from_transformers` trains rows the original kept fixed
    (``bench/peer_easy_vqa.py --peer-train-row0``).

    Refused (``ExportError``, a ``ConfigError``), because no transformers class computes the same function: the
    single-stream ``vilbert`` model (BertModel is the closest but has no region input); the ``classification`` task
    (no LXMERT class has a ``[CLS]`` classifier; ``encoder_only=True`` exports its encoder); ``layer_norm_eps`` other
    than 1e-12 (transformers' LXMERT hard-codes it); an MLM decoder untied from the word embeddings; and weights no
    transformers key takes (e.g. modules added to the model), named.

    Args:
        model: a vlm LXMERT model (``arch="lxmert"``) of task ``encoder``, ``pretraining`` or ``vqa``.
        encoder_only: export only the encoder, as an ``LxmertModel``, whatever the task (the heads are left out).

    Returns:
        The ``LxmertModel`` / ``LxmertForPreTraining`` / ``LxmertForQuestionAnswering``, ready for
        ``save_pretrained``.

    Raises:
        ExportError: for what transformers cannot represent (see above); the message names it and says why.
        TypeError: ``model`` is not a vlm model.
    """
    if not isinstance(model, VLMModel):
        raise TypeError(f"to_transformers expects a vlm model (vlm.VLMModel), got {type(model).__name__}")
    cfg = model.config
    if cfg.arch != "lxmert":
        raise ExportError(
            f"cannot export a single-stream ({cfg.arch!r}) model: transformers has no class for it. The closest, "
            "BertModel, is not equivalent: it has no region input, while vlm's single stream puts the regions (feature "
            "and box projections, the [IMG] token, the region token type) into the same sequence as the words; only "
            "the text side would carry over, and BertModel's outputs would not be the model's")
    task = "encoder" if encoder_only else model.task
    if task not in _HF_CLASSES:
        why = "it has no transformers class"
        if task == "classification":
            why = ("transformers has no LXMERT class with a [CLS] classifier (LXMERT's classes are LxmertModel, "
                   "LxmertForPreTraining and LxmertForQuestionAnswering); pass encoder_only=True to export the "
                   "encoder as an LxmertModel without the classifier")
        raise ExportError(f"cannot export a {task!r} model: {why}")
    import transformers

    hf = getattr(transformers, _HF_CLASSES[task])(transformers.LxmertConfig(**_export_config(model, task)))
    own = model.state_dict()
    if encoder_only:
        own = {k: v for k, v in own.items() if k.startswith("encoder.")}
    hf.load_state_dict(export_state_dict(own, hf.state_dict(), cfg.arch), strict=True)
    ref = model.encoder.word_embeddings.weight
    return hf.to(device=ref.device, dtype=ref.dtype).eval()
