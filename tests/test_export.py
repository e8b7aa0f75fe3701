"""Export to transformers (``vlm.to_transformers``): the same numbers (fp32, eval, max abs diff <= 1e-5), exact round
trips vlm → transformers → vlm and transformers → vlm → transformers, and refusals of what transformers cannot hold."""

import pytest
import torch
from torch import nn
from transformers import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering, LxmertModel

import vlm
from vlm import convert
from vlm.convert import rules

from vlm_testing import TINY_MODEL, make_batch

ATOL = 1e-5
# TINY_MODEL (hidden 32, 4 heads, 1/1/1 layers, no dropout) plus the sizes make_batch() fits.
SIZES = dict(vocab_size=99, visual_feat_dim=12, num_object_labels=11, num_attr_labels=5, max_position_embeddings=40)


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a - b).abs().max().item()
    assert diff <= ATOL, f"max abs diff {diff:.3g} > {ATOL}"
    return diff


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every weight distinctive (zero biases and unit LayerNorms at init would hide mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def tiny(task: str, seed: int = 0, **kw) -> vlm.VLMModel:
    torch.manual_seed(seed)
    fields = {**TINY_MODEL, **SIZES, "visual_obj_loss": True, "visual_attr_loss": True, **kw}
    return perturb(vlm.create_model("lxmert-mini", task=task, **fields), seed)


def hf_inputs(b: vlm.Batch) -> dict:
    return dict(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids,
                visual_feats=b.region_feats, visual_pos=b.region_boxes, visual_attention_mask=b.region_mask)


def check_encoder(m: vlm.VLMModel, hf: LxmertModel, b: vlm.Batch) -> None:
    with torch.no_grad():
        out, ref = m.encoder(b), hf(**hf_inputs(b))
    close(out.text_states, ref.language_output)
    close(out.region_states, ref.vision_output)
    close(out.pooled, ref.pooled_output)


def check_pretraining(m: vlm.VLMModel, hf: LxmertForPreTraining, b: vlm.Batch) -> None:
    with torch.no_grad():
        out, ref, base = m(b), hf(**hf_inputs(b)), hf.lxmert(**hf_inputs(b))
        regions = hf.obj_predict_head(base.vision_output)
    close(out.text_states, base.language_output)
    close(out.region_states, base.vision_output)
    close(out.pooled, base.pooled_output)
    close(out.mlm_logits, ref.prediction_logits)
    close(out.matched_logits, ref.cross_relationship_score)
    if m.answer is not None:
        close(out.answer_logits, ref.question_answering_score)
    assert set(out.region_outputs) == set(regions)
    for k in regions:
        close(out.region_outputs[k], regions[k])


def check_vqa(m: vlm.VLMModel, hf: LxmertForQuestionAnswering, b: vlm.Batch) -> None:
    with torch.no_grad():
        close(m(b).logits, hf(**hf_inputs(b)).question_answering_score)


def same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not differ, f"differ: {differ}"


# ------------------------------------------------------------------------------------------------ vlm → transformers

def test_encoder_exports_as_lxmert_model_with_the_same_outputs():
    m = tiny("encoder")
    hf = vlm.to_transformers(m)
    assert type(hf) is LxmertModel and not hf.training and not any(x.training for x in hf.modules())
    check_encoder(m, hf, make_batch())


@pytest.mark.parametrize("kw", [
    dict(num_answers=7),  # every head
    dict(num_answers=0),  # no QA head: task_qa=False
    dict(num_answers=3, visual_obj_loss=False, visual_attr_loss=False),  # lxmert-mini's heads: feat only
    dict(num_answers=3, visual_feat_loss=False, hidden_act="gelu_tanh"),
    dict(num_answers=0, visual_obj_loss=False, visual_attr_loss=False, visual_feat_loss=False, hidden_act="relu"),
], ids=["all-heads", "no-qa", "feat-only", "no-feat-gelu-tanh", "no-region-decoders-relu"])
def test_pretraining_exports_every_head(kw):
    m = tiny("pretraining", **kw)
    hf = vlm.to_transformers(m)
    assert type(hf) is LxmertForPreTraining and not hf.training
    c = hf.config
    assert c.task_qa == (kw["num_answers"] > 0) and hasattr(hf, "answer_head") == c.task_qa
    if c.task_qa:
        assert c.num_qa_labels == kw["num_answers"]
    assert c.task_obj_predict and set(hf.obj_predict_head.decoder_dict) == set(m.regions.decoders)
    assert (c.visual_obj_loss, c.visual_attr_loss, c.visual_feat_loss) == (
        m.config.visual_obj_loss, m.config.visual_attr_loss, m.config.visual_feat_loss)
    assert hf.cls.predictions.decoder.weight is hf.lxmert.embeddings.word_embeddings.weight  # tied, as in vlm
    check_pretraining(m, hf, make_batch())


def test_vqa_exports_as_lxmert_for_question_answering():
    m = tiny("vqa", num_answers=7)
    hf = vlm.to_transformers(m)
    assert type(hf) is LxmertForQuestionAnswering and hf.config.num_qa_labels == 7 and not hf.training
    check_vqa(m, hf, make_batch())


def test_answer_head_is_lxmert_visual_answer_head():
    """vlm AnswerHead Linear(H,2H) → GeLU → LayerNorm → Linear(2H,N) is HF's logit_fc, layer by layer."""
    m = tiny("vqa", num_answers=7)
    fc = vlm.to_transformers(m).answer_head.logit_fc
    a = m.answer
    assert [type(x).__name__ for x in fc] == ["Linear", "GeLU", "LayerNorm", "Linear"]
    assert (fc[0].in_features, fc[0].out_features, fc[3].in_features, fc[3].out_features) == (32, 64, 64, 7)
    assert fc[2].normalized_shape == a.norm.normalized_shape == (64,) and fc[2].eps == a.norm.eps == 1e-12
    for mine, theirs in ((a.fc1, fc[0]), (a.norm, fc[2]), (a.fc2, fc[3])):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(3)) * 3  # wide enough to tell GeLU variants apart
    with torch.no_grad():
        close(a(x), fc(x))


def test_config_is_derived_and_maps_back():
    m = tiny("pretraining", num_answers=7, hidden_act="gelu_tanh", hidden_dropout_prob=0.15,
             attention_probs_dropout_prob=0.05, type_vocab_size=3, visual_pos_dim=5, initializer_range=0.03)
    c = vlm.to_transformers(m).config
    assert isinstance(c, LxmertConfig)
    expect = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=64, hidden_act="gelu_new",
                  hidden_dropout_prob=0.15, attention_probs_dropout_prob=0.05, max_position_embeddings=40,
                  type_vocab_size=3, initializer_range=0.03, l_layers=1, r_layers=1, x_layers=1, visual_feat_dim=12,
                  visual_pos_dim=5, num_qa_labels=7, num_object_labels=11, num_attr_labels=5, visual_obj_loss=True,
                  visual_attr_loss=True, visual_feat_loss=True, task_qa=True, task_obj_predict=True, pad_token_id=0,
                  tie_word_embeddings=True)
    assert {k: getattr(c, k) for k in expect} == expect
    back = convert.config_from_hf(c, "lxmert")
    mine = m.config.to_dict()
    assert {k: mine[k] for k in back if k != "arch"} == {k: v for k, v in back.items() if k != "arch"}
    assert vlm.to_transformers(tiny("encoder", hidden_act="gelu")).config.hidden_act == "gelu"


def test_export_keeps_dtype_and_shares_no_memory():
    m = tiny("vqa", num_answers=7).to(torch.bfloat16)
    hf = vlm.to_transformers(m)
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        m.encoder.embeddings.word.weight.zero_()
    assert hf.lxmert.embeddings.word_embeddings.weight.abs().sum() > 0


def test_encoder_only_exports_any_lxmert_task():
    for task, kw in (("pretraining", dict(num_answers=7)), ("vqa", dict(num_answers=7)),
                     ("classification", dict(num_labels=3))):
        m = tiny(task, **kw)
        hf = vlm.to_transformers(m, encoder_only=True)
        assert type(hf) is LxmertModel
        check_encoder(m, hf, make_batch())


# --------------------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("task,kw", [("encoder", {}), ("pretraining", dict(num_answers=7)),
                                     ("pretraining", dict(num_answers=0, visual_attr_loss=False)),
                                     ("vqa", dict(num_answers=7))])
def test_round_trip_vlm_to_hf_to_vlm_is_exact(task, kw):
    m = tiny(task, **kw)
    back = vlm.from_transformers(vlm.to_transformers(m))
    assert back.task == task
    same_state(m.state_dict(), back.state_dict())
    fields = ("hidden_size", "num_attention_heads", "intermediate_size", "l_layers", "r_layers", "x_layers",
              "visual_feat_dim", "visual_pos_dim", "vocab_size", "num_object_labels", "num_attr_labels",
              "visual_obj_loss", "visual_attr_loss", "visual_feat_loss", "hidden_act", "layer_norm_eps")
    assert {f: getattr(back.config, f) for f in fields} == {f: getattr(m.config, f) for f in fields}
    if task != "encoder":
        assert back.config.num_answers == m.config.num_answers


def hf_config(**kw) -> LxmertConfig:
    base = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37, l_layers=2, r_layers=1,
                x_layers=2, visual_feat_dim=12, visual_pos_dim=4, num_qa_labels=7, num_object_labels=11,
                num_attr_labels=5, max_position_embeddings=40)
    return LxmertConfig(**{**base, **kw})


@pytest.mark.parametrize("cls,kw", [
    (LxmertModel, {}),
    (LxmertForPreTraining, {}),
    (LxmertForPreTraining, dict(task_qa=False, visual_feat_loss=False, hidden_act="gelu_new")),
    (LxmertForQuestionAnswering, dict(num_qa_labels=5)),
], ids=["model", "pretraining", "pretraining-no-qa", "qa"])
def test_round_trip_hf_to_vlm_to_hf_is_exact(cls, kw):
    torch.manual_seed(0)
    hf = perturb(cls(hf_config(**kw)))
    m = vlm.from_transformers(hf)
    again = vlm.to_transformers(m)
    assert type(again) is cls
    same_state(hf.state_dict(), again.state_dict())
    for k in ("hidden_act", "num_qa_labels", "task_qa", "visual_obj_loss", "visual_attr_loss", "visual_feat_loss"):
        if cls is not LxmertModel and (k != "num_qa_labels" or hf.config.task_qa):
            assert getattr(again.config, k) == getattr(hf.config, k), k
    b = make_batch()
    {LxmertModel: check_encoder, LxmertForPreTraining: check_pretraining,
     LxmertForQuestionAnswering: check_vqa}[cls](m, again, b)


def test_save_pretrained_round_trip_offline(tmp_path):
    """README's example: ``hf.save_pretrained(dir)`` then ``LxmertForQuestionAnswering.from_pretrained(dir)``."""
    m = tiny("vqa", num_answers=7)
    hf = vlm.to_transformers(m)
    hf.save_pretrained(tmp_path / "hf-lxmert")
    loaded = LxmertForQuestionAnswering.from_pretrained(tmp_path / "hf-lxmert", local_files_only=True).eval()
    same_state(hf.state_dict(), loaded.state_dict())
    check_vqa(m, loaded, make_batch())
    same_state(m.state_dict(), vlm.from_transformers(tmp_path / "hf-lxmert").state_dict())

    p = tiny("pretraining", num_answers=7)
    vlm.to_transformers(p).save_pretrained(tmp_path / "hf-pre")
    loaded = LxmertForPreTraining.from_pretrained(tmp_path / "hf-pre", local_files_only=True).eval()
    assert loaded.cls.predictions.decoder.weight is loaded.lxmert.embeddings.word_embeddings.weight
    check_pretraining(p, loaded, make_batch())


# ----------------------------------------------------------------------------------------------------------- refusals

def test_single_stream_is_refused_naming_bert_model():
    m = vlm.create_model("vilbert-mini", **{**TINY_MODEL, **SIZES, "sep_token_id": 2})
    with pytest.raises(convert.ExportError, match=r"single-stream.*BertModel.*no region input"):
        vlm.to_transformers(m)


def test_classifier_is_refused_and_export_errors_are_config_errors():
    m = tiny("classification", num_labels=3)
    with pytest.raises(vlm.ConfigError, match=r"'classification'.*no LXMERT class with a \[CLS\] classifier"):
        vlm.to_transformers(m)
    assert issubclass(convert.ExportError, vlm.ConfigError)


def test_settings_and_heads_transformers_cannot_hold_are_refused():
    with pytest.raises(convert.ExportError, match=r"layer_norm_eps=1e-06.*hard-codes eps=1e-12"):
        vlm.to_transformers(tiny("encoder", layer_norm_eps=1e-6))

    m = tiny("pretraining", num_answers=7)
    m.mlm.decoder.weight = nn.Parameter(m.encoder.word_embeddings.weight.detach() + 1)
    with pytest.raises(convert.ExportError, match=r"MLM decoder \(mlm.decoder.weight\) is not tied"):
        vlm.to_transformers(m)

    m = tiny("vqa", num_answers=7)
    m.adapter = nn.Linear(32, 32)  # a weight transformers has no key for
    with pytest.raises(convert.ExportError, match=r"no transformers counterpart: \['adapter.weight', 'adapter.bias'\]"):
        vlm.to_transformers(m)

    with pytest.raises(TypeError, match="expects a vlm model"):
        vlm.to_transformers(LxmertModel(hf_config()))


# ---------------------------------------------------------------------------------------- the parity test can fail

def test_parity_detects_swapped_layers_after_export():
    """Swapping the text and region self-attention layers' weights in the exported model breaks parity."""
    m = tiny("pretraining", num_answers=7)
    hf = vlm.to_transformers(m)
    text, region = hf.lxmert.encoder.layer[0], hf.lxmert.encoder.r_layers[0]
    t, r = text.state_dict(), region.state_dict()
    text.load_state_dict(r)
    region.load_state_dict(t)
    with pytest.raises(AssertionError, match="max abs diff"):
        check_pretraining(m, hf, make_batch())


def test_parity_detects_a_swapped_qkv_slot_though_the_round_trip_does_not(monkeypatch):
    """Export reads the import table: swapping query and key there breaks parity, while vlm → HF → vlm (both ways
    through the same wrong table) stays exact, which is why the parity tests, not the round trips, prove the mapping."""
    m = tiny("vqa", num_answers=7)
    monkeypatch.setattr(rules, "_QKV", {"query": 1, "key": 0, "value": 2})
    hf = vlm.to_transformers(m)
    with pytest.raises(AssertionError, match="max abs diff"):
        check_vqa(m, hf, make_batch())
    same_state(m.state_dict(), vlm.from_transformers(hf).state_dict())
