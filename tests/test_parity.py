"""Parity with transformers: the same weights give the same numbers (fp32, eval, max abs diff <= 1e-5)."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForPreTraining,
    BertModel,
    LxmertConfig,
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
)

import vlm
from vlm.convert import rules
from vlm.errors import CheckpointError
from vlm.models.text_init import bert_path

from vlm_testing import make_batch

ATOL = 1e-5
SENTENCES = ["What color is the shape?", "Is there a red circle in the image?", "How many sides does the blue shape have?"]


def close(a, b):
    diff = (a - b).abs().max().item()
    assert diff <= ATOL, f"max abs diff {diff:.3g} > {ATOL}"


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every weight distinctive (HF inits biases to 0 and LayerNorms to 1, which would hide mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def lxmert_config(**kw) -> LxmertConfig:
    base = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37, l_layers=2, r_layers=2,
                x_layers=2, visual_feat_dim=12, visual_pos_dim=4, num_qa_labels=7, num_object_labels=11,
                num_attr_labels=5, max_position_embeddings=40)
    base.update(kw)
    return LxmertConfig(**base)


def hf_inputs(b: vlm.Batch) -> dict:
    return dict(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids,
                visual_feats=b.region_feats, visual_pos=b.region_boxes, visual_attention_mask=b.region_mask)


@pytest.fixture(scope="module")
def hf_pretraining():
    torch.manual_seed(0)
    return perturb(LxmertForPreTraining(lxmert_config()))


def check_pretraining(hf: LxmertForPreTraining, m: vlm.VLMModel, b: vlm.Batch) -> None:
    with torch.no_grad():
        ref = hf(**hf_inputs(b))
        base = hf.lxmert(**hf_inputs(b))
        regions_ref = hf.obj_predict_head(base.vision_output)
        out = m(b)
    close(out.text_states, base.language_output)
    close(out.region_states, base.vision_output)
    close(out.pooled, base.pooled_output)
    close(out.mlm_logits, ref.prediction_logits)
    close(out.matched_logits, ref.cross_relationship_score)
    close(out.answer_logits, ref.question_answering_score)
    assert set(out.region_outputs) == {"obj", "attr", "feat"}
    for k in ("obj", "attr", "feat"):
        close(out.region_outputs[k], regions_ref[k])


def test_lxmert_for_pretraining_parity(hf_pretraining):
    m = vlm.from_transformers(hf_pretraining)
    assert m.task == "pretraining" and m.config.arch == "lxmert" and m.config.num_answers == 7
    check_pretraining(hf_pretraining, m, make_batch())


def test_lxmert_model_and_qa_parity(hf_pretraining):
    b = make_batch()
    base = LxmertModel(lxmert_config())
    base.load_state_dict(hf_pretraining.lxmert.state_dict())
    m = vlm.from_transformers(base.eval())
    assert m.task == "encoder"
    with torch.no_grad():
        ref, out = base(**hf_inputs(b)), m(b)
    close(out.text_states, ref.language_output)
    close(out.region_states, ref.vision_output)
    close(out.pooled, ref.pooled_output)

    torch.manual_seed(1)
    qa = perturb(LxmertForQuestionAnswering(lxmert_config(num_qa_labels=5)), seed=1)
    mq = vlm.from_transformers(qa)
    assert mq.task == "vqa"
    with torch.no_grad():
        close(mq(b).logits, qa(**hf_inputs(b)).question_answering_score)


def test_airsplay_checkpoint_layout_and_inferred_config(hf_pretraining):
    """The original release's keys: ``module.bert.*``, ``module.cls.*``, ``module.obj_predict_head.*``; no config."""
    sd = {("module.bert." + k[len("lxmert."):] if k.startswith("lxmert.") else "module." + k): v
          for k, v in hf_pretraining.state_dict().items()}
    assert any(k.startswith("module.bert.encoder.x_layers.") for k in sd)
    m = vlm.from_transformers(sd, num_attention_heads=4, max_position_embeddings=40)
    assert (m.config.l_layers, m.config.r_layers, m.config.x_layers) == (2, 2, 2)
    assert (m.config.visual_feat_dim, m.config.num_answers, m.config.num_object_labels) == (12, 7, 11)
    check_pretraining(hf_pretraining, m, make_batch())

    # a fine-tuned airsplay VQA model: module.lxrt_encoder.model.bert.* + module.logit_fc.*
    vqa_sd = {"module.lxrt_encoder.model.bert." + k[len("module.bert."):]: v
              for k, v in sd.items() if k.startswith("module.bert.")}
    for k, v in sd.items():
        if k.startswith("module.answer_head.logit_fc."):
            vqa_sd["module.logit_fc." + k[len("module.answer_head.logit_fc."):]] = v
    mv = vlm.from_transformers(vqa_sd, num_attention_heads=4, max_position_embeddings=40)
    assert mv.task == "vqa"
    b = make_batch()
    with torch.no_grad():
        close(mv(b).logits, hf_pretraining(**hf_inputs(b)).question_answering_score)


def test_unmatched_keys_are_named_and_strict_fails(hf_pretraining):
    sd = dict(hf_pretraining.state_dict())
    sd["lxmert.encoder.extra_adapter.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match=r"unmatched source keys: \['lxmert.encoder.extra_adapter.weight'\]"):
        vlm.from_transformers(sd, config=hf_pretraining.config)
    m = vlm.from_transformers(sd, config=hf_pretraining.config, strict=False)
    check_pretraining(hf_pretraining, m, make_batch())
    sd = dict(hf_pretraining.state_dict())
    del sd["lxmert.encoder.x_layers.1.visn_output.LayerNorm.bias"]
    with pytest.raises(KeyError, match=r"vlm weights with no source: \['encoder.cross_layers.1.region_ffn.norm.bias'\]"):
        vlm.from_transformers(sd, config=hf_pretraining.config)


def test_parity_test_detects_a_misplaced_weight(hf_pretraining, monkeypatch):
    """Sanity of the parity test itself: swapping query and key in the import breaks it."""
    monkeypatch.setattr(rules, "_QKV", {"query": 1, "key": 0, "value": 2})
    m = vlm.from_transformers(hf_pretraining)
    with pytest.raises(AssertionError, match="max abs diff"):
        check_pretraining(hf_pretraining, m, make_batch())


def test_swapped_stream_mapping_is_detected(hf_pretraining, monkeypatch):
    """Swapping the language and visual FFNs of the cross layers is caught as well."""
    swapped = [(p.replace("lang_inter", "TMP").replace("visn_inter", "lang_inter").replace("TMP", "visn_inter"), o, q)
               for p, o, q in rules._LXMERT_XLAYER]
    monkeypatch.setattr(rules, "_LXMERT_XLAYER", swapped)
    m = vlm.from_transformers(hf_pretraining)
    with pytest.raises(AssertionError, match="max abs diff"):
        check_pretraining(hf_pretraining, m, make_batch())


def bert_config() -> BertConfig:
    return BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                      max_position_embeddings=40, attn_implementation="eager")


def test_bert_into_single_stream_without_regions():
    torch.manual_seed(0)
    bert = perturb(BertModel(bert_config()))
    m = vlm.from_transformers(bert, visual_feat_dim=12, sep_token_id=2)
    assert m.config.arch == "vilbert" and m.config.num_layers == 3
    b = make_batch()
    b.region_mask.zero_()
    b.token_type_ids[:, 5:] = 1
    with torch.no_grad():
        ref = bert(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids)
        out = m(b)
    keep = b.attention_mask.bool()
    close(out.text_states[keep], ref.last_hidden_state[keep])
    close(out.pooled, ref.pooler_output)
    # with regions present the text states must change (the image is seen)
    b.region_mask.fill_(1)
    with torch.no_grad():
        assert (m(b).text_states - ref.last_hidden_state)[keep].abs().max() > 1e-3


def test_bert_for_pretraining_heads_into_single_stream():
    torch.manual_seed(0)
    bert = perturb(BertForPreTraining(bert_config()))
    bert.tie_weights()
    m = vlm.from_transformers(bert, visual_feat_dim=12, sep_token_id=2)
    assert m.task == "pretraining"
    b = make_batch()
    b.region_mask.zero_()
    with torch.no_grad():
        ref = bert(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids)
        out = m(b)
    close(out.mlm_logits[b.attention_mask.bool()], ref.prediction_logits[b.attention_mask.bool()])
    close(out.matched_logits, ref.seq_relationship_logits)


@pytest.fixture(scope="module")
def minilm():
    path = bert_path("all-minilm-l6-v2")
    ref = BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    tok = vlm.load_tokenizer()
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref(**enc).last_hidden_state
    return enc, hidden


def test_minilm_weights_reproduce_hidden_states_single_stream(minilm):
    enc, hidden = minilm
    m = vlm.create_model("vilbert-mini", text_init="all-minilm-l6-v2").eval()
    b, t = enc["input_ids"].shape
    batch = vlm.Batch(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      token_type_ids=enc["token_type_ids"], region_feats=torch.randn(b, 17, 768),
                      region_boxes=torch.rand(b, 17, 4), region_mask=torch.zeros(b, 17, dtype=torch.long))
    with torch.no_grad():
        out = m(batch)
    keep = enc["attention_mask"].bool()
    close(out.text_states[keep], hidden[keep])


def test_minilm_weights_reproduce_hidden_states_lxmert(minilm):
    enc, hidden = minilm
    m = vlm.create_model("lxmert-mini", text_init="all-minilm-l6-v2").eval()
    with torch.no_grad():
        text = m.encoder.encode_text(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    keep = enc["attention_mask"].bool()
    close(text[keep], hidden[keep])
    # and without text_init the same model does not (the test can fail)
    fresh = vlm.create_model("lxmert-mini").eval()
    with torch.no_grad():
        text = fresh.encoder.encode_text(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert (text[keep] - hidden[keep]).abs().max() > 0.1


def test_text_init_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a local folder and not 'all-minilm-l6-v2'"):
        vlm.create_model("lxmert-mini", text_init="bert-base-uncased")
    with pytest.raises(ValueError, match="has 6 layers but the model's text side has 9"):
        vlm.create_model("lxmert-mini", text_init="all-minilm-l6-v2", l_layers=9)
    with pytest.raises(ValueError, match="expects"):
        vlm.create_model("lxmert-base", text_init="all-minilm-l6-v2", l_layers=6)
