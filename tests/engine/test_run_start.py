"""A run starts in one function (`start_run`: device, run folder, resume or overwrite, seeding); the objects it wires
only wire: constructing a Trainer, a PretrainRun or a FinetuneRun creates no file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlm
from downstream.finetune import FinetuneRun, load_finetune_config
from downstream.stores import run_stores
from pretraining.run import PretrainRun, PretrainTexts, load_pretrain_config
from vlm.config import TrainConfig
from vlm.engine.distributed import DistInfo
from vlm.engine.metrics import MetricsLogger
from vlm.engine.run import RunContext, start_run
from vlm.engine.trainer import Trainer
from vlm.errors import CheckpointError

from engine_toys import RecordingSource, ToyTask
from vlm_testing import TINY_MODEL, write_pretrain_config

TINY = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_constructing_a_trainer_creates_no_file(tmp_path):
    cfg = TrainConfig(batch_size=2, max_steps=2, precision="fp32", save_every=1, log_every=1)
    run = RunContext(run_dir=tmp_path / "run", device=torch.device("cpu"))
    task = ToyTask()
    trainer = Trainer(task, RecordingSource(8), cfg, save_model=task, run=run, evaluate=lambda t: {"x": 0.0},
                      run_config_yaml="train: {}\n", show_progress=False)
    assert _files(tmp_path) == []
    trainer.train()
    assert {"config.yaml", "metrics.jsonl", "checkpoints"} <= set(_files(tmp_path / "run"))


def test_the_metrics_file_opens_on_the_first_record(tmp_path):
    log = MetricsLogger(tmp_path / "run")
    assert _files(tmp_path) == []
    log.log(1, {"loss": 1.0})
    log.close()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1


def test_constructing_a_pretraining_run_creates_no_file(tmp_path, easy_vqa_stores):
    cfg = load_pretrain_config(write_pretrain_config(tmp_path / "cfg.yaml", easy_vqa_stores, train_limit=16))
    texts = PretrainTexts.read(cfg.data)
    train_store, eval_store = texts.stores(cfg.data, DistInfo(), show_progress=False)
    before = _files(tmp_path)
    run = RunContext(run_dir=tmp_path / "pre", device=torch.device("cpu"), seed=cfg.train.seed)
    PretrainRun(cfg, run=run, texts=texts, train_store=train_store, eval_store=eval_store, show_progress=False)
    assert _files(tmp_path) == before and cfg.train.out_dir == "runs/default"  # the config is left as it was


def test_constructing_a_finetuning_run_creates_no_file(tmp_path, easy_vqa_stores):
    cfg = load_finetune_config(None, "vqa", "lxmert", [f"data.features={easy_vqa_stores[0]}",
                                                       f"data.eval_features={easy_vqa_stores[1]}",
                                                       "data.train_limit=16", "data.eval_limit=8", "train.batch_size=4",
                                                       *TINY])
    out_dir_before = cfg.train.out_dir
    train_store, eval_store = run_stores(cfg.train_spec(), cfg.eval_spec(), features=cfg.data.features,
                                         eval_features=cfg.data.eval_features, cache_dir="", backend="auto",
                                         show_progress=False)
    run = RunContext(run_dir=tmp_path / "ft", device=torch.device("cpu"), seed=cfg.train.seed)
    FinetuneRun(cfg, run=run, train_store=train_store, eval_store=eval_store, show_progress=False)
    assert _files(tmp_path) == [] and cfg.train.out_dir == out_dir_before


def test_start_run_seeds_the_model_initialisation(tmp_path):
    weights = []
    for name in ("a", "b"):
        start_run(TrainConfig(seed=7, device="cpu"), out_dir=tmp_path / name)
        weights.append(vlm.create_model("lxmert-mini", task="vqa", num_answers=3, **TINY_MODEL).state_dict())
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    start_run(TrainConfig(seed=8, device="cpu"), out_dir=tmp_path / "c")
    other = vlm.create_model("lxmert-mini", task="vqa", num_answers=3, **TINY_MODEL).state_dict()
    assert not all(weights[0][k].equal(other[k]) for k in other)


def test_start_run_applies_the_run_folder_rule_before_anything_else(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("train: {}\n")
    with pytest.raises(CheckpointError, match="holds a run already"):
        start_run(TrainConfig(device="cpu"), out_dir=run_dir)
    assert _files(run_dir) == ["config.yaml"]
    ctx = start_run(TrainConfig(device="cpu"), out_dir=run_dir, resume=True)
    assert ctx.resume is True and ctx.run_dir == run_dir
