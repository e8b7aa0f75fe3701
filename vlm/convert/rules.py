"""The key-mapping rules between transformers / original LXMERT weights and vlm's, shared by import and export.

One table maps every transformers key (after :func:`canonical_key` strips the wrapper prefixes) to a vlm weight:
:func:`rules_for` compiles it for an architecture, :func:`qkv_slot` gives the third of vlm's fused ``qkv`` that a
``query``/``key``/``value`` weight takes. Import (:mod:`vlm.convert.importing`) runs the rules forwards, export
(:mod:`vlm.convert.exporting`) backwards, so a model round-trips exactly. The activation-name tables of both
directions live here too.
"""

from __future__ import annotations

import re

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

IGNORED = re.compile(r"(^|\.)position_ids$")

# transformers' activation names → vlm's ("relu" is the same in both). Export uses "gelu_new" for "gelu_tanh".
HF_TO_VLM_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
VLM_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _layer_rules(src: str, dst: str, rules) -> list:
    return [(rf"{src}\.(\d+)\." + pat, dst + ".{0}." + out, qkv) for pat, out, qkv in rules]


def qkv_slot(name: str) -> int:
    """The slot (0, 1, 2) of a ``query``/``key``/``value`` weight in vlm's fused ``qkv``."""
    return _QKV[name]


def rules_for(arch: str) -> list:
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
