"""``bench/peer_easy_vqa.py``: a tiny run end to end on small `patches` stores (both curves, parity of the exported
weights, finite losses, the JSON), and the peer loop's optimisation pieces against vlm's engine (param groups,
schedule, loss)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import vlm
from vlm.engine.trainer import linear_schedule, param_groups

from vlm_testing import TINY_MODEL, make_batch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "peer_easy_vqa.py"
TINY = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("peer_easy_vqa_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_tiny_run_has_both_curves_parity_and_finite_losses(bench, easy_vqa_stores, tmp_path, capsys):
    out = tmp_path / "peer.json"
    result = bench.main(["--steps", "4", "--eval-every", "2", "--eval-size", "16", "--train-limit", "64",
                         "--batch-size", "8", "--lr", "1e-3", "--precision", "fp32", "--out", str(out),
                         f"data.features={easy_vqa_stores[0]}", f"data.eval_features={easy_vqa_stores[1]}", *TINY])
    printed = capsys.readouterr().out
    assert "initial parity" in printed and "vlm >= peer at every point" in printed
    assert json.loads(out.read_text())["curves"] == result["curves"]
    assert result["parity"]["max_abs_logit_diff"] <= 1e-4
    assert result["parity"]["vlm_loss"] == pytest.approx(result["parity"]["peer_loss"], abs=1e-4)
    for side in ("vlm", "peer"):
        curve = result["curves"][side]
        assert [p["step"] for p in curve] == [0, 2, 4]
        assert all(0.0 <= p["accuracy"] <= 100.0 for p in curve)
        assert [p["minutes"] for p in curve] == sorted(p["minutes"] for p in curve)
        s = result["sides"][side]
        assert s["steps"] == 4 and math.isfinite(s["first_loss"]) and math.isfinite(s["last_loss"])
        assert all(math.isfinite(p["loss"]) for p in curve[1:])
    # same weights, same batch, same loss in fp32: the first step's losses agree
    assert result["sides"]["vlm"]["first_loss"] == pytest.approx(result["sides"]["peer"]["first_loss"], abs=1e-4)
    assert len(result["comparison"]["equal_wall_clock"]) == 3


def test_with_row0_trained_the_two_sides_train_alike(bench, easy_vqa_stores):
    """transformers' LXMERT keeps row 0 of its position and token-type embeddings fixed (padding_idx=0); with that
    lifted, everything else being the same (batches, optimiser, schedule, clipping, loss), the fp32 losses agree."""
    result = bench.main(["--steps", "6", "--eval-every", "2", "--eval-size", "16", "--train-limit", "64",
                         "--batch-size", "8", "--lr", "1e-3", "--precision", "fp32", "--peer-train-row0",
                         f"data.features={easy_vqa_stores[0]}", f"data.eval_features={easy_vqa_stores[1]}", *TINY])
    ours, theirs = result["curves"]["vlm"], result["curves"]["peer"]
    assert [p["step"] for p in ours] == [p["step"] for p in theirs] == [0, 2, 4, 6]
    for a, b in zip(ours[1:], theirs[1:]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-3)
    assert result["sides"]["vlm"]["last_loss"] == pytest.approx(result["sides"]["peer"]["last_loss"], abs=1e-3)


def tiny_vqa(seed: int = 0) -> vlm.VLMModel:
    torch.manual_seed(seed)
    return vlm.create_model("lxmert-mini", task="vqa", num_answers=7, vocab_size=99, visual_feat_dim=12,
                            **TINY_MODEL)


def test_decay_groups_are_the_engines(bench):
    model = tiny_vqa()
    ours, theirs = bench.decay_groups(model, 0.01), param_groups(model, 0.01)
    assert [g["weight_decay"] for g in ours] == [g["weight_decay"] for g in theirs]
    assert [[id(p) for p in g["params"]] for g in ours] == [[id(p) for p in g["params"]] for g in theirs]
    # the exported peer has the same split: as many decayed and undecayed values
    peer = vlm.to_transformers(model)
    sizes = [[sum(p.numel() for p in g["params"]) for g in groups]
             for groups in (bench.decay_groups(peer, 0.01), theirs)]
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("total,warmup", [(900, 45), (10, 0), (7, 3), (1, 0)])
def test_schedule_is_the_engines(bench, total, warmup):
    ours, theirs = bench.warmup_linear(total, warmup), linear_schedule(total, warmup)
    assert [ours(s) for s in range(total + 2)] == [theirs(s) for s in range(total + 2)]


def test_peer_loss_equals_vlm_loss_on_one_batch(bench):
    model = tiny_vqa().eval()
    peer = bench.PeerVQA(vlm.to_transformers(model))
    batch = make_batch()
    targets = torch.zeros(batch.input_ids.shape[0], 7)
    targets[0, 1], targets[1, 3], targets[2, 0], targets[2, 5] = 1.0, 0.6, 0.3, 1.0
    batch.answer_targets = targets
    with torch.no_grad():
        ours, theirs = model(batch), peer(batch)
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-5
    assert theirs.loss.item() == pytest.approx(ours.loss.item(), abs=1e-5)
    assert bench.vqa_loss(ours.logits, targets).item() == pytest.approx(ours.loss.item(), rel=1e-6)


@pytest.mark.parametrize("train_row0", [False, True])
def test_row0_of_position_and_token_type_embeddings(bench, train_row0):
    """vlm trains row 0 of its position and token-type embeddings; transformers' LXMERT (padding_idx=0) does not,
    unless the bench lifts it."""
    model = tiny_vqa().train()
    peer = bench.PeerVQA(vlm.to_transformers(model), train_row0).train()
    batch = make_batch()
    batch.answer_targets = torch.zeros(batch.input_ids.shape[0], 7)
    batch.answer_targets[:, 2] = 1.0
    model(batch).loss.backward()
    peer(batch).loss.backward()
    ours, theirs = model.encoder.embeddings, peer.hf.lxmert.embeddings
    for a, b in ((ours.position, theirs.position_embeddings), (ours.token_type, theirs.token_type_embeddings)):
        assert a.weight.grad[0].abs().max() > 0
        if train_row0:
            torch.testing.assert_close(b.weight.grad, a.weight.grad, atol=1e-5, rtol=1e-4)
        else:
            assert b.weight.grad[0].abs().max() == 0
