"""Engine parts: AdamW groups, the schedule, the data plan, keep-last-N, and `vlm pretrain` in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vlm
from vlm.cli import main
from vlm.engine.checkpoint import CheckpointManager
from vlm.engine.loader import EpochPlan
from vlm.engine.trainer import linear_schedule, param_groups

from vlm_testing import TINY_MODEL, write_pretrain_config


def test_no_weight_decay_on_biases_and_norms():
    model = vlm.create_model("lxmert-mini", task="pretraining", **TINY_MODEL)
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    assert all(names[id(p)].endswith(("bias", "norm.weight")) or "norm" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # tied decoder counted once


def test_linear_warmup_then_decay():
    f = linear_schedule(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == 0.0


def test_plan_shards_ranks_disjointly_and_matches_one_rank_with_double_batch():
    one = EpochPlan(50, 8, world_size=1, seed=3)
    two = [EpochPlan(50, 4, world_size=2, rank=r, seed=3) for r in range(2)]
    assert one.batches_per_epoch == two[0].batches_per_epoch == 6
    for pos in range(6):
        both = np.concatenate([p.indices(1, pos) for p in two])
        assert np.array_equal(both, one.indices(1, pos))
    seen = np.concatenate([one.indices(1, p) for p in range(6)])
    assert len(set(seen.tolist())) == 48  # no example twice in an epoch
    assert not np.array_equal(one.indices(0, 0), one.indices(1, 0))  # a new order each epoch


def test_keep_last_n(tmp_path):
    model = vlm.create_model("vilbert-mini", task="encoder", **TINY_MODEL)
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        manager.save(step, model, {"step": step}, "x: 1\n")
    assert [p.name for p in manager.list()] == ["step-00000004", "step-00000006"]


@pytest.mark.slow
def test_pretrain_cli_in_process_writes_a_checkpoint_that_loads(tmp_path, easy_vqa_stores, capsys):
    cfg = write_pretrain_config(tmp_path / "cfg.yaml", easy_vqa_stores, preset="vilbert-mini")
    out = tmp_path / "run"
    assert main(["pretrain", "--arch", "vilbert", "--config", cfg, "--out", str(out), "--no-progress",
                 "train.max_steps=4"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained vilbert-mini (vilbert) for 4 steps" in printed and "held-out accuracy" in printed
    model = vlm.from_pretrained(out / "model")
    assert model.task == "pretraining" and model.config.arch == "vilbert"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and set(summary["objectives"]) == {"mlm", "region_feat", "matching", "qa"}
    ev = summary["eval"][-1]
    assert {"eval/mlm_acc", "eval/matching_acc", "eval/qa_acc"} <= set(ev)
    assert all(0.0 <= ev[k] <= 1.0 for k in ("eval/mlm_acc", "eval/matching_acc", "eval/qa_acc"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    assert (out / "config.yaml").read_text().startswith("preset: vilbert-mini")
    # weights of the last checkpoint equal the final model
    last = CheckpointManager(out).latest()
    a, b = vlm.from_pretrained(last).state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_cli_bad_override_is_one_line_and_exit_2(capsys):
    assert main(["pretrain", "--arch", "lxmert", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.lrr'" in err and "Traceback" not in err
    assert main(["pretrain", "--arch", "lxmert", "--config", "vilbert"]) == 2
    assert "builds a 'vilbert' model" in capsys.readouterr().err


def test_adamw_is_fused_where_the_device_has_the_kernel_and_steps_like_the_default():
    from vlm.config import TrainConfig
    from vlm.engine.trainer import adamw

    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    fused = adamw(param_groups(a, 0.01), TrainConfig(lr=1e-2))
    plain = torch.optim.AdamW(param_groups(b, 0.01), lr=1e-2)
    assert fused.defaults["fused"] is True  # CPU has a fused AdamW since torch 2.4
    x = torch.randn(16, 8)
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
