"""Model behaviour: output contract, masking, every preset at tiny size, checkpoints."""

import json

import pytest
import torch

import vlm
from vlm.errors import CheckpointError
from vlm.models import LxmertEncoder, SingleStreamEncoder

from vlm_testing import TINY, make_batch

PRESETS = vlm.list_models()


def tiny(name: str, task: str = "encoder", **kw) -> vlm.VLMModel:
    torch.manual_seed(0)
    return vlm.create_model(name, task=task, **{**TINY, **kw})


@pytest.mark.parametrize("name", ["lxmert-mini", "vilbert-mini"])
def test_encoder_output_contract(name, tiny_batch):
    m = tiny(name).eval()
    out = m(tiny_batch)
    assert isinstance(out, vlm.EncoderOutput)
    assert out.text_states.shape == (3, 9, 32)
    assert out.region_states.shape == (3, 10, 32)
    assert out.pooled.shape == (3, 32)
    assert isinstance(m.encoder, LxmertEncoder if name.startswith("lxmert") else SingleStreamEncoder)
    # pooled is tanh(W h_[CLS]) of the final text states
    ref = torch.tanh(m.encoder.pooler.dense(out.text_states[:, 0]))
    torch.testing.assert_close(out.pooled, ref)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("task", ["pretraining", "vqa", "classification"])
def test_every_preset_forward_backward_no_nan(name, task):
    m = tiny(name, task=task, num_answers=7, num_labels=3, visual_obj_loss=True, visual_attr_loss=True).train()
    b = make_batch()
    b.answer_targets = torch.rand(3, 7)
    b.labels = torch.tensor([0, 2, 1])
    out = m(b)
    if task == "pretraining":
        assert out.mlm_logits.shape == (3, 9, 99) and out.matched_logits.shape == (3, 2)
        assert out.answer_logits.shape == (3, 7)
        assert {k: tuple(v.shape) for k, v in out.region_outputs.items()} == {
            "obj": (3, 10, 11), "attr": (3, 10, 5), "feat": (3, 10, 12)}
        loss = out.mlm_logits.logsumexp(-1).mean() + sum(v.square().mean() for v in out.region_outputs.values()) \
            + out.matched_logits.sum() + out.answer_logits.sum()
    else:
        assert out.logits.shape == (3, 7 if task == "vqa" else 3)
        loss = out.loss
        assert loss is not None and torch.isfinite(loss)
    loss.backward()
    no_grad = {n for n, p in m.named_parameters() if p.grad is None}
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    if name.startswith("lxmert") and task != "pretraining":
        # LXMERT pools the text [CLS]: the last cross layer's region-side self-attention/FFN cannot reach it.
        last = f"encoder.cross_layers.{len(m.encoder.cross_layers) - 1}."
        expected = {n for n, _ in m.named_parameters() if n.startswith((last + "region_self.", last + "region_ffn."))}
        assert no_grad == expected
    else:
        assert no_grad == set(), f"parameters without gradient: {sorted(no_grad)}"
    # the region side and the text side both receive gradient
    assert m.encoder.region_encoder.feat_proj.weight.grad.abs().sum() > 0
    assert m.encoder.embeddings.word.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["lxmert-mini", "vilbert-mini"])
def test_no_nan_when_everything_is_masked(name):
    m = tiny(name, task="pretraining").eval()
    b = make_batch()
    b.region_mask.zero_()  # no regions at all
    out = m(b)
    for t in (out.text_states, out.region_states, out.pooled, out.mlm_logits, out.matched_logits):
        assert torch.isfinite(t).all()
    b = make_batch()
    b.attention_mask.zero_()
    b.attention_mask[:, 0] = 1  # only [CLS]
    out = m(b)
    assert all(torch.isfinite(t).all() for t in (out.text_states, out.region_states, out.pooled))
    # bf16 too (mixed precision path)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b.region_mask.zero_()
        out = m(b)
    assert torch.isfinite(out.pooled.float()).all()


@pytest.mark.parametrize("name", ["lxmert-mini", "vilbert-mini"])
def test_padding_does_not_change_real_positions(name):
    """Padded text tokens and padded regions must be invisible to everything else."""
    m = tiny(name).eval()
    b = make_batch(b=1, t=6, k=5)
    short = m(b)
    pad = make_batch(b=1, t=6, k=5)
    pad.input_ids = torch.cat([b.input_ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    pad.attention_mask = torch.cat([b.attention_mask, torch.zeros(1, 4, dtype=torch.long)], 1)
    pad.token_type_ids = torch.zeros_like(pad.input_ids)
    pad.region_feats = torch.cat([b.region_feats, torch.randn(1, 3, 12) * 50], 1)
    pad.region_boxes = torch.cat([b.region_boxes, torch.rand(1, 3, 4)], 1)
    pad.region_mask = torch.cat([b.region_mask, torch.zeros(1, 3, dtype=torch.long)], 1)
    long = m(pad)
    torch.testing.assert_close(long.text_states[:, :6], short.text_states, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long.region_states[:, :5], short.region_states, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long.pooled, short.pooled, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["lxmert-mini", "vilbert-mini"])
def test_regions_change_the_text_states(name):
    """Fusion is real: different image features change the pooled vector."""
    m = tiny(name).eval()
    b = make_batch()
    a = m(b).pooled
    b.region_feats = b.region_feats + 1.0
    assert (m(b).pooled - a).abs().max() > 1e-3


def test_single_stream_sequence_layout():
    """Without regions, [IMG] and the region [SEP] are masked: text states equal a pure text pass."""
    m = tiny("vilbert-mini").eval()
    b = make_batch()
    b.region_mask.zero_()
    with_regions_masked = m(b).text_states
    b2 = make_batch(k=0)
    b2.region_feats, b2.region_boxes = torch.zeros(3, 0, 12), torch.zeros(3, 0, 4)
    b2.region_mask = torch.zeros(3, 0, dtype=torch.long)
    torch.testing.assert_close(m(b2).text_states, with_regions_masked, atol=1e-5, rtol=1e-4)


def test_mlm_decoder_is_tied_to_word_embeddings():
    m = tiny("lxmert-mini", task="pretraining")
    assert m.mlm.decoder.weight is m.encoder.embeddings.word.weight


@pytest.mark.parametrize("name,task", [("lxmert-mini", "pretraining"), ("vilbert-mini", "vqa"),
                                        ("vilbert-mini", "classification"), ("lxmert-mini", "encoder")])
def test_save_and_load_roundtrip(tmp_path, name, task):
    m = tiny(name, task=task, num_answers=5).eval()
    b = make_batch()
    m.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["task"] == task and meta["model"]["hidden_size"] == 32
    m2 = vlm.from_pretrained(tmp_path / "ck").eval()
    assert type(m2) is type(m)
    o1, o2 = m(b), m2(b)
    torch.testing.assert_close(o1.pooled, o2.pooled, atol=0, rtol=0)
    if task == "pretraining":
        assert m2.mlm.decoder.weight is m2.encoder.embeddings.word.weight
        torch.testing.assert_close(o1.mlm_logits, o2.mlm_logits, atol=0, rtol=0)


def test_pretraining_checkpoint_loads_as_vqa(tmp_path):
    pre = tiny("lxmert-mini", task="pretraining")
    pre.save_pretrained(tmp_path / "pre")
    with pytest.raises(CheckpointError, match="missing:.*answer.fc1.weight"):
        vlm.from_pretrained(tmp_path / "pre", task="vqa", strict=True, num_answers=13)
    vqa = vlm.from_pretrained(tmp_path / "pre", task="vqa", num_answers=13)
    assert vqa.answer.fc2.out_features == 13
    for k, v in pre.encoder.state_dict().items():
        assert torch.equal(vqa.encoder.state_dict()[k], v), k


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a vlm checkpoint"):
        vlm.from_pretrained(tmp_path)


def test_batch_shape_errors_name_the_field():
    m = tiny("lxmert-mini")
    b = make_batch(d=20)
    with pytest.raises(ValueError, match=r"Batch.region_feats: feature size 20 but the model expects visual_feat_dim=12"):
        m(b)
    b = make_batch()
    b.region_mask = b.region_mask[:, :4]
    with pytest.raises(ValueError, match=r"Batch.region_mask: expected shape \(3, 10\)"):
        m(b)


def test_vqa_loss_is_soft_score_bce_times_answers():
    m = tiny("vilbert-mini", task="vqa", num_answers=4).eval()
    b = make_batch()
    b.answer_targets = torch.tensor([[1.0, 0, 0, 0], [0, 0.3, 0.6, 0], [0, 0, 0, 1.0]])
    out = m(b)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, b.answer_targets, reduction="sum") / 3
    torch.testing.assert_close(out.loss, ref)


def test_task_errors():
    with pytest.raises(vlm.ConfigError, match="num_answers > 0"):
        vlm.create_model("lxmert-mini", task="vqa")
    with pytest.raises(vlm.ConfigError, match="unknown task 'qa'"):
        vlm.create_model("lxmert-mini", task="qa")


def test_precision_choice_and_bf16_forward_close_to_fp32():
    from vlm.precision import autocast, autocast_dtype, cpu_has_native_bf16

    assert autocast_dtype("cpu", "fp32") is None and autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert autocast_dtype("cpu", "auto") is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(vlm.ConfigError, match="precision: expected one of auto, fp32, bf16, fp16, got 'fp8'"):
        autocast_dtype("cpu", "fp8")
    m = tiny("lxmert-mini").eval()
    b = make_batch()
    ref = m(b).pooled
    with autocast("cpu", "bf16"):
        low = m(b).pooled
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05  # bf16 has ~3 significant digits


@pytest.mark.parametrize("name", ["lxmert-mini", "vilbert-mini"])
def test_zeroed_regions_do_not_blow_up_the_gradient_at_init(name):
    """Masked-region pretraining zeroes region features; at initialisation that must not put an all-zero vector into
    the region LayerNorm (with a zero bias its gradient is 1/sqrt(eps) = 1e6 times the upstream one, and clipping
    then starves every other parameter)."""
    m = tiny(name, task="pretraining").train()
    norms = []
    for zero in (False, True):
        b = make_batch()
        if zero:
            b.region_feats[:, :4] = 0.0
        m.zero_grad()
        m(b).matched_logits.sum().backward()
        norms.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in m.parameters() if p.grad is not None)).item())
    assert norms[1] < 3 * norms[0], norms
    assert m.encoder.region_encoder.feat_proj.bias.std() > 0


def test_training_attention_takes_the_math_kernel_on_cpu_and_matches_inference():
    """With autograd recording on CPU, attention avoids SDPA's flash kernel (its backward is slow at these shapes);
    without, SDPA chooses. Both paths give the same outputs, padding mask included."""
    from torch.profiler import profile

    from vlm.config import ModelConfig
    from vlm.layers import Attention, key_padding_bias

    torch.manual_seed(0)
    attn = Attention(ModelConfig(hidden_size=32, num_attention_heads=4, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)).eval()
    x = torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    bias = key_padding_bias(mask, x.dtype)
    with torch.no_grad(), profile() as inference:
        expected = attn(x, bias)
    with profile() as training:
        got = attn(x.clone().requires_grad_(), bias)
    got.sum().backward()
    ops = lambda prof: {e.key for e in prof.key_averages()}  # noqa: E731
    assert not any("flash_attention" in k for k in ops(training)), ops(training)
    assert any("flash_attention" in k for k in ops(inference))  # SDPA's own choice for fp32 CPU inference
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=1e-5)


def test_cross_init_text_starts_region_and_cross_layers_from_the_text_layers():
    model = vlm.create_model("lxmert-mini", task="vqa", num_answers=3, text_init="all-minilm-l6-v2",
                             cross_init="text")
    enc = model.encoder
    eq = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert eq(enc.region_layers[0], enc.text_layers[0]) and eq(enc.region_layers[1], enc.text_layers[1])
    last = enc.text_layers[-1]  # lxmert-mini: 6 text layers, 2 cross layers -> cross layer 1 copies text layer 5
    for attn in (enc.cross_layers[1].cross, enc.cross_layers[1].text_self, enc.cross_layers[1].region_self):
        assert eq(attn, last.attn)
    assert eq(enc.cross_layers[1].region_ffn, last.ffn) and eq(enc.cross_layers[0].text_ffn, enc.text_layers[4].ffn)
    plain = vlm.create_model("lxmert-mini", task="vqa", num_answers=3, text_init="all-minilm-l6-v2")
    assert not eq(plain.encoder.region_layers[0], plain.encoder.text_layers[0])
    with pytest.raises(vlm.ConfigError, match="model.cross_init: expected one of random, text, got 'bert'"):
        vlm.create_model("lxmert-mini", cross_init="bert")


def test_classifier_head_mlp_by_default_linear_on_request_and_for_older_checkpoints(tmp_path):
    mlp = tiny("lxmert-mini", task="classification", num_labels=3)
    assert [type(m).__name__ for m in mlp.classifier.children()] == ["Linear", "LayerNorm", "Linear"]
    assert mlp.classifier.fc1.out_features == 2 * 32 and mlp.classifier.fc2.out_features == 3
    lin = tiny("vilbert-mini", task="classification", num_labels=3, classifier_head="linear")
    assert lin.classifier.linear.in_features == 32 and not hasattr(lin.classifier, "fc1")
    b = make_batch()
    # MLP head: LayerNorm between the layers, so the logits are not an affine function of the pooled vector
    out = mlp.eval()(b)
    h = torch.nn.functional.gelu(mlp.classifier.fc1(out.pooled))
    torch.testing.assert_close(out.logits, mlp.classifier.fc2(mlp.classifier.norm(h)))
    # a checkpoint written before the field existed had BERT's linear classifier: it still loads, as linear
    lin.save_pretrained(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["model"]["classifier_head"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    again = vlm.from_pretrained(tmp_path / "old").eval()
    torch.testing.assert_close(again(b).logits, lin.eval()(b).logits, atol=0, rtol=0)
    with pytest.raises(vlm.ConfigError, match="model.classifier_head: expected one of mlp, linear, got 'deep'"):
        vlm.create_model("lxmert-mini", task="classification", classifier_head="deep")


def test_every_architecture_name_has_one_registry_entry():
    from vlm.config import ARCHS
    from vlm.models.tasks import ARCHITECTURES

    assert tuple(ARCHITECTURES) == ARCHS
