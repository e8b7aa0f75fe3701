"""Weight import from transformers and from the original LXMERT release.

Sources understood:
- transformers ``LxmertModel``, ``LxmertForPreTraining``, ``LxmertForQuestionAnswering`` (objects, or their state
  dicts with an ``LxmertConfig``/dict config);
- the original airsplay/lxmert checkpoints (keys prefixed ``module.`` and ``bert.``; fine-tuned VQA checkpoints with
  ``lxrt_encoder.model.bert.`` and ``logit_fc.``), whose config is inferred from the tensor shapes;
- transformers ``BertModel`` / ``BertForMaskedLM`` / ``BertForPreTraining`` (and their state dicts), which load into
  the single-stream model.

Every source key is mapped by an explicit rule (:mod:`vlm.convert.rules`); separate query/key/value weights are
concatenated into vlm's fused ``qkv``. Unmatched keys are listed by name, and strict loading fails on them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from vlm.config import ModelConfig, apply_dict
from vlm.convert.rules import HF_TO_VLM_ACT, IGNORED, canonical_key, qkv_slot, rules_for
from vlm.errors import CheckpointError, WeightImportError
from vlm.io import load_state_dict
from vlm.models.folder.build import build_model
from vlm.models.tasks import VLMModel

logger = logging.getLogger(__name__)


def map_state_dict(
    state_dict: dict[str, torch.Tensor], arch: str
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Translate a transformers / airsplay state dict into vlm key names.

    Returns:
        (mapped tensors, source keys that matched no rule, tied-decoder keys that were dropped).
    """
    rules = rules_for(arch)
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, list] = {}
    unmatched, tied = [], []
    for key, tensor in state_dict.items():
        ckey = canonical_key(key)
        if IGNORED.search(ckey):
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
                slot = qkv_slot(m.group(qkv_group + 1))
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


def is_lxmert(keys) -> bool:
    """Whether state-dict keys are LXMERT's (cross-modality layers or the region encoder) rather than a BERT's."""
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
    out["hidden_act"] = HF_TO_VLM_ACT.get(act, act)
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
    state_dict, config = resolve_source(source, config)
    arch = "lxmert" if is_lxmert(state_dict) else "vilbert"
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
    model = build_model(cfg, task)
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
        raise WeightImportError("shape mismatch importing weights:\n  " + "\n  ".join(shape_errors))
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


def resolve_source(source: Any, config: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """The state dict and config of a module, a state dict, a weights file or a transformers model folder.

    The config is ``config`` when given, else the module's ``config`` or the folder's ``config.json``, else None.
    """
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
            raise CheckpointError(f"{source}: no model.safetensors or pytorch_model.bin in this folder")
    if not path.exists():
        raise CheckpointError(f"weights not found: {path}")
    return load_state_dict(path), config
