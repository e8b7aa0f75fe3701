"""The one run-config loader: presets and files, the model mapping, dotted overrides, ranges and registries checked
when the config is loaded, every numeric field declaring its range."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from downstream.finetune import FinetuneConfig, load_finetune_config
from downstream.modality import TRANSFORMS
from pretraining.masking import MaskingConfig
from pretraining.negatives import MatchingConfig
from pretraining.objectives import OBJECTIVES
from pretraining.run import ObjectiveWeights, PretrainConfig, load_pretrain_config
from vlm.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from vlm.data.vqa import SOFT_SCORE_RULES

CONFIGS = [ModelConfig, TrainConfig, DataConfig, MaskingConfig, MatchingConfig, ObjectiveWeights, PretrainConfig,
           FinetuneConfig]


def _fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field, typing.Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, tp


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_its_range(cls):
    numeric = (int, float, tuple[float, float])
    missing = [name for name, f, tp in _fields(cls) if tp in numeric and "range" not in f.metadata]
    assert not missing, f"numeric fields without a declared range (use vlm.config.ranged): {missing}"


def test_registries_are_the_config_names():
    assert {f.name for f in dataclasses.fields(ObjectiveWeights)} == set(OBJECTIVES)
    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    assert set(fields["modality"].metadata["choices"]) == set(TRANSFORMS)
    data_fields = {f.name: f for f in dataclasses.fields(DataConfig)}
    assert set(data_fields["soft_score_rule"].metadata["choices"]) == set(SOFT_SCORE_RULES)


@pytest.mark.parametrize("load, override, needle", [
    (load_pretrain_config, "train.max_steps=-5", "train.max_steps: expected a number in [0, inf), got -5"),
    (load_pretrain_config, "train.log_every=0", "train.log_every: expected a number in [1, inf), got 0"),
    (load_pretrain_config, "train.batch_size=0", "train.batch_size: expected a number in [1, inf)"),
    (load_pretrain_config, "train.lr=0", "train.lr: expected a number in (0, inf)"),
    (load_pretrain_config, "train.lr=.nan", "train.lr: expected a number in (0, inf)"),
    (load_pretrain_config, "data.max_text_len=1", "data.max_text_len: expected a number in [3, inf)"),
    (load_pretrain_config, "masking.token_prob=1.5", "masking.token_prob: expected a number in [0, 1]"),
    (load_pretrain_config, "objectives.mlm=-1", "objectives.mlm: expected a number in [0, inf)"),
    (load_pretrain_config, "objectives.itm=1", "unknown config key 'objectives.itm'; allowed keys: matching, mlm"),
    (load_pretrain_config, "data.soft_score_rule=vqa", "data.soft_score_rule: expected one of lxmert, official"),
    (load_pretrain_config, "model.x_layers=-1", "model.x_layers: expected a number in [0, inf)"),
    (load_pretrain_config, "model.hiden_size=8", "unknown config key 'model.hiden_size'"),
    (load_pretrain_config, "masking.token_mask=0.95", "masking.token_mask + masking.token_random must be <= 1"),
    (load_finetune_config, "modality=audio", "modality: expected one of fused, text, image, got 'audio'"),
    (load_finetune_config, "train.eval_every=-1", "train.eval_every: expected a number in [0, inf)"),
    (load_finetune_config, "train.betas=[0.9, 1.5]", "train.betas: expected a number in [0, 1)"),
])
def test_bad_values_are_refused_when_loaded_naming_override_and_key(load, override, needle):
    with pytest.raises(ConfigError) as e:
        load(overrides=[override])
    assert needle in str(e.value)
    if "+" not in needle:  # a check across fields runs once all overrides are in
        assert f"override {override!r}" in str(e.value)


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: lxmert-mini\ntrain:\n  save_every: -1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: train\.save_every: expected a number in \[0, inf\)"):
        load_pretrain_config(str(path))


def test_file_then_overrides_then_model_mapping(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text("task: classify\ninit: vilbert-mini\nmodel:\n  num_layers: 3\ntrain:\n  lr: 3.0e-5\n")
    cfg = load_finetune_config(str(path), overrides=["train.lr=1e-5", "model.hidden_dropout_prob=0.2"])
    assert cfg.task == "classify" and cfg.train.lr == 1e-5
    assert cfg.model == {"num_layers": 3, "hidden_dropout_prob": 0.2}
    assert cfg.train_spec() == "easy-vqa-statements" and cfg.eval_spec() == "easy-vqa-statements"
    cfg = load_finetune_config(str(path), overrides=["data.train=my.jsonl"])
    assert cfg.eval_spec() == ""  # not built-in data: no held-out set unless given
    assert isinstance(load_pretrain_config(arch="vilbert"), PretrainConfig)
