"""Presets, dotted overrides and the errors for bad keys and values."""

from dataclasses import dataclass, field

import pytest

import vlm
from vlm.config import ConfigError, ModelConfig, TrainConfig, apply_dict, model_config, override_dict


@dataclass
class RunConfig:
    """A test run config with model and train sections (the task packages' configs have more)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _overridden(cfg, overrides):
    """``cfg`` with each ``KEY=VALUE`` override applied in turn, type-checked (as the run-config loader does)."""
    for o in overrides:
        apply_dict(cfg, override_dict(o))
    return cfg


def test_presets_have_published_shapes():
    assert vlm.list_models() == ["lxmert-base", "lxmert-mini", "vilbert-base", "vilbert-mini"]
    lx = model_config("lxmert-base")
    assert (lx.arch, lx.hidden_size, lx.num_attention_heads, lx.intermediate_size) == ("lxmert", 768, 12, 3072)
    assert (lx.l_layers, lx.r_layers, lx.x_layers, lx.visual_feat_dim, lx.visual_pos_dim) == (9, 5, 5, 2048, 4)
    vb = model_config("vilbert-base")
    assert (vb.arch, vb.hidden_size, vb.num_layers, vb.intermediate_size) == ("vilbert", 768, 12, 3072)
    for name in ("lxmert-mini", "vilbert-mini"):
        c = model_config(name)
        assert (c.hidden_size, c.num_attention_heads, c.intermediate_size) == (384, 12, 1536)
        assert (c.l_layers if c.arch == "lxmert" else c.num_layers) == 6


def test_dotted_overrides_win_and_are_typed():
    cfg = model_config("lxmert-base", ["model.x_layers=3", "hidden_dropout_prob=0", "text_init=null"])
    assert cfg.x_layers == 3 and cfg.hidden_dropout_prob == 0.0 and isinstance(cfg.hidden_dropout_prob, float)
    run = _overridden(RunConfig(), ["train.lr=5e-5", "train.betas=[0.9, 0.98]", "model.arch=vilbert"])
    assert run.train.lr == 5e-5 and run.train.betas == (0.9, 0.98) and run.model.arch == "vilbert"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.x_layer=3", "unknown config key 'model.x_layer'; allowed keys: arch"),
        ("model.x_layers=three", "model.x_layers: expected int, got 'three'"),
        ("model.x_layers=2.5", "model.x_layers: expected int"),
        ("model.visual_obj_loss=1", "model.visual_obj_loss: expected bool"),
        ("model.arch=transformer", "model.arch: expected one of lxmert, vilbert, got 'transformer'"),
        ("model.hidden_size=100", "must be a multiple of model.num_attention_heads"),
        ("x_layers", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        model_config("lxmert-base", [override])
    assert needle in str(e.value)


def test_train_section_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'.*allowed keys:.*lr"):
        _overridden(RunConfig(), ["train.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match=r"train.betas: expected a list of 2 values"):
        _overridden(RunConfig(), ["train.betas=0.9"])


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="unknown model 'lxmert-huge'; available presets: lxmert-base"):
        vlm.create_model("lxmert-huge")


def test_preset_file_with_bad_key_names_file(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("arch: lxmert\nhiden_size: 64\n")
    with pytest.raises(ConfigError, match=r"m.yaml: unknown config key 'model.hiden_size'"):
        model_config(str(p))
