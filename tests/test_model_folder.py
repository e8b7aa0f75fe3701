"""The model folder has one owner (vlm.models.folder): what it records (the text length above all), what `describe`
reads without weights, how folders written before the text length was recorded load, the one task vocabulary
(`vlm predict`, `vlm serve` and `vlm evaluate` truncating as training did: tests/serve/test_serve_text_length.py)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vlm
from vlm.cli import main
from vlm.errors import CheckpointError
from vlm.models import folder as F

from vlm_testing import TINY_MODEL


def test_the_folder_records_the_text_length_and_describe_reads_it_without_weights(short_text_model):
    meta = json.loads((short_text_model / F.CONFIG_NAME).read_text())
    assert meta["format"] == F.FORMAT and meta["max_text_len"] == 12 and meta["task"] == "vqa"
    info = vlm.describe(short_text_model)
    assert (info.task, info.arch, info.max_text_len, info.text_len_source) == ("vqa", "lxmert", 12, "recorded")
    assert info.labels == json.loads((short_text_model / F.ANSWERS_NAME).read_text())["answers"]
    assert info.features["backend"] == "patches"
    # the checkpoints record it too
    ckpt = sorted((short_text_model.parent / "checkpoints").glob("step-*"))[-1]
    assert vlm.describe(ckpt).max_text_len == 12


def test_a_pretraining_folder_records_the_text_length(tmp_path, easy_vqa_stores):
    from vlm_testing import write_pretrain_config

    cfg = write_pretrain_config(tmp_path / "cfg.yaml", easy_vqa_stores, train_limit=16,
                                train={"max_steps": 1, "batch_size": 4})
    assert main(["pretrain", "--config", cfg, "--out", str(tmp_path / "pre"), "--no-progress",
                 "data.max_text_len=17"]) == 0
    assert vlm.describe(tmp_path / "pre" / "model").max_text_len == 17


def _as_old_folder(src: Path, dst: Path) -> Path:
    """A copy of a model folder as vlm wrote it before the text length was recorded (format vlm/1)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / F.CONFIG_NAME).read_text())
    del meta["max_text_len"]
    meta["format"] = "vlm/1"
    (dst / F.CONFIG_NAME).write_text(json.dumps(meta))
    return dst


def test_an_old_folder_takes_the_length_of_its_run_config_with_a_warning(short_text_model, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(short_text_model.parent / "config.yaml", run / "config.yaml")  # data.max_text_len: 12
    old = _as_old_folder(short_text_model, run / "model")
    with caplog.at_level(logging.WARNING):
        loaded = vlm.load_model_folder(old)
    assert loaded.max_text_len == 12 and loaded.info.text_len_source == str(run / "config.yaml")
    assert "records no text length" in caplog.text and "truncating texts to 12 tokens" in caplog.text


def test_an_old_folder_alone_takes_the_default_length_with_a_warning(short_text_model, tmp_path, caplog):
    old = _as_old_folder(short_text_model, tmp_path / "alone")
    with caplog.at_level(logging.WARNING):
        loaded = vlm.load_model_folder(old)
    assert loaded.max_text_len == vlm.DataConfig().max_text_len == 40
    assert "truncating texts to 40 tokens, the default of data.max_text_len" in caplog.text


def test_a_bad_recorded_length_is_named(short_text_model, tmp_path):
    bad = shutil.copytree(short_text_model, tmp_path / "bad")
    meta = json.loads((bad / F.CONFIG_NAME).read_text())
    meta["max_text_len"] = "twelve"
    (bad / F.CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.json: max_text_len: expected an integer >= 3, got 'twelve'"):
        vlm.describe(bad)


def test_one_task_vocabulary():
    assert F.model_task("classify") == F.model_task("classification") == "classification"
    assert F.command_task("classification") == "classify" and F.command_task("vqa") == "vqa"
    with pytest.raises(vlm.ConfigError, match="unknown task 'classifier'"):
        F.model_task("classifier")
    model = vlm.create_model("vilbert-mini", task="classify", labels=["no", "yes", "maybe"], **TINY_MODEL)
    assert model.task == "classification" and model.config.num_labels == 3


def test_create_model_from_a_folder_loads_it_whole_or_reheads_it(short_text_model):
    saved = vlm.from_pretrained(short_text_model)
    same = vlm.create_model(short_text_model, task="vqa")
    assert all(v.equal(same.state_dict()[k]) for k, v in saved.state_dict().items())
    labels = list(reversed(vlm.describe(short_text_model).labels)) + ["new answer"]
    reheaded = vlm.create_model(short_text_model, task="vqa", labels=labels)
    assert reheaded.config.num_answers == len(labels)
    old_row = {a: i for i, a in enumerate(vlm.describe(short_text_model).labels)}
    for i, answer in enumerate(labels[:-1]):
        assert reheaded.answer.fc2.weight[i].equal(saved.answer.fc2.weight[old_row[answer]])
    with pytest.raises(CheckpointError, match="not a model folder"):
        vlm.create_model(str(short_text_model.parent / "nothing-here"), task="vqa")


def test_vlm_describe_prints_the_folder(short_text_model, capsys, tmp_path):
    assert main(["describe", str(short_text_model)]) == 0
    out = capsys.readouterr().out
    assert "task: vqa" in out and "text length: 12 tokens (recorded at training)" in out and "patches" in out
    assert main(["describe", str(tmp_path)]) == 2
    assert "not a vlm checkpoint (no config.json" in capsys.readouterr().err


def test_a_bad_folder_is_one_line_everywhere(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    out = subprocess.run([sys.executable, "-m", "vlm.cli", "describe", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "not a vlm config" in out.stderr and "Traceback" not in out.stderr


def test_create_model_takes_a_model_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("arch: vilbert\nhidden_size: 32\nnum_attention_heads: 4\nintermediate_size: 64\nnum_layers: 1\n")
    model = vlm.create_model(str(path), task="vqa", labels=["yes", "no"])
    assert (model.config.arch, model.config.hidden_size, model.config.num_answers) == ("vilbert", 32, 2)
