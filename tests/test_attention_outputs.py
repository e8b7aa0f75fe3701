"""``output_attentions`` / ``output_hidden_states``: the encoders' optional outputs, their readers
(:mod:`vlm.models.attention`), and ``vlm predict``'s ``forward_with_attention`` built on them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import LxmertConfig, LxmertModel

import vlm
from downstream.predict import forward_with_attention
from vlm.config import ModelConfig
from vlm.errors import DataError
from vlm.layers import Attention, CrossModalLayer, key_padding_bias
from vlm.models.attention import cls_region_attention, region_attention

from vlm_testing import TINY, make_batch

ARCHS = ["lxmert-mini", "vilbert-mini"]
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny(name: str, task: str = "encoder", **kw) -> vlm.VLMModel:
    torch.manual_seed(0)
    model = vlm.create_model(name, task=task, **{**TINY, **NO_DROPOUT, "num_answers": 7, **kw})
    with torch.no_grad():  # attention far from uniform, so that the checks below can tell definitions apart
        for layer in model.encoder.modules():
            if isinstance(layer, Attention):
                layer.qkv.weight.mul_(8)
    return model


def layer_inputs(model: vlm.VLMModel, batch: vlm.Batch) -> list[tuple]:
    """The positional inputs of every layer that attends text→region, caught by pre-hooks (the old way)."""
    enc = model.encoder
    layers = enc.cross_layers if model.config.arch == "lxmert" else enc.layers
    caught: list[tuple] = []
    handles = [m.register_forward_pre_hook(lambda m, args: caught.append(args)) for m in layers]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return list(zip(layers, caught))


def old_cls_attention(layer: torch.nn.Module, args: tuple, k: int) -> torch.Tensor:
    """``downstream.predict._cls_attention`` as it was before the encoders returned attentions (hooks)."""
    if isinstance(layer, CrossModalLayer):
        text, _, region, region_bias = args
        q, _, _ = layer.cross.project(text)
        _, kk, _ = layer.cross.project(region)
        q, kk = q.float(), kk.float()
        scores = q[:, :, :1] @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5 + region_bias.float()
        return scores.softmax(-1)[:, :, 0].mean(1)
    x, bias = args
    q, kk, _ = layer.attn.project(x)
    q, kk = q.float(), kk.float()
    scores = q[:, :, :1] @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias.float()
    attn = scores.softmax(-1)[:, :, 0].mean(1)[:, 2:2 + k]
    return attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)


def direct_attention(layer: torch.nn.Module, args: tuple, k: int) -> torch.Tensor:
    """The text→region attention per head ``[B, nh, T, K]``, recomputed in float64 from the layer's inputs."""
    if isinstance(layer, CrossModalLayer):
        text, _, region, region_bias = args
        q, kk = layer.cross.project(text)[0].double(), layer.cross.project(region)[1].double()
        return (q @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5 + region_bias.double()).softmax(-1)
    x, bias = args
    q, kk, _ = (t.double() for t in layer.attn.project(x))
    probs = (q @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias.double()).softmax(-1)
    rows = torch.cat([probs[:, :, :1], probs[:, :, k + 3:]], dim=2)[..., 2:k + 2]
    return rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)


@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
@pytest.mark.parametrize("name", ARCHS)
def test_outputs_are_bit_identical_with_and_without_the_flags(name, mode):
    """Train and eval mode (dropout 0) with autograd (SDPA's math kernel on CPU), and inference mode (its flash one)."""
    with torch.inference_mode(mode == "inference"):
        _check_bit_identical(tiny(name, task="vqa").train(mode == "train"))


def _check_bit_identical(model: vlm.VLMModel) -> None:
    batch = make_batch()
    batch.answer_targets = torch.rand(3, 7, generator=torch.Generator().manual_seed(0))
    plain = model(batch)
    full = model(batch, output_attentions=True, output_hidden_states=True)
    assert plain.encoder_output is None and isinstance(full.encoder_output, vlm.EncoderOutput)
    for field in ("logits", "pooled", "loss"):
        assert torch.equal(getattr(plain, field), getattr(full, field)), field
    enc_plain, enc_full = model.encoder(batch), full.encoder_output
    for field in ("attentions", "region_attention_mass", "text_hidden_states", "region_hidden_states"):
        assert getattr(enc_plain, field) is None
    for flags in ({"output_attentions": True}, {"output_hidden_states": True}, {}):
        enc = model.encoder(batch, **flags) if flags else enc_full
        for field in ("text_states", "region_states", "pooled"):
            assert torch.equal(getattr(enc_plain, field), getattr(enc, field)), (field, flags)
    assert torch.equal(enc_full.text_hidden_states[-1], enc_full.text_states)
    assert torch.equal(enc_full.region_hidden_states[-1], enc_full.region_states)
    # the attentions follow the autograd graph, as transformers' do
    assert enc_full.attentions[-1].requires_grad == torch.is_grad_enabled()


@pytest.mark.parametrize("name", ARCHS)
def test_bf16_autocast_keeps_the_outputs_and_gives_float32_attentions(name):
    model = tiny(name, task="vqa").eval()
    batch = make_batch()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain, full = model(batch), model(batch, output_attentions=True, output_hidden_states=True)
    assert torch.equal(plain.logits, full.logits)
    probs = full.encoder_output.attentions[-1]
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs[..., 0]), atol=1e-5, rtol=0)


def test_attention_forward_is_the_attend_of_the_projections():
    """The self-attention's default output is what it computed before ``output_attentions`` existed."""
    cfg = ModelConfig(hidden_size=32, num_attention_heads=4, **NO_DROPOUT)
    torch.manual_seed(0)
    attn = Attention(cfg)
    x = torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    bias = key_padding_bias(mask, x.dtype)
    for train in (True, False):
        attn.train(train)
        expected = attn.attend(x, *attn.project(x), bias)
        out, probs = attn(x, bias, output_attentions=True)
        assert torch.equal(attn(x, bias), expected) and torch.equal(out, expected)
        assert probs.shape == (3, 4, 7, 7) and probs.dtype == torch.float32
        assert probs[1, :, :, 4:].max() == 0


@pytest.mark.parametrize("name", ARCHS)
def test_counts_and_shapes(name):
    model = tiny(name).eval()
    cfg = model.config
    out = model(make_batch(), output_attentions=True, output_hidden_states=True)
    if name.startswith("lxmert"):
        n_attn, n_text, n_region = cfg.x_layers, cfg.l_layers + cfg.x_layers, cfg.r_layers + cfg.x_layers
        assert out.region_attention_mass is None
    else:
        n_attn = n_text = n_region = cfg.num_layers
        assert [tuple(m.shape) for m in out.region_attention_mass] == [(3, 4, 9)] * n_attn
    assert [(tuple(a.shape), a.dtype) for a in out.attentions] == [((3, 4, 9, 10), torch.float32)] * n_attn
    assert [tuple(t.shape) for t in out.text_hidden_states] == [(3, 9, 32)] * n_text
    assert [tuple(r.shape) for r in out.region_hidden_states] == [(3, 10, 32)] * n_region
    assert cls_region_attention(out).shape == (3, 10) and region_attention(out, 0).shape == (3, 9, 10)


@pytest.mark.parametrize("name", ARCHS)
def test_rows_are_distributions_over_the_real_regions(name):
    model = tiny(name).eval()
    batch = make_batch()  # sample 2 has its last 5 regions padded
    batch.region_mask[0] = 0  # sample 0 has no region at all
    with torch.no_grad():
        out = model(batch, output_attentions=True)
    real = batch.region_mask.bool()
    for probs in out.attentions:
        assert torch.isfinite(probs).all()
        torch.testing.assert_close(probs[1:].sum(-1), torch.ones_like(probs[1:, ..., 0]), atol=1e-6, rtol=0)
        assert probs[2, ..., ~real[2]].abs().max() < 1e-6
        if name.startswith("lxmert"):  # an all-masked key set: uniform, as the model's own cross-attention
            torch.testing.assert_close(probs[0], torch.full_like(probs[0], 0.1))
        else:  # no attention reaches the masked region side
            assert probs[0].abs().max() == 0
    for layer in range(len(out.attentions)):
        avg = region_attention(out, layer)
        assert torch.isfinite(avg).all()
        torch.testing.assert_close(avg[1:].sum(-1), torch.ones_like(avg[1:, :, 0]), atol=1e-6, rtol=0)
        assert avg[2, :, ~real[2]].abs().max() < 1e-6


@pytest.mark.parametrize("name", ARCHS)
def test_attentions_match_a_float64_recomputation_from_the_layer_inputs(name):
    model = tiny(name).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch, output_attentions=True)
    for (layer, args), probs in zip(layer_inputs(model, batch), out.attentions, strict=True):
        torch.testing.assert_close(probs.double(), direct_attention(layer, args, 10), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_cls_attention_is_what_predict_computed_with_hooks(name):
    model = tiny(name, task="vqa").eval()
    batch = make_batch()
    layer, args = layer_inputs(model, batch)[-1]
    expected = old_cls_attention(layer, args, batch.region_feats.shape[1])
    with torch.no_grad():
        out = model(batch, output_attentions=True)
    torch.testing.assert_close(cls_region_attention(out), expected, atol=1e-6, rtol=0)
    if name == "vilbert-mini":  # the heads give the regions different shares: a plain head mean would differ
        assert (out.encoder_output.attentions[-1][:, :, 0].mean(1) - expected).abs().max() > 1e-3
    logits, weights = forward_with_attention(model, batch)
    torch.testing.assert_close(torch.from_numpy(weights), expected, atol=1e-6, rtol=0)
    with torch.inference_mode():  # as forward_with_attention runs (SDPA's CPU kernel differs under autograd)
        assert torch.equal(logits, model(batch).logits)


def test_region_attention_is_what_the_grounding_bench_computed_with_hooks():
    """``bench/diagnose_grounding.py``'s old per-layer ``[B, T, K]``: the head average, for the single stream of the
    text rows at the region tokens, renormalised afterwards."""
    for name in ARCHS:
        model = tiny(name).eval()
        batch = make_batch()
        with torch.no_grad():
            out = model(batch, output_attentions=True)
        for layer, ((module, args), probs) in enumerate(zip(layer_inputs(model, batch), out.attentions)):
            if isinstance(module, CrossModalLayer):
                text, _, region, bias = args
                q, kk = module.cross.project(text)[0], module.cross.project(region)[1]
            else:
                (text, bias), k = args, batch.region_feats.shape[1]
                q, kk, _ = module.attn.project(text)
            a = ((q.float() @ kk.float().transpose(-1, -2)) / q.shape[-1] ** 0.5 + bias.float()).softmax(-1).mean(1)
            if not isinstance(module, CrossModalLayer):
                rows = torch.cat([a[:, :1], a[:, k + 3:]], dim=1)[:, :, 2:k + 2]
                a = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
            torch.testing.assert_close(region_attention(out, layer), a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ARCHS)
def test_no_regions_at_all(name):
    model = tiny(name).eval()
    batch = make_batch(k=0)
    out = model(batch, output_attentions=True, output_hidden_states=True)
    assert all(a.shape == (3, 4, 9, 0) for a in out.attentions)
    assert cls_region_attention(out).shape == (3, 0)
    assert all(r.shape == (3, 0, 32) for r in out.region_hidden_states)


def test_readers_refuse_outputs_without_attentions():
    model = tiny("lxmert-mini", task="vqa").eval()
    with pytest.raises(ValueError, match="output_attentions=True"):
        cls_region_attention(model(make_batch()))
    no_cross = tiny("lxmert-mini", task="vqa", x_layers=0).eval()
    out = no_cross(make_batch(), output_attentions=True)
    assert out.encoder_output.attentions == ()
    with pytest.raises(ValueError, match="no layer"):
        cls_region_attention(out)
    with pytest.raises(DataError, match="no layer"):
        forward_with_attention(no_cross, make_batch())


def test_lxmert_parity_with_transformers_output_attentions_and_hidden_states():
    """``attentions`` are transformers' ``cross_encoder_attentions``; the hidden states its language/vision ones."""
    torch.manual_seed(0)
    hf = LxmertModel(LxmertConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37,
                                  l_layers=2, r_layers=1, x_layers=2, visual_feat_dim=12, visual_pos_dim=4,
                                  max_position_embeddings=40)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    model = vlm.from_transformers(hf)
    b = make_batch()
    with torch.no_grad():
        ref = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids,
                 visual_feats=b.region_feats, visual_pos=b.region_boxes, visual_attention_mask=b.region_mask,
                 output_attentions=True, output_hidden_states=True)
        out = model(b, output_attentions=True, output_hidden_states=True)
    pairs = [*zip(out.attentions, ref.cross_encoder_attentions, strict=True),
             *zip(out.text_hidden_states, ref.language_hidden_states, strict=True),
             *zip(out.region_hidden_states, ref.vision_hidden_states, strict=True)]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def old_capture(model: vlm.VLMModel, batch: vlm.Batch) -> dict:
    """``bench/diagnose_grounding.py``'s ``capture`` as it was (forward hooks), without the attention (see above)."""
    enc, k = model.encoder, batch.region_feats.shape[1]
    out: dict = {"region": [], "cls": []}
    hooks = []
    if model.config.arch == "lxmert":
        for layer in enc.text_layers:
            hooks.append(layer.register_forward_hook(lambda m, a, o: out["cls"].append(o[:, 0].float())))
        for layer in enc.region_layers:
            hooks.append(layer.register_forward_hook(lambda m, a, o: out["region"].append(o.float())))
        def cross_post(m: torch.nn.Module, args: tuple, o: tuple) -> None:
            out["cls"].append(o[0][:, 0].float())
            out["region"].append(o[1].float())

        hooks += [layer.register_forward_hook(cross_post) for layer in enc.cross_layers]
    else:
        def post(m: torch.nn.Module, args: tuple, o: torch.Tensor) -> None:
            out["cls"].append(o[:, 0].float())
            out["region"].append(o[:, 2:k + 2].float())

        hooks += [layer.register_forward_hook(post) for layer in enc.layers]
    try:
        with torch.inference_mode():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return out  # in the order the layers ran: LXMERT's language/region layers, then its cross layers


@pytest.mark.parametrize("name", ARCHS)
def test_grounding_bench_capture_keeps_its_keys_shapes_and_values(name):
    script = Path(__file__).resolve().parents[1] / "bench" / "diagnose_grounding.py"
    spec = importlib.util.spec_from_file_location("diagnose_grounding_under_test", script)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    model = tiny(name, task="vqa").eval()
    batch = make_batch()
    got, old = bench.capture(model, batch), old_capture(model, batch)
    assert set(got) == {"region", "cls", "attn", "region_names", "cls_names", "pooled", "logits"}
    cfg = model.config
    if name.startswith("lxmert"):
        assert got["cls_names"] == ["l0", "l1", "x0"] and got["region_names"] == ["r0", "x0"]
    else:
        assert got["cls_names"] == got["region_names"] == ["0", "1"]
    assert len(got["attn"]) == (cfg.x_layers if name.startswith("lxmert") else cfg.num_layers)
    assert all(a.shape == (3, 9, 10) and a.dtype == torch.float32 for a in got["attn"])
    for key in ("region", "cls"):
        assert len(got[key]) == len(old[key]) == len(got[f"{key}_names"])
        assert all(torch.equal(a, b) for a, b in zip(got[key], old[key])), key
    assert got["pooled"].shape == (3, 32) and got["logits"].shape == (3, 7)
